"""KATO_LEARN_ACK=committed (issue 14): a learn is answered once its outbox is committed in
Redis and written to MongoDB behind the answer. Every conformance scenario still gives the pure
replay's outputs (a session sees its own learns at once); a server that dies between the
answer and the write loses and doubles nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.replay import replay
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.conformance.compare import SCENARIOS, differences
from tests.integration.crashing_server import CRASH_EXIT_CODE
from tests.integration.grpc_replay import replay_grpc
from tests.integration.support import doomed_session, eventually, frequency

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


@pytest.fixture(scope="module")
def committed(stores: Stores, log_dir: Path) -> Iterator[ServerProcess]:
    server = new_server(*stores, log_dir, "kato_ack_" + uuid.uuid4().hex[:8]).start(KATO_LEARN_ACK="committed")
    yield server
    server.stop()


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_with_learns_acknowledged_at_commit_matches_pure_replay(path: Path, committed: ServerProcess) -> None:
    scenario = json.loads(path.read_text(encoding="utf-8"))
    via_grpc = replay_grpc(committed.stub(), "ack-" + uuid.uuid4().hex, scenario)
    diffs = differences(scenario["results"], via_grpc["results"], "results")
    diffs += differences(scenario["learned_patterns"], via_grpc["learned_patterns"], "learned_patterns")
    assert diffs == [], "\n".join(diffs[:20])
    assert via_grpc == json.loads(json.dumps(replay(scenario)))


def test_a_session_predicts_from_its_learn_at_once(committed: ServerProcess) -> None:
    stub = committed.stub()
    kb = "ack-ryw-" + uuid.uuid4().hex
    session = stub.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(kb))))
    for i in range(30):
        first, second = f"a{i}", f"b{i}"
        for symbol in (first, second):
            stub.Observe(svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=[symbol])))
        learned = stub.Learn(svc.LearnRequest(name=session.name, request_id=f"l{i}")).pattern
        seen = stub.Observe(
            svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=[first]), return_predictions=True)
        )
        assert learned in [p.pattern for p in seen.predictions]  # the very next call predicts from it
        stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=session.name))


def test_a_learn_answered_before_its_write_survives_the_server_dying(stores: Stores, log_dir: Path) -> None:
    doomed, stub, node, sid = doomed_session(stores, log_dir, redis_db=14, KATO_LEARN_ACK="committed")
    database = doomed.env["KATO_MONGODB_DATABASE"]
    answered = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"), timeout=10)  # OK: committed
    name = names.pattern(node, pattern_name([["a"], ["b"]]))
    assert answered.pattern == name
    assert doomed.proc is not None and doomed.proc.wait(30) == CRASH_EXIT_CODE  # died writing it behind

    survivor = new_server(*stores, log_dir, database, redis_db=14).start()
    try:
        stub = survivor.stub()
        assert eventually(lambda: frequency(stub, name) == 1), "the relay applied the outbox"
        retry = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"))
        assert retry == answered  # the recorded answer, not a second learn
        assert frequency(stub, name) == 1
    finally:
        survivor.stop()
