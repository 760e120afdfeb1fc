"""A KB snapshot decodes to an index that answers every question as the original does."""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.predict import predict
from kato_grpc.engine.records import average_emotives, canonical_json
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex, SymbolChange
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb

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


def test_removed_patterns_and_an_empty_kb_round_trip() -> None:
    empty = KnowledgeIndex()
    _assert_same(empty, snapshot.decode(snapshot.encode(empty)))
    kb, _ = _kb(50, 5)
    parts = kb.parts()
    records = list(parts.records)
    records[3] = None  # a removed pattern leaves its id unused
    holed = KnowledgeIndex.from_parts(replace(parts, records=records), {})
    decoded = snapshot.decode(snapshot.encode(holed))
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
