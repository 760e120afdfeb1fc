"""A knowledge base's index as one compact columnar blob, and back (docs/scaling.md, "Cold start").

Loading a KB from its documents builds every record and every posting in Python, one pattern
at a time, and replays every symbol-statistics batch ever logged: seconds per 100k patterns.
A snapshot holds the index as it is at one version — the symbol table once, each pattern's
symbols as ids, the postings already grouped by symbol, the symbol statistics as they stand
— so loading is reading a few large documents and slicing arrays.

The blob is a NumPy ``.npz`` archive of plain typed arrays (no objects: nothing in it can run
code, whoever wrote the database). Integers are stored in the narrowest type that holds them.
Floats (statistics, emotives, vectors) keep every bit, so statistics continue to add up exactly
as the log would have added them.

Decoding trusts nothing in the blob (a store checksum proves only that it is what was written):
each member's declared type and size are compared with its bytes before an array is made (not
``np.load``, which allocates whatever a header declares), and every id, end and offset is
checked before anything is built. Whatever the bytes, ``decode`` returns an index the engine
can read or raises ``SnapshotError`` — which the store turns into DATA_LOSS only when the
snapshot was the data (docs/operations.md, "Backup and restore").

Invariant: ``decode(encode(index))`` answers every ``KnowledgeView`` question as ``index``
does, with the same pattern ids (removed slots included), so the postings need no remapping.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
import sys
import tokenize
import zipfile
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npformat

from kato_grpc.engine.knowledge import PatternRecord, PostingArrays, SymbolStats, Totals
from kato_grpc.stores.index import IndexParts, KnowledgeIndex

FORMAT = 1
_NO_METADATA: Mapping[str, tuple[str, ...]] = {}


class SnapshotError(ValueError):
    """The blob is not a snapshot this code can read (damaged, or another format)."""


# --- helpers -------------------------------------------------------------------------------


def _narrow(values: Iterable[int] | npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Non-negative integers in the narrowest unsigned type that holds them."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64)
    top = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        return arr
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return arr.astype(dtype)
    return arr


def _strings(values: list[str]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[Any]]:
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), _narrow(offsets)


def _unstrings(blob: npt.NDArray[np.uint8], offsets: npt.NDArray[Any], *, intern: bool = True) -> list[str]:
    data = blob.tobytes()
    bounds = offsets.tolist()
    out = [data[a:b].decode() for a, b in itertools.pairwise(bounds)]
    # Symbols are interned like PatternRecord.build's (one object per symbol); names are unique.
    return [sys.intern(s) for s in out] if intern else out


def _extras(record: PatternRecord) -> str | None:
    if not record.emotives and not record.metadata:
        return None
    return json.dumps({"e": [dict(e) for e in record.emotives], "m": {k: list(v) for k, v in record.metadata.items()}})


# --- encode --------------------------------------------------------------------------------


def encode(index: KnowledgeIndex) -> bytes:
    """The index as a snapshot blob. Reads only: safe while the index is being read, not while
    it is being changed (the KB cache changes a clone while ``readers`` is non-zero)."""
    parts = index.parts()
    table: dict[str, int] = {}
    for symbol in parts.symbols:
        table.setdefault(symbol, len(table))
    for symbol in parts.postings:
        table.setdefault(symbol, len(table))

    live = [r is not None for r in parts.records]
    names: list[str] = []
    frequencies: list[int] = []
    flat: list[int] = []
    flat_ends: list[int] = []
    event_lengths: list[int] = []
    event_ends: list[int] = []
    extra_ids: list[int] = []
    extra_json: list[str] = []
    for pattern_id, record in enumerate(parts.records):
        if record is not None:
            names.append(record.name)
            frequencies.append(record.frequency)
            for symbol in record.flat:
                flat.append(table.setdefault(symbol, len(table)))
            event_lengths += [len(e) for e in record.events]
            extra = _extras(record)
            if extra is not None:
                extra_ids.append(pattern_id)
                extra_json.append(extra)
        else:
            names.append("")
            frequencies.append(0)
        flat_ends.append(len(flat))
        event_ends.append(len(event_lengths))

    posting_symbols = [table[s] for s in parts.postings]
    posting_ends = np.cumsum([len(p.ids) for p in parts.postings.values()], dtype=np.int64)
    columns = [
        np.concatenate([getattr(p, c) for p in parts.postings.values()]) if parts.postings else np.empty(0)
        for c in PostingArrays._fields
    ]

    affinity_owner: list[int] = []
    affinity_key: list[int] = []
    affinity_value: list[float] = []
    keys: dict[str, int] = {}
    for row, stats in enumerate(parts.symbols.values()):
        for key, value in stats.affinity.items():
            affinity_owner.append(row)
            affinity_key.append(keys.setdefault(key, len(keys)))
            affinity_value.append(value)

    symbol_blob, symbol_offsets = _strings(list(table))
    name_blob, name_offsets = _strings(names)
    key_blob, key_offsets = _strings(list(keys))
    extra_blob, extra_offsets = _strings(extra_json)
    vector_blob, vector_offsets = _strings(list(parts.vectors))
    vectors = np.vstack(list(parts.vectors.values())) if parts.vectors else np.empty((0, 0))
    arrays: dict[str, npt.NDArray[Any]] = {
        "header": np.array(
            [
                FORMAT,
                parts.version,
                parts.totals.total_unique_patterns,
                parts.totals.total_pattern_frequencies,
                parts.stored_symbols,
            ],
            dtype=np.int64,
        ),
        "symbol_blob": symbol_blob,
        "symbol_offsets": symbol_offsets,
        "name_blob": name_blob,
        "name_offsets": name_offsets,
        "live": np.array(live, dtype=np.bool_),
        "frequencies": _narrow(frequencies),
        "lengths": _narrow(parts.lengths),
        "name_keys": np.asarray(parts.name_keys, dtype=np.uint64),
        "flat": _narrow(flat),
        "flat_ends": _narrow(flat_ends),
        "event_lengths": _narrow(event_lengths),
        "event_ends": _narrow(event_ends),
        "extra_ids": _narrow(extra_ids),
        "extra_blob": extra_blob,
        "extra_offsets": extra_offsets,
        "posting_symbols": _narrow(posting_symbols),
        "posting_ends": _narrow(posting_ends),
        **{f"posting_{c}": _narrow(col) for c, col in zip(PostingArrays._fields, columns, strict=True)},
        "stat_symbols": _narrow([table[s] for s in parts.symbols]),
        "stat_frequency": _narrow([s.frequency for s in parts.symbols.values()]),
        "stat_members": _narrow([s.pattern_member_frequency for s in parts.symbols.values()]),
        "affinity_owner": _narrow(affinity_owner),
        "affinity_key": _narrow(affinity_key),
        "affinity_value": np.asarray(affinity_value, dtype=np.float64),
        "key_blob": key_blob,
        "key_offsets": key_offsets,
        "vector_blob": vector_blob,
        "vector_offsets": vector_offsets,
        "vectors": np.asarray(vectors, dtype=np.float64),
    }
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return out.getvalue()


# --- decode --------------------------------------------------------------------------------

# What each member of the archive must be: a kind of number and a number of dimensions.
# Integer columns are written in the narrowest type that holds them (any width) and hold
# counts, ids and offsets, so they are never negative.
_INTEGER, _BOOL, _BYTE, _KEY, _FLOAT = "integer", "bool", "byte", "key", "float"
_STRINGS = ("symbol", "name", "extra", "key", "vector")
_MEMBERS: dict[str, tuple[str, int]] = {
    "header": (_INTEGER, 1),
    **{f"{s}_blob": (_BYTE, 1) for s in _STRINGS},
    **{f"{s}_offsets": (_INTEGER, 1) for s in _STRINGS},
    "live": (_BOOL, 1),
    "name_keys": (_KEY, 1),
    "affinity_value": (_FLOAT, 1),
    "vectors": (_FLOAT, 2),
    **{
        name: (_INTEGER, 1)
        for name in (
            "frequencies",
            "lengths",
            "flat",
            "flat_ends",
            "event_lengths",
            "event_ends",
            "extra_ids",
            "posting_symbols",
            "posting_ends",
            *(f"posting_{c}" for c in PostingArrays._fields),
            "stat_symbols",
            "stat_frequency",
            "stat_members",
            "affinity_owner",
            "affinity_key",
        )
    },
}
_KINDS = {_INTEGER: ("ui", None), _BOOL: ("b", 1), _BYTE: ("u", 1), _KEY: ("u", 8), _FLOAT: ("f", 8)}
# Zip flags an archive of ours may carry (data descriptor, UTF-8 names): no encryption, no
# patch data.
_ZIP_FLAGS = 0x08 | 0x800
# Read failures of a damaged archive (zip directory, .npy headers, UTF-8, JSON). numpy parses
# a header it cannot read as Python 2 text with ``tokenize``, which fails in its own ways.
_DAMAGE = (
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    RecursionError,
    EOFError,
    OSError,
    struct.error,
    zipfile.BadZipFile,
)


def decode(blob: bytes) -> KnowledgeIndex:
    """The index a snapshot holds. Raises ``SnapshotError``, and nothing else, for anything
    else — whatever the bytes, nothing larger than they are is allocated before it is checked
    (the arrays together hold at most the blob's bytes; what is built from them is linear in
    their length)."""
    try:
        arrays = _read(blob)
        _check(arrays)
        return _build(arrays)
    except SnapshotError:
        raise
    except _DAMAGE as exc:
        raise SnapshotError(f"unreadable snapshot: {type(exc).__name__}: {exc}") from exc


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SnapshotError(f"damaged snapshot: {what}")


def _read(blob: bytes) -> dict[str, npt.NDArray[Any]]:
    """The archive's arrays, each one's declared type and size checked against the bytes it
    has before an array is made (``np.load`` would allocate whatever a header declares)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        infos = archive.infolist()
        _require(sorted(i.filename for i in infos) == sorted(f"{m}.npy" for m in _MEMBERS), "members")
        # Stored, not compressed: each member's bytes are in the blob, so all of them together
        # are at most the blob (a compressed member may declare any size: a zip bomb).
        for info in infos:
            stored = info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size
            _require(stored and not info.flag_bits & ~_ZIP_FLAGS, f"{info.filename}: not a stored member")
        _require(sum(i.file_size for i in infos) <= len(blob), "members larger than the archive")
        members = {i.filename.removesuffix(".npy"): i for i in infos}
        return {name: _array(name, archive.read(info)) for name, info in members.items()}


