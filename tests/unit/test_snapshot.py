"""A KB snapshot decodes to an index that answers every question as the original does."""

from __future__ import annotations

import functools
import io
import itertools
import json
import random
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.knowledge import PostingArrays
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.predict import predict
from kato_grpc.engine.records import average_emotives, canonical_json
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex, SymbolChange
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb
from tests import snapshot_forgery as forgery

ALPHABET = ["a", "b", "c", "dé", "e.f", "$g", "h", "i", "日本", "k", "l", "m"] + [f"s{i}" for i in range(300)]


def _write(rng: random.Random, events: list[list[str]]) -> storage.PatternWrite:
    emotives = [{rng.choice(["joy", "a.b", "$x"]): rng.uniform(-1, 1) / 3} for _ in range(rng.randint(0, 2))]
    write = storage.PatternWrite(name=pattern_name(events), persistence=rng.randint(1, 3))
    write.events.extend(pb.Event(symbols=e) for e in events)
    write.emotives.extend(pb.EmotiveRecord(values=e) for e in emotives)
    write.symbol_counts.update(Counter(s for e in events for s in e))
    write.affinity_delta.update(average_emotives(emotives))
    if rng.random() < 0.3:
        values = {canonical_json(rng.choice(["x", 1, True, 2.5])) for _ in range(2)}
        write.metadata["k"].values.extend(sorted(values))
    if rng.random() < 0.1:
        write.vectors.add(name=f"VCTR|{rng.randrange(10**6)}").vector.values.extend([rng.random() for _ in range(3)])
    return write


def _kb(n: int, seed: int) -> tuple[InMemoryKnowledgeBase, list[list[list[str]]]]:
    rng = random.Random(seed)
    kb = InMemoryKnowledgeBase()
    learned: list[list[list[str]]] = []
    for _ in range(n):
        if learned and rng.random() < 0.2:
            events = rng.choice(learned)  # learned again: frequency, emotives and metadata grow
        else:
            events = [sorted(set(rng.sample(ALPHABET, rng.randint(1, 3)))) for _ in range(rng.randint(2, 6))]
            learned.append(events)
        kb.apply(_write(rng, events))
    return kb, learned


def _assert_same(a: KnowledgeIndex, b: KnowledgeIndex) -> None:
    assert (b.version, b.totals(), len(b), b.symbol_count()) == (a.version, a.totals(), len(a), a.symbol_count())
    assert list(b.all_patterns()) == list(a.all_patterns())
    assert [b.pattern_by_id(i) for i in range(len(a))] == [a.pattern_by_id(i) for i in range(len(a))]
    assert all(b.pattern(p.name) == p for p in a.all_patterns())
    assert np.array_equal(b.pattern_lengths(), a.pattern_lengths())
    assert np.array_equal(b.name_keys(), a.name_keys())
    for symbol in ALPHABET:
        assert b.symbol(symbol) == a.symbol(symbol), symbol  # floats bit for bit
        for x, y in zip(b.posting_arrays(symbol), a.posting_arrays(symbol), strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y), symbol
    assert b.symbols_after(None, 1000) == a.symbols_after(None, 1000)
    names_a, vectors_a = a.vectors()
    names_b, vectors_b = b.vectors()
    assert names_b == names_a and np.array_equal(vectors_b, vectors_a) and b.vector_dimension() == a.vector_dimension()
    assert b.estimated_bytes() == a.estimated_bytes()


def test_a_decoded_snapshot_answers_as_the_index_it_was_taken_from() -> None:
    kb, learned = _kb(400, 1)
    assert kb.vector_count() > 0 and any(p.metadata for p in kb.all_patterns())
    decoded = snapshot.decode(snapshot.encode(kb))
    _assert_same(kb, decoded)
    rng = random.Random(2)
    config = EngineConfig()
    for _ in range(30):
        pattern = rng.choice(learned)
        stm = [list(e) for e in pattern[: rng.randint(1, len(pattern))]] + [[rng.choice(ALPHABET)]]
        assert predict(stm, decoded, config) == predict(stm, kb, config)


def test_a_decoded_snapshot_takes_later_changes_as_the_original_does() -> None:
    # A cache loads a snapshot, then merges what came after it: the result must equal an
    # index that saw everything (postings are appended to, statistics added to in order).
    kb, _ = _kb(200, 3)
    decoded = snapshot.decode(snapshot.encode(kb))
    later, _ = _kb(60, 4)
    for target in (kb, decoded):
        for record in later.all_patterns():
            target.put_pattern(record)
            target.apply_symbol_change(SymbolChange({s: 1 for s in record.flat}, True, {"joy": 0.1}))
    _assert_same(kb, decoded)


