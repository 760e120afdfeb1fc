"""Issue 9, stuck sessions: refused writes, session bytes, crafted ids, stream auth, contention."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from pymongo import MongoClient

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.integration.support import error_info

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def _observe(stub: svc_grpc.KatoServiceStub, sid: str, *symbols: str, **extra: object) -> svc.ObserveResponse:
    observation = pb.Observation(strings=symbols, **extra)  # type: ignore[arg-type]
    return stub.Observe(svc.ObserveRequest(name=sid, observation=observation))


def _mongo(stores: Stores) -> MongoClient[dict[str, Any]]:
    return MongoClient(devstack.mongodb_uri(stores[1]))


def _usable(stub: svc_grpc.KatoServiceStub, sid: str) -> None:
    """Every kind of call still works on the session."""
    stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
    _observe(stub, sid, "fine-1")
    _observe(stub, sid, "fine-2")
    assert stub.Learn(svc.LearnRequest(name=sid)).status == svc.LEARN_STATUS_LEARNED
    stub.GetPredictions(svc.GetPredictionsRequest(name=sid))
    stub.GetSession(svc.GetSessionRequest(name=sid))


def test_frequencies_that_could_overflow_are_refused(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node_id)))
    ).name
    _observe(stub, sid, "o1")
    _observe(stub, sid, "o2")
    name = stub.Learn(svc.LearnRequest(name=sid)).pattern
    with pytest.raises(grpc.RpcError) as info:
        stub.UpdatePattern(
            svc.UpdatePatternRequest(
                pattern=pb.Pattern(name=name, frequency=2**63 - 1),
                update_mask=field_mask_pb2.FieldMask(paths=["frequency"]),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _usable(stub, sid)


def test_a_write_mongodb_refuses_is_a_dead_letter_and_the_session_stays_usable(
    server: ServerProcess, stores: Stores, node_id: str
) -> None:
    stub = server.stub()
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node_id)))
    ).name
    _observe(stub, sid, "w1")
    _observe(stub, sid, "w2")
    name = stub.Learn(svc.LearnRequest(name=sid)).pattern
    # A counter at the edge of int64 (a legacy or hand-edited document): the next learn's
    # $inc overflows, which MongoDB refuses for good.
    with _mongo(stores) as client:
        client[server.env["KATO_MONGODB_DATABASE"]].patterns.update_one(
            {"kb_id": node_id, "name": pattern_name([["w1"], ["w2"]])}, {"$set": {"frequency": 2**63 - 1}}
        )
    _observe(stub, sid, "w1")
    _observe(stub, sid, "w2")
    with pytest.raises(grpc.RpcError) as info:
        stub.Learn(svc.LearnRequest(name=sid))
    code, reason, _ = error_info(info.value)
    assert (code, reason) == ("FAILED_PRECONDITION", "PATTERN_REJECTED")
    with _mongo(stores) as client:
        dead = list(client[server.env["KATO_MONGODB_DATABASE"]].dead_letters.find({"kb_id": node_id}))
    assert [d["name"] for d in dead] == [names.pattern_id(name)]
    _usable(stub, sid)
    assert max(len(line) for line in server.log_path.read_text().splitlines()) < 5000


def test_sessions_cannot_outgrow_their_byte_limit(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    config = pb.SessionConfig(process_predictions=False)
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node_id), config=config))
    ).name
    big = "x" * 1000
    accepted = 0
    with pytest.raises(grpc.RpcError) as info:  # 20 events × 1,000 symbols × 1 KiB, each in-limit
        for i in range(20):
            _observe(stub, sid, *[f"{i}-{j}-{big}" for j in range(1000)])
            accepted += 1
    assert error_info(info.value)[:2] == ("RESOURCE_EXHAUSTED", "SESSION_TOO_LARGE")
    assert 1 <= accepted < 5
    events = stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events
    assert len(events) == accepted  # nothing of the refused observation was applied
    learned = stub.Learn(svc.LearnRequest(name=sid))  # the largest pattern a session can make
    assert stub.GetPattern(svc.GetPatternRequest(name=learned.pattern)).length == 1000 * accepted
    # Metadata accumulates too: the limit counts it.
    with pytest.raises(grpc.RpcError) as meta:
        for _ in range(20):
            _observe(stub, sid, "m", metadata={"k": struct_pb2.Value(string_value="y" * 1_000_000)})
    assert error_info(meta.value)[:2] == ("RESOURCE_EXHAUSTED", "SESSION_TOO_LARGE")
    _usable(stub, sid)


def test_crafted_ids_never_reach_other_redis_keys(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node_id)))
    ).name
    r = stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["a"]), request_id="X}:state"))
    assert r.stm_length == 1
    for crafted in (sid + "}:req:X", "S}:req:X", f"{sid}}}:state"):
        with pytest.raises(grpc.RpcError) as info:
            _observe(stub, crafted, "b")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _usable(stub, sid)


def test_observe_stream_authenticates_when_it_opens(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start(KATO_AUTH_TOKENS=json.dumps({"t0ken": ["alice"]}))
    release = threading.Event()
    try:
        stub = server.stub()

        def silent() -> Iterator[svc.ObserveStreamRequest]:
            release.wait(30)  # sends nothing until the test ends
            yield from ()

        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.ObserveStream(silent(), timeout=10)))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The scheme is case-insensitive (RFC 7235).
        lower = (("authorization", "bearer t0ken"),)
        sid = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("alice"))), metadata=lower
        ).name
        request = svc.ObserveStreamRequest(name=sid, observation=pb.Observation(strings=["a"]))
        assert [r.stm_length for r in stub.ObserveStream(iter([request]), metadata=lower)] == [1]
    finally:
        release.set()
        server.stop()


def test_light_contention_never_surfaces_as_aborted(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start(KATO_WORKERS="2")
    try:
        stubs = [server.stub() for _ in range(5)]
        sid = (
            stubs[0]
            .CreateSession(
                svc.CreateSessionRequest(
                    session=svc.Session(knowledge_base=names.knowledge_base("contention-" + uuid.uuid4().hex))
                )
            )
            .name
        )
        codes: Counter[str] = Counter()

        def client(k: int) -> None:
            for i in range(300):
                try:
                    _observe(stubs[k], sid, f"c{k}-{i % 5}")
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1

        with ThreadPoolExecutor(5) as pool:
            list(pool.map(client, range(5)))
        assert codes == Counter({"OK": 1500}), codes
        assert stubs[1].GetSession(svc.GetSessionRequest(name=sid)).time == 1500
    finally:
        server.stop()