def _array(name: str, member: bytes) -> npt.NDArray[Any]:
    """One ``.npy`` member as an array over its bytes, if its header declares exactly them."""
    stream = io.BytesIO(member)
    version = npformat.read_magic(stream)
    _require(version in ((1, 0), (2, 0)), f"{name}: .npy version {version}")
    read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    kind, ndim = _MEMBERS[name]
    kinds, itemsize = _KINDS[kind]
    plain = not dtype.hasobject and dtype.fields is None and dtype.subdtype is None
    _require(plain and dtype.kind in kinds and itemsize in (None, dtype.itemsize), f"{name}: type {dtype}")
    _require(len(shape) == ndim and all(d >= 0 for d in shape), f"{name}: shape {shape}")
    # Python integers: a declared 2**40 elements is compared, never allocated.
    count = math.prod(shape)
    _require(count * dtype.itemsize == len(member) - stream.tell(), f"{name}: {shape} is not the member's size")
    array = np.frombuffer(member, dtype=dtype, count=count, offset=stream.tell())
    # Native byte order (a copy only when written on a machine of the other order).
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(shape, order="F" if fortran_order else "C")


def _ascending(ends: npt.NDArray[Any], total: int) -> bool:
    """Non-decreasing and ending at ``total``: ends of consecutive slices of ``total`` items."""
    if len(ends) == 0:
        return total == 0
    return int(ends[-1]) == total and bool(np.all(ends[1:] >= ends[:-1]))


