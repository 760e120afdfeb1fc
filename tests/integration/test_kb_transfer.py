"""Export and import (ExportKnowledgeBase, ImportKnowledgeBase): a knowledge base copied to a
fresh node predicts exactly what the original predicts, for every conformance scenario; a
retried or resumed import never counts twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kato_grpc import names
from kato_grpc.client import InvalidArgument, KatoClient
from kato_grpc.client import requests as build
from kato_grpc.engine.naming import vector_name
from kato_grpc.replay import config_from_json, observation_from_json
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server.devserver import ServerProcess
from tests.conformance.compare import SCENARIOS, load
from tests.integration.grpc_replay import replay_grpc


def copy(
    kato: KatoClient, source: str, target: str, import_id: str = "copy", batch_size: int = 7
) -> svc.ImportKnowledgeBaseResponse:
    parts = list(kato.export_knowledge_base(source, batch_size=batch_size))
    header = parts[0].header
    assert header.format_version == 1 and header.knowledge_base.name == names.knowledge_base(source)
    patterns = [p for part in parts[1:] for p in part.patterns]
    vectors = [v for part in parts[1:] for v in part.vectors]
    assert len(patterns) == header.knowledge_base.pattern_count
    return kato.import_knowledge_base(build.import_requests(target, import_id, patterns, vectors, batch_size))


def _snapshot(kato: KatoClient, kb: str) -> dict[str, Any]:
    """What a KB holds, with its own name taken out of the pattern names."""
    stats = kato.get_knowledge_base(kb)
    patterns = []
    for p in kato.patterns(kb):
        p.name = names.pattern_id(p.name)
        patterns.append(p.SerializeToString(deterministic=True))
    symbols = [(s.symbol, s.frequency, s.pattern_member_frequency, dict(s.affinity)) for s in kato.symbols(kb)]
    counts = (stats.pattern_count, stats.total_pattern_frequencies, stats.symbol_count, stats.vector_count)
    return {"counts": counts, "patterns": patterns, "symbols": symbols}


def _predictions(kato: KatoClient, kb: str, scenario: dict[str, Any]) -> Iterator[bytes]:
    """Every observe of the scenario on a fresh session (no learning: the KB stays as it is),
    its predictions with the KB's name taken out."""
    config = config_from_json(scenario.get("config", {}))
    config.max_pattern_length = 0
    session = kato.create_session(kb, config=config)
    prefix = names.pattern_prefix(str(names.parse_knowledge_base(build.knowledge_base(kb))))
    for op in scenario["operations"]:
        if op["op"] == "observe":
            request = svc.ObserveRequest(
                name=session.name, observation=observation_from_json(op), return_predictions=True
            )
            reply = kato.call("Observe", request, svc.ObserveResponse)
            reply.unique_id = ""  # made by the server, random
            for p in reply.predictions:
                assert p.pattern.startswith(prefix)
                p.pattern = p.pattern[len(prefix) :]
            yield reply.SerializeToString(deterministic=True)
        elif op["op"] == "clear_stm":
            kato.clear_short_term_memory(session.name)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_a_copied_knowledge_base_predicts_what_the_original_does(server: ServerProcess, path: Path) -> None:
    scenario = load(path)
    source, target = "src-" + uuid.uuid4().hex, "dst-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        replay_grpc(kato.stub, source, scenario)
        result = copy(kato, source, target)
        assert result.applied_batches == (result.batches if result.patterns else 0)
        assert _snapshot(kato, target) == _snapshot(kato, source)
        original = list(_predictions(kato, source, scenario))
        assert list(_predictions(kato, target, scenario)) == original  # bit for bit


def _learn(kato: KatoClient, kb: str, *events: list[str], emotives: dict[str, float] | None = None) -> None:
    session = kato.create_session(kb)
    for event in events:
        kato.observe(session.name, event, emotives=emotives or {})
    kato.learn(session.name)


