"""The unit tests' support module: drive one session on an in-memory KB (through the replay
tool, so through the real transaction runner), and build knowledge bases directly."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import strategies as st

from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import average_emotives, canonical_json
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.replay import Replayer, config_from_json
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb

# Hypothesis strategies for small KBs over a 12-symbol alphabet (many overlaps, many ties).
SYMBOL = st.sampled_from([f"s{i}" for i in range(12)])
EVENT = st.lists(SYMBOL, min_size=1, max_size=3)
PATTERN = st.lists(EVENT, min_size=1, max_size=6)


def session(**config: Any) -> Replayer:
    return Replayer(config_from_json(config))


def observe(r: Replayer, *events: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    return [r.run({"op": "observe", "strings": list(e), **extra}) for e in events]


def learn(r: Replayer, *events: Sequence[str]) -> dict[str, Any]:
    observe(r, *events)
    return r.run({"op": "learn"})


def predictions(r: Replayer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = r.run({"op": "predictions"})["predictions"]
    return out


def future_potentials(r: Replayer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = r.run({"op": "predictions"})["future_potentials"]
    return out


def set_config(r: Replayer, **config: Any) -> None:
    r.update_config(config_from_json(config))


def clear_stm(r: Replayer) -> None:
    r.run({"op": "clear_stm"})


def pattern_write(events: Sequence[Sequence[str]], name: str | None = None) -> storage.PatternWrite:
    """The write a learn of ``events`` makes (no emotives or metadata); ``name`` overrides the
    real one (for tests of name ordering)."""
    write = storage.PatternWrite(name=name or pattern_name(events), persistence=5)
    write.events.extend(pb.Event(symbols=e) for e in events)
    write.symbol_counts.update(Counter(s for e in events for s in e))
    return write


def random_writes(n: int, seed: int) -> list[storage.PatternWrite]:
    """``n`` learns over a small alphabet (relearns among them), with emotives whose names a
    document store must escape ("a.b", "$x", the empty name, "%" and what looks like an
    escape) and metadata on about half: every kind of change a learn makes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        events = [[rng.choice("abcdef.$")] for _ in range(rng.randint(2, 4))]
        names = ["joy", "a.b", "$x", "", "%", "%2E"]
        emotives = [{rng.choice(names): rng.uniform(-1, 1)} for _ in range(rng.randint(0, 3))]
        write = storage.PatternWrite(write_id=f"w-{seed}-{i}", name=pattern_name(events), persistence=rng.randint(1, 3))
        write.events.extend(pb.Event(symbols=e) for e in events)
        write.emotives.extend(pb.EmotiveRecord(values=e) for e in emotives)
        write.symbol_counts.update(Counter(s for e in events for s in e))
        write.affinity_delta.update(average_emotives(emotives))
        if rng.random() < 0.5:
            write.metadata["k"].values.extend(sorted({canonical_json(rng.choice(["x", 1, True])) for _ in range(2)}))
        out.append(write)
    return out


def kb_of(patterns: Iterable[Sequence[Sequence[str]]]) -> InMemoryKnowledgeBase:
    """An in-memory KB that learned each pattern once."""
    kb = InMemoryKnowledgeBase()
    for events in patterns:
        kb.apply(pattern_write(events))
    return kb