def _check_strings(a: dict[str, npt.NDArray[Any]], prefix: str, count: int | None = None) -> int:
    offsets, blob = a[f"{prefix}_offsets"], a[f"{prefix}_blob"]
    _require(len(offsets) > 0 and int(offsets[0]) == 0, f"{prefix}_offsets")
    _require(count is None or len(offsets) == count + 1, f"{prefix}_offsets: {len(offsets) - 1} for {count}")
    _require(_ascending(offsets, len(blob)), f"{prefix}_offsets do not cut {prefix}_blob")
    return len(offsets) - 1


def _check(a: dict[str, npt.NDArray[Any]]) -> None:
    """Every id, end and offset points inside the arrays it indexes, consecutive slices do not
    overlap, and posting entries point at live patterns and inside them: ``_build`` cannot
    fail or blow up (a damaged end could otherwise give every pattern every event), and the
    engine reads nothing out of range. What stays unchecked (a frequency, a statistic) is
    what only the store's checksum can vouch for."""
    for name, (kind, _) in _MEMBERS.items():
        _require(kind != _INTEGER or not a[name].size or int(a[name].min()) >= 0, f"{name}: negative")
    _require(a["header"].shape == (5,), "header")
    symbols = _check_strings(a, "symbol")
    live = a["live"]
    n = len(live)
    _check_strings(a, "name", n)
    for name in ("frequencies", "lengths", "name_keys", "flat_ends", "event_ends"):
        _require(len(a[name]) == n, f"{name}: {len(a[name])} for {n} patterns")

    # Patterns: each one's symbols and events are consecutive slices, its events cover its
    # symbols exactly, and a live pattern's length is its number of symbols.
    flat, lengths, event_lengths = a["flat"], a["lengths"], a["event_lengths"]
    _require(not flat.size or int(flat.max()) < symbols, "flat: a symbol id past the table")
    _require(_ascending(a["flat_ends"], len(flat)), "flat_ends")
    _require(_ascending(a["event_ends"], len(event_lengths)), "event_ends")
    _require(not event_lengths.size or int(event_lengths.max()) <= len(flat), "event_lengths")
    covered = np.zeros(len(event_lengths) + 1, dtype=np.int64)
    np.cumsum(event_lengths, dtype=np.int64, out=covered[1:])
    _require(np.array_equal(covered[a["event_ends"]], a["flat_ends"]), "events do not cover the symbols")
    spans = np.diff(a["flat_ends"], prepend=0)
    _require(np.array_equal(lengths[live], spans[live]), "lengths")
    _require(not lengths.size or int(lengths.max()) <= np.iinfo(np.int32).max, "lengths past int32")
    extras = _check_strings(a, "extra")
    extra_ids = a["extra_ids"]
    _require(len(extra_ids) == extras and bool(np.all(extra_ids < n)) and bool(live[extra_ids].all()), "extra_ids")

    # Postings: per symbol a slice of the columns; entries name live patterns in ascending
    # order, once each, at a position inside them.
    groups = a["posting_symbols"]
    ids, counts, positions, event_at = (a[f"posting_{c}"] for c in PostingArrays._fields)
    m = len(ids)
    _require(all(len(c) == m for c in (counts, positions, event_at)), "posting columns")
    _require(len(a["posting_ends"]) == len(groups) and _ascending(a["posting_ends"], m), "posting_ends")
    _require(not groups.size or int(groups.max()) < symbols, "posting_symbols")
    _require(not m or (int(ids.max()) < n and bool(live[ids].all())), "postings of missing patterns")
    if m:
        increasing = ids[1:] > ids[:-1]
        starts = a["posting_ends"][:-1].astype(np.int64)
        increasing[starts[(starts > 0) & (starts < m)] - 1] = True  # a new symbol starts there
        within = lengths[ids]
        _require(bool(increasing.all()), "postings out of order")
        _require(bool(np.all((counts >= 1) & (counts <= within) & (positions < within))), "posting positions")
        _require(bool(np.all((event_at >= 1) & (event_at <= within))), "posting event lengths")

    # Symbol statistics and their affinities.
    stats = len(a["stat_symbols"])
    _require(len(a["stat_frequency"]) == len(a["stat_members"]) == stats, "statistics columns")
    _require(not stats or int(a["stat_symbols"].max()) < symbols, "stat_symbols")
    owners, keys = a["affinity_owner"], a["affinity_key"]
    _require(len(keys) == len(a["affinity_value"]) == len(owners), "affinity columns")
    key_count = _check_strings(a, "key")
    _require(not len(owners) or (int(owners.max()) < stats and int(keys.max()) < key_count), "affinity ids")
    vectors = _check_strings(a, "vector")
    _require(a["vectors"].shape[0] == vectors, "vectors")


