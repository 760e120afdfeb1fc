"""A knowledge base's index as one compact columnar blob, and back (docs/scaling.md, "Cold start").

Loading a KB from its documents builds every record and every posting in Python, one pattern
at a time, and replays every symbol-statistics batch ever logged: seconds per 100k patterns.
A snapshot holds the index as it is at one version — the symbol table once, each pattern's
symbols as ids, the postings already grouped by symbol, the symbol statistics as they stand
— so loading is reading a few large documents and slicing arrays.

The blob is a NumPy ``.npz`` archive read with ``allow_pickle=False``: plain typed arrays,
nothing in it can run code, whoever wrote the database. Integers are stored in the narrowest
type that holds them. Floats (statistics, emotives, vectors) keep every bit, so statistics
continue to add up exactly as the log would have added them.

Invariant: ``decode(encode(index))`` answers every ``KnowledgeView`` question as ``index``
does, with the same pattern ids (removed slots included), so the postings need no remapping.
"""

from __future__ import annotations

import io
import itertools
import json
import sys
import zipfile
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

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


def decode(blob: bytes) -> KnowledgeIndex:
    """The index a snapshot holds. Raises ``SnapshotError`` for anything else."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            a = {name: archive[name] for name in archive.files}
        return _build(a)
    except SnapshotError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"unreadable snapshot: {type(exc).__name__}: {exc}") from exc


def _build(a: dict[str, npt.NDArray[Any]]) -> KnowledgeIndex:
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
            strict=False,
        )
    ]
    for pattern_id, extra in zip(a["extra_ids"].tolist(), _unstrings(a["extra_blob"], a["extra_offsets"]), strict=True):
        decoded = json.loads(extra)
        record = records[pattern_id]
        if record is None:
            raise SnapshotError(f"extras for removed pattern {pattern_id}")
        metadata = {k: tuple(v) for k, v in decoded["m"].items()} or _NO_METADATA
        records[pattern_id] = replace(record, emotives=tuple(decoded["e"]), metadata=metadata)

    posting_ends = a["posting_ends"].tolist()
    columns = [a[f"posting_{c}"].astype(np.int32) for c in PostingArrays._fields]
    postings: dict[str, PostingArrays] = {}
    start = 0
    for symbol_id, end in zip(a["posting_symbols"].tolist(), posting_ends, strict=True):
        postings[table[symbol_id]] = PostingArrays(*(c[start:end] for c in columns))
        start = end

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
    return KnowledgeIndex.from_parts(parts, singles)