def _holed(kb: KnowledgeIndex, removed: int) -> KnowledgeIndex:
    """``kb`` with one pattern removed: its id stays unused, and no posting names it."""
    parts = kb.parts()
    records = list(parts.records)
    records[removed] = None
    kept = {s: PostingArrays(*(c[p.ids != removed] for c in p)) for s, p in parts.postings.items()}
    postings = {s: p for s, p in kept.items() if len(p.ids)}
    return KnowledgeIndex.from_parts(replace(parts, records=records, postings=postings), {})


def test_removed_patterns_and_an_empty_kb_round_trip() -> None:
    empty = KnowledgeIndex()
    _assert_same(empty, snapshot.decode(snapshot.encode(empty)))
    kb, _ = _kb(50, 5)
    decoded = snapshot.decode(snapshot.encode(_holed(kb, 3)))
    assert len(decoded) == len(kb) - 1 and decoded.pattern(kb.pattern_by_id(3).name) is None
    assert decoded.pattern_by_id(4) == kb.pattern_by_id(4)


def test_anything_but_a_snapshot_is_refused() -> None:
    blob = snapshot.encode(_kb(20, 6)[0])
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(blob[: len(blob) // 2])
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(b"not a snapshot")
    # Another format, and an archive holding Python objects (which loading must never run).
    for arrays in ({"header": np.array([99, 0, 0, 0, 0])}, {"header": np.array([object()], dtype=object)}):
        out = io.BytesIO()
        np.savez(out, **arrays)  # type: ignore[arg-type]
        with pytest.raises(snapshot.SnapshotError):
            snapshot.decode(out.getvalue())


# --- damaged snapshots (issue 21, item 8) ---------------------------------------------------
#
# A snapshot's store checks its SHA-256, but a snapshot damaged before it was checksummed, or
# forged with the checksum recomputed, reaches the decoder: whatever its bytes, the decoder
# returns an index or raises SnapshotError — never another exception (which would be INTERNAL
# instead of DATA_LOSS), and never allocating what a damaged header declares. The forgeries
# below are re-zipped, so the zip's own CRCs are right too: only the decoder's checks stand.

Arrays = dict[str, npt.NDArray[Any]]
REMOVED = 3  # the removed pattern's id in _damageable


@functools.cache
def _damageable() -> bytes:
    """A small snapshot with every kind of content: extras, a vector, a removed pattern."""
    kb, _ = _kb(30, 1)
    assert kb.vector_count() > 0 and any(p.metadata for p in kb.all_patterns())
    return snapshot.encode(_holed(kb, REMOVED))


def _texts(values: list[str]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    encoded = [v.encode() for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _bound(blob: bytes) -> int:
    """What decoding ``blob`` may allocate at its peak: linear in its size. The records built
    from a byte of the archive take up to ~60 bytes (an event length of one byte becomes a
    tuple, list slots and ints), the zip and numpy layers a constant."""
    return 128 * len(blob) + 2**20


def _decoded(blob: bytes) -> tuple[KnowledgeIndex | snapshot.SnapshotError, int]:
    """What decoding ``blob`` gives (an index or the snapshot error), and its peak allocation
    (tracemalloc sees numpy's buffers too). Any other exception propagates."""
    tracemalloc.start()
    try:
        try:
            result: KnowledgeIndex | snapshot.SnapshotError = snapshot.decode(blob)
        except snapshot.SnapshotError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("count", [2**40, 2**28])
def test_a_declared_size_the_bytes_do_not_hold_is_refused_before_it_is_allocated(count: int) -> None:
    forged = forgery.oversized(_damageable(), count)
    result, peak = _decoded(forged)
    assert isinstance(result, snapshot.SnapshotError), result
    assert peak < _bound(forged), peak  # 2**28 bytes would have been allocated, then read into


def _extras_of_the_wrong_types(a: Arrays) -> dict[str, npt.NDArray[Any]]:
    texts = [bytes(a["extra_blob"][x:y]).decode() for x, y in itertools.pairwise(a["extra_offsets"].tolist())]
    texts[0] = json.dumps({"e": ["joy"], "m": {"k": [1]}})
    blob, offsets = _texts(texts)
    return {"extra_blob": blob, "extra_offsets": offsets}


def _a_pattern_name_twice(a: Arrays) -> dict[str, npt.NDArray[Any]]:
    texts = [bytes(a["name_blob"][x:y]).decode() for x, y in itertools.pairwise(a["name_offsets"].tolist())]
    texts[1] = texts[0]
    blob, offsets = _texts(texts)
    return {"name_blob": blob, "name_offsets": offsets}


def _set(a: Arrays, name: str, at: int, value: int, dtype: npt.DTypeLike | None = None) -> dict[str, npt.NDArray[Any]]:
    """``a[name]`` with one value set (in ``dtype``, when its own cannot hold the value)."""
    column = a[name].astype(a[name].dtype if dtype is None else dtype)
    column[at] = value
    return {name: column}


FORGERIES: list[tuple[str, Callable[[Arrays], dict[str, npt.NDArray[Any]]]]] = [
    ("a float column", lambda a: {"flat": a["flat"].astype(np.float64)}),
    ("a two-dimensional column", lambda a: {"flat": a["flat"][: len(a["flat"]) // 2 * 2].reshape(2, -1)}),
    ("a negative symbol id", lambda a: _set(a, "flat", 0, -1, np.int16)),
    ("a symbol id past the table", lambda a: _set(a, "flat", 0, len(a["symbol_offsets"]), np.int32)),
    ("offsets past their blob", lambda a: _set(a, "name_offsets", -1, len(a["name_blob"]) + 3, np.int64)),
    ("offsets out of order", lambda a: _set(a, "symbol_offsets", 2, 0)),
    ("ends out of order", lambda a: _set(a, "event_ends", 1, len(a["event_lengths"]), np.int64)),
    ("events that do not cover the symbols", lambda a: _set(a, "event_lengths", 0, a["event_lengths"][0] + 1)),
    ("a length that is not the pattern's", lambda a: _set(a, "lengths", 0, a["lengths"][0] + 1)),
    ("a posting of a removed pattern", lambda a: _set(a, "posting_ids", 0, REMOVED)),
    ("a posting past the patterns", lambda a: _set(a, "posting_ids", 0, len(a["live"]) + 5, np.int64)),
    ("postings out of order", lambda a: _set(a, "posting_ids", 1, a["posting_ids"][0])),
    ("a posting position past its pattern", lambda a: _set(a, "posting_positions", 0, 200, np.int64)),
    ("a symbol's postings twice", lambda a: _set(a, "posting_symbols", 1, a["posting_symbols"][0])),
    ("extras of a removed pattern", lambda a: _set(a, "extra_ids", 0, REMOVED)),
    ("extras of the wrong types", _extras_of_the_wrong_types),
    ("a pattern name twice", _a_pattern_name_twice),
    ("an affinity of a missing symbol", lambda a: _set(a, "affinity_owner", 0, len(a["stat_symbols"]), np.int64)),
    ("a vector without its row", lambda a: {"vectors": a["vectors"][:0]}),
    ("a column shorter than the patterns", lambda a: {"frequencies": a["frequencies"][:-1]}),
]


@pytest.mark.parametrize(("what", "forge"), FORGERIES, ids=[what for what, _ in FORGERIES])
def test_inconsistent_arrays_are_refused(what: str, forge: Callable[[Arrays], dict[str, npt.NDArray[Any]]]) -> None:
    # Each would otherwise decode into an index the engine reads out of range (a posting of a
    # missing pattern: an assertion or IndexError at the first prediction), or into records
    # that silently differ from what was written (a negative id picks from the end).
    blob = _damageable()
    assert isinstance(snapshot.decode(blob), KnowledgeIndex)  # sound before the forgery
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(forgery.replaced(blob, **forge(forgery.arrays(blob))))


def test_damaged_archives_are_refused() -> None:
    blob = _damageable()
    members = forgery.members(blob)
    flat = forgery.arrays(blob)["flat"]
    forged = {
        # Compressed, a member may declare any size (a zip bomb); ours are stored.
        "a compressed member": forgery.archive(members, zipfile.ZIP_DEFLATED),
        "an object array": forgery.replaced(blob, frequencies=forgery.declaring((1,), "|O", bytes(8))),
        "a member missing": forgery.archive({k: v for k, v in members.items() if k != "vectors"}),
        "a member too many": forgery.archive({**members, "more": members["flat"]}),
        "a truncated member": forgery.replaced(blob, flat=members["flat"][:-1]),
        "a member longer than declared": forgery.replaced(
            blob, flat=forgery.declaring(flat.shape, flat.dtype.str, flat.tobytes() + b"x")
        ),
    }
    for what, damaged in forged.items():
        try:
            snapshot.decode(damaged)
        except snapshot.SnapshotError:
            continue
        pytest.fail(f"{what}: decoded")


def test_an_archive_in_the_other_byte_order_decodes_the_same() -> None:
    # The checks compare kinds and sizes, not byte order: a snapshot written on a machine of
    # the other order is not damaged.
    blob = snapshot.encode(_kb(30, 1)[0])
    swapped = {k: v.astype(v.dtype.newbyteorder("S")) for k, v in forgery.arrays(blob).items() if v.dtype.itemsize > 1}
    _assert_same(snapshot.decode(blob), snapshot.decode(forgery.replaced(blob, **swapped)))


# Three ways of damaging a sound snapshot: its bytes anywhere (the zip layer refuses most),
# a member's bytes with the zip re-made around them (the .npy headers and the data), and a
# member's array — a value, its type, its length — re-encoded (the arrays' consistency).
_EDITS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8)


@dataclass(frozen=True)
class Damaged:
    """A damaged snapshot, shown by what was done to it (its bytes would be 16 kB of noise)."""

    what: str
    blob: bytes = field(repr=False)


def _edit(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at % len(out)] = value
    return bytes(out)


@st.composite
def _raw_damage(draw: st.DrawFn) -> Damaged:
    edits = draw(_EDITS)
    blob = _edit(_damageable(), edits)
    cut = draw(st.integers(1, len(blob)))
    return Damaged(f"bytes {edits}, cut at {cut}", blob[:cut])


@st.composite
def _member_damage(draw: st.DrawFn) -> Damaged:
    members = forgery.members(_damageable())
    name = draw(st.sampled_from(sorted(members)))
    edits = [(at % 160, value) for at, value in draw(_EDITS)]  # mostly its .npy header
    cut = draw(st.integers(0, len(members[name]) + 16))
    data = (_edit(members[name], edits) + bytes(16))[:cut]
    return Damaged(f"{name}: bytes {edits}, cut at {cut}", forgery.archive({**members, name: data}))


@st.composite
def _array_damage(draw: st.DrawFn) -> Damaged:
    blob = _damageable()
    arrays = forgery.arrays(blob)
    name = draw(st.sampled_from(sorted(arrays)))
    array = arrays[name].copy()
    how = draw(st.sampled_from(["value", "type", "shorter", "longer", "shape"]))
    if how == "value" and array.size:
        at = draw(st.integers(0, array.size - 1))
        value = draw(st.one_of(st.integers(-3, 3 * max(array.size, 256)), st.integers(-(2**63), 2**64 - 1)))
        flat = array.reshape(-1).astype(np.float64 if array.dtype.kind == "f" else np.int64)
        flat = flat.astype(np.uint64) if value >= 2**63 else flat
        flat[at] = value
        array, how = flat.reshape(array.shape), f"[{at}] = {value}"
    elif how == "type":
        dtype = draw(st.sampled_from(["i1", "i2", "<i8", ">u4", "u8", "f4", "f8", "?", "U2"]))
        array, how = array.astype(dtype), f"as {dtype}"
    elif how == "shorter":
        array = array[: draw(st.integers(0, max(len(array) - 1, 0)))]
    elif how == "longer":
        array = np.concatenate([array, array[: draw(st.integers(1, 4))]])
    else:
        array = array.reshape(-1)[: array.size // 2 * 2].reshape(2, -1) if array.ndim == 1 else array.reshape(-1)
    return Damaged(f"{name}: {how}", forgery.replaced(blob, **{name: array}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.one_of(_raw_damage(), _member_damage(), _array_damage()))
def test_any_damage_is_decoded_or_refused_as_damage(damaged: Damaged) -> None:
    result, peak = _decoded(damaged.blob)  # an exception other than SnapshotError fails here
    assert isinstance(result, KnowledgeIndex | snapshot.SnapshotError)
    assert peak < _bound(damaged.blob), peak
    if isinstance(result, KnowledgeIndex):
        # What decodes, the engine can read: every candidate, every posting it screens.
        for stm in (["a", "b"], ["c"]), (["dé", "日本"], ["e.f", "$g"], ["h"]):
            predict([list(e) for e in stm], result, EngineConfig(recall_threshold=0.0))