def _extra(text: str) -> tuple[tuple[dict[str, float], ...], Mapping[str, tuple[str, ...]]]:
    """A pattern's emotives and metadata (written by ``_extras``), of the types they must be."""
    decoded = json.loads(text)
    _require(isinstance(decoded, dict) and decoded.keys() == {"e", "m"}, "extras")
    emotives, metadata = decoded["e"], decoded["m"]
    _require(
        isinstance(emotives, list)
        and all(
            isinstance(e, dict) and all(isinstance(v, float | int) and not isinstance(v, bool) for v in e.values())
            for e in emotives
        ),
        "emotives",
    )
    _require(
        isinstance(metadata, dict)
        and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in metadata.values()),
        "metadata",
    )
    return tuple(emotives), {k: tuple(v) for k, v in metadata.items()} or _NO_METADATA


def _build(a: dict[str, npt.NDArray[Any]]) -> KnowledgeIndex:
    """The index of checked arrays (``_check``)."""
    header = a["header"].tolist()
    if header[0] != FORMAT:
        raise SnapshotError(f"snapshot format {header[0]}, this code reads {FORMAT}")
    table = _unstrings(a["symbol_blob"], a["symbol_offsets"])
    names = _unstrings(a["name_blob"], a["name_offsets"], intern=False)
    keys = _unstrings(a["key_blob"], a["key_offsets"])

    singles: dict[str, tuple[str]] = {}
    # One tuple per distinct one-symbol event, shared (as PatternRecord.build shares them).
    single_of = [singles.setdefault(s, (s,)) for s in table]
    flat_ids = a["flat"].tolist()
    flat_symbols = [table[i] for i in flat_ids]
    lengths = a["event_lengths"]
    event_starts = (np.cumsum(lengths, dtype=np.int64) - lengths).tolist()
    # Every event of every pattern, in order; a pattern's events are then one slice of them.
    events = [
        single_of[flat_ids[at]] if n == 1 else tuple(flat_symbols[at : at + n])
        for at, n in zip(event_starts, lengths.tolist(), strict=True)
    ]
    flat_ends = a["flat_ends"].tolist()
    event_ends = a["event_ends"].tolist()
    records: list[PatternRecord | None] = [
        PatternRecord(name, tuple(events[e0:e1]), frequency, (), _NO_METADATA, tuple(flat_symbols[f0:f1]))
        if alive
        else None
        for name, frequency, alive, f0, f1, e0, e1 in zip(
            names,
            a["frequencies"].tolist(),
            a["live"].tolist(),
            [0, *flat_ends],
            flat_ends,
            [0, *event_ends],
            event_ends,
            strict=False,  # the starts have one more item than the rest (checked: _check)
        )
    ]
    for pattern_id, extra in zip(a["extra_ids"].tolist(), _unstrings(a["extra_blob"], a["extra_offsets"]), strict=True):
        record = records[pattern_id]
        assert record is not None  # extras are for live patterns (checked)
        emotives, metadata = _extra(extra)
        records[pattern_id] = replace(record, emotives=emotives, metadata=metadata)

    posting_ends = a["posting_ends"].tolist()
    columns = [a[f"posting_{c}"].astype(np.int32) for c in PostingArrays._fields]
    postings: dict[str, PostingArrays] = {}
    start = 0
    for symbol_id, end in zip(a["posting_symbols"].tolist(), posting_ends, strict=True):
        postings[table[symbol_id]] = PostingArrays(*(c[start:end] for c in columns))
        start = end
    _require(len(postings) == len(posting_ends), "a symbol's postings twice")

    symbols: dict[str, SymbolStats] = {}
    affinities: list[dict[str, float]] = [{} for _ in range(len(a["stat_symbols"]))]
    for row, key, value in zip(
        a["affinity_owner"].tolist(), a["affinity_key"].tolist(), a["affinity_value"].tolist(), strict=True
    ):
        affinities[row][keys[key]] = value
    for row, (symbol_id, frequency, members) in enumerate(
        zip(a["stat_symbols"].tolist(), a["stat_frequency"].tolist(), a["stat_members"].tolist(), strict=True)
    ):
        symbols[table[symbol_id]] = SymbolStats(frequency, members, affinities[row])
    _require(len(symbols) == len(affinities), "a symbol's statistics twice")

    vector_names = _unstrings(a["vector_blob"], a["vector_offsets"])
    vectors = {name: a["vectors"][row].copy() for row, name in enumerate(vector_names)}
    parts = IndexParts(
        version=header[1],
        records=records,
        lengths=array("i", a["lengths"].astype(np.int32).tobytes()),
        name_keys=array("Q", a["name_keys"].astype(np.uint64).tobytes()),
        postings=postings,
        symbols=symbols,
        vectors=vectors,
        totals=Totals(header[2], header[3], len(symbols)),
        stored_symbols=header[4],
    )
    index = KnowledgeIndex.from_parts(parts, singles)
    _require(len(index) == sum(r is not None for r in records), "a pattern name twice")
    return index