def test_imports_count_once_per_import_id_and_resume(server: ServerProcess) -> None:
    source, target = "src-" + uuid.uuid4().hex, "dst-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        for i in range(20):
            for _ in range(1 + i % 3):
                _learn(kato, source, [f"a{i}"], [f"b{i}", "shared"], emotives={"joy": float(i)})
        patterns = [p for part in kato.export_knowledge_base(source) for p in part.patterns]
        # A stream cut after two batches, then the whole import again under the same id.
        first = build.import_requests(target, "resume-me", patterns, batch_size=3)
        partial = [next(first), next(first)]
        assert kato.import_knowledge_base(partial).applied_batches == 2
        again = kato.import_knowledge_base(build.import_requests(target, "resume-me", patterns, batch_size=3))
        assert (again.batches, again.applied_batches) == (7, 5)
        assert _snapshot(kato, target) == _snapshot(kato, source)
        # The same import again: nothing applied. Under a new id: everything counts again.
        assert (
            kato.import_knowledge_base(
                build.import_requests(target, "resume-me", patterns, batch_size=3)
            ).applied_batches
            == 0
        )
        kato.import_knowledge_base(build.import_requests(target, "second", patterns, batch_size=3))
        doubled = {names.pattern_id(p.name): p.frequency for p in kato.patterns(target)}
        assert doubled == {names.pattern_id(p.pattern.name): 2 * p.pattern.frequency for p in patterns}
        shared = kato.get_symbol(target, "shared")
        assert shared.frequency == 2 * kato.get_symbol(source, "shared").frequency
        assert shared.pattern_member_frequency == 20  # new patterns only the first time


def test_bad_imports_name_the_field_and_change_nothing(server: ServerProcess) -> None:
    target = "dst-" + uuid.uuid4().hex
    with KatoClient(server.address, retries=0) as kato:
        good = pb.Pattern(events=[pb.Event(symbols=["a"]), pb.Event(symbols=["b"])], frequency=2)
        bad_cases: list[tuple[pb.Pattern | svc.ExportedPattern, str]] = [
            (pb.Pattern(events=[pb.Event(symbols=["a"])]), "patterns[1].pattern.events"),  # one symbol
            (pb.Pattern(events=good.events, frequency=2**60), "patterns[1].pattern.frequency"),
            (pb.Pattern(events=good.events, emotives=[pb.EmotiveRecord(values={"e": float("nan")})]),
             "patterns[1].pattern.emotives[0].e"),
            (svc.ExportedPattern(pattern=good, affinity={"e": float("inf")}), "patterns[1].affinity.e"),
        ]  # fmt: skip
        for bad, field in bad_cases:
            with pytest.raises(InvalidArgument) as info:
                kato.import_knowledge_base(build.import_requests(target, "x", [good, bad]))
            assert [v.field for v in info.value.violations] == [field]
        with pytest.raises(InvalidArgument) as missing:
            kato.import_knowledge_base([svc.ImportKnowledgeBaseRequest(knowledge_base=names.knowledge_base(target))])
        assert [v.field for v in missing.value.violations] == ["import_id"]
        assert kato.get_knowledge_base(target).pattern_count == 0


def test_imported_vectors_are_under_their_own_names_once_a_batch(server: ServerProcess) -> None:
    """Issue 21: two vectors of one name in a batch kept one of them silently."""
    target = "vec-" + uuid.uuid4().hex
    values = [0.25, -1.5]
    name = vector_name(np.asarray(values, dtype=np.float64))
    good = svc.NamedVector(name=name, values=values)
    with KatoClient(server.address, retries=0) as kato:
        for vectors, field in (
            ([svc.NamedVector(name="VCTR|" + "0" * 40, values=values)], "vectors[0].name"),  # not its name
            ([good, svc.NamedVector(name=name, values=[0.5, 0.5])], "vectors[1].name"),  # one name, two vectors
            ([good, good], "vectors[1].name"),
        ):
            with pytest.raises(InvalidArgument) as info:
                kato.import_knowledge_base(build.import_requests(target, "v", [], vectors))
            assert [v.field for v in info.value.violations] == [field]
        assert kato.get_knowledge_base(target).vector_count == 0
        kato.import_knowledge_base(build.import_requests(target, "v", [], [good]))
        assert kato.get_knowledge_base(target).vector_count == 1
