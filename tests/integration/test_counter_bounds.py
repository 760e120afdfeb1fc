"""Issue 21 (5, 7): no import may push a counter past the bound an import may raise it to
(2^53 - 1, engine.md D-30) — the pattern's frequency, the KB's total frequency, its symbols'
frequencies — so that no import can leave a knowledge base where learning fails. Such a batch
is refused whole with an error naming the field, never INTERNAL, and nothing of it applied."""

from __future__ import annotations

import uuid

import pytest

from kato_grpc import names
from kato_grpc.client import FailedPrecondition, InvalidArgument, KatoClient
from kato_grpc.client import requests as build
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_server.devserver import ServerProcess

MAX = 2**53 - 1


def _pattern(*events: list[str], frequency: int) -> pb.Pattern:
    return pb.Pattern(events=[pb.Event(symbols=e) for e in events], frequency=frequency)


def _state(kato: KatoClient, kb: str) -> tuple[int, int, int]:
    stats = kato.get_knowledge_base(kb)
    return stats.version, stats.pattern_count, stats.total_pattern_frequencies


def _learn(kato: KatoClient, kb: str, *events: list[str]) -> str:
    session = kato.create_session(kb)
    for event in events:
        kato.observe(session.name, event)
    return kato.learn(session.name).pattern


def test_an_import_past_the_total_frequency_bound_is_refused_whole_and_learning_goes_on(
    server: ServerProcess,
) -> None:
    kb = "bound-" + uuid.uuid4().hex
    with KatoClient(server.address, retries=0) as kato:
        # The attack of the issue: many patterns at the most a 2-symbol pattern may be
        # imported with (its symbols' frequencies grow by twice its frequency), one batch.
        many = [_pattern([f"a{i}"], [f"b{i}"], frequency=MAX // 2) for i in range(1025)]
        with pytest.raises(FailedPrecondition) as info:
            kato.import_knowledge_base(build.import_requests(kb, "many", many, batch_size=1000))
        assert info.value.reason == "COUNTER_LIMIT"
        assert [v.field for v in info.value.violations] == ["patterns[1].pattern.frequency"]
        assert info.value.metadata["counter"] == "symbol_frequencies"
        assert _state(kato, kb)[1:] == (0, 0)  # nothing of the batch
        # One pattern at the maximum is fine; the next batch that would pass it is refused.
        kato.import_knowledge_base(build.import_requests(kb, "one", many[:1]))
        before = _state(kato, kb)
        with pytest.raises(FailedPrecondition) as info:
            kato.import_knowledge_base(build.import_requests(kb, "two", [_pattern(["x"], ["y"], frequency=1)]))
        assert [v.field for v in info.value.violations] == ["patterns[0].pattern.frequency"]
        assert _state(kato, kb) == before
        # Learning is never what hits the bound: it still works, and counts.
        learned = _learn(kato, kb, ["c"], ["d"])
        assert kato.get_pattern(learned).frequency == 1
        assert _state(kato, kb)[2] == MAX // 2 + 1


def test_an_import_past_a_patterns_frequency_bound_is_refused(server: ServerProcess) -> None:
    kb = "bound-" + uuid.uuid4().hex
    with KatoClient(server.address, retries=0) as kato:
        learned = _learn(kato, kb, ["p"], ["q"])
        kato.update_pattern(pb.Pattern(name=learned, frequency=MAX), ["frequency"])  # as UpdatePattern may
        again = _pattern(["p"], ["q"], frequency=1)  # MAX + 1: past the pattern's bound
        before = _state(kato, kb)
        with pytest.raises(FailedPrecondition) as info:
            kato.import_knowledge_base(build.import_requests(kb, "again", [_pattern(["r"], ["s"], frequency=2), again]))
        assert [v.field for v in info.value.violations] == ["patterns[1].pattern.frequency"]
        assert info.value.metadata["counter"] == "frequency"
        assert _state(kato, kb)[1:] == before[1:] and kato.get_pattern(learned).frequency == MAX
        assert kato.patterns(kb) and names.pattern(kb, pattern_name([["r"], ["s"]])) not in [
            p.name for p in kato.patterns(kb)
        ]


def test_an_import_past_the_symbol_frequency_bound_is_refused(server: ServerProcess) -> None:
    kb = "bound-" + uuid.uuid4().hex
    with KatoClient(server.address, retries=0) as kato:
        # Alone, each pattern fits; after the first, the KB's symbols hold 2^53 - 2 and the
        # second's two would pass the bound.
        first, second = _pattern(["u"], ["v"], frequency=MAX // 2), _pattern(["w"], ["z"], frequency=1)
        kato.import_knowledge_base(build.import_requests(kb, "first", [first]))
        before = _state(kato, kb)
        with pytest.raises(FailedPrecondition) as info:
            kato.import_knowledge_base(build.import_requests(kb, "second", [second]))
        assert info.value.metadata["counter"] == "symbol_frequencies"
        assert [v.field for v in info.value.violations] == ["patterns[0].pattern.frequency"]
        assert _state(kato, kb) == before


def test_a_pattern_whose_symbol_count_would_overflow_is_invalid_not_internal(server: ServerProcess) -> None:
    """One pattern of 1,100 × "a" at the maximum: 1,100 × (2^53 - 1) does not fit 64 bits
    (it was INTERNAL: ``ValueError: Value out of range``)."""
    kb = "bound-" + uuid.uuid4().hex
    with KatoClient(server.address, retries=0) as kato:
        long = _pattern(*[["a"] for _ in range(1100)], frequency=MAX)
        with pytest.raises(InvalidArgument) as info:
            kato.import_knowledge_base(build.import_requests(kb, "long", [long]))
        assert info.value.reason == "COUNTER_LIMIT"
        assert [v.field for v in info.value.violations] == ["patterns[0].pattern.frequency"]
        assert _state(kato, kb)[1:] == (0, 0)
