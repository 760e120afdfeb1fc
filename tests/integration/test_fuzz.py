"""Fuzz the live service: generated and garbage requests get documented codes only.

KATO_FUZZ_REQUESTS sets how many (default 1,500 in the test suite; `make fuzz` runs 10,000).
"""

from __future__ import annotations

import os
import uuid

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server.devserver import ServerProcess
from tests.integration.fuzz import METHODS, SERVICE, message

REQUESTS = int(os.environ.get("KATO_FUZZ_REQUESTS", "1500"))
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,  # a generated etag that is not the session's (ETAG_MISMATCH)
}


def _snapshot(s: svc_grpc.KatoServiceStub, sid: str) -> tuple[bytes, ...]:
    session = s.GetSession(svc.GetSessionRequest(name=sid))
    session.ClearField("expire_time")  # slides with every read
    return (
        session.SerializeToString(deterministic=True),
        s.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).SerializeToString(),
        s.GetPerceptData(svc.GetPerceptDataRequest(name=sid)).SerializeToString(deterministic=True),
        s.GetCognitionData(svc.GetCognitionDataRequest(name=sid)).SerializeToString(deterministic=True),
        s.GetPredictions(svc.GetPredictionsRequest(name=sid)).SerializeToString(deterministic=True),
    )


def test_fuzzed_requests_get_documented_codes_and_hurt_no_bystander(server: ServerProcess) -> None:
    stub = server.stub()
    bystander_node = "bystander-" + uuid.uuid4().hex
    bystander = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(bystander_node)))
    ).name
    for s in ("x", "y", "z"):
        stub.Observe(svc.ObserveRequest(name=bystander, observation=pb.Observation(strings=[s])))
    stub.Learn(svc.LearnRequest(name=bystander))
    stub.Observe(svc.ObserveRequest(name=bystander, observation=pb.Observation(strings=["x"])))
    before = _snapshot(stub, bystander)

    fuzz_sessions = [
        stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(f"fuzz-{i}")))
        ).name
        for i in range(3)
    ]
    ids = st.sampled_from(
        [
            *fuzz_sessions,
            "knowledgeBases/fuzz-0",
            "knowledgeBases/fuzz-1",
            names.pattern("fuzz-0", "0" * 40),
            "fuzz-0",
            "",
            "s-" + "0" * 32,
            "sessions/s-" + "0" * 32,
            "x" * 300,
        ]
    )
    channel = grpc.insecure_channel(server.address)
    seen: dict[str, int] = {}

    @settings(max_examples=REQUESTS, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(METHODS))
        if data.draw(st.integers(0, 9)) == 0:
            payloads = [data.draw(st.binary(max_size=64))]  # garbage on the wire
        else:
            request = data.draw(message(method.input_type, ids))
            payloads = [request.SerializeToString()]
        path = f"/{SERVICE.full_name}/{method.name}"
        many = payloads * data.draw(st.integers(1, 3))
        # A watch never ends by itself: it is cut by a short deadline (the one code it may end with).
        timeout = 1 if method.name == "WatchKnowledgeBase" else 10
        try:
            if method.client_streaming and method.server_streaming:
                both: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
                for _ in both(iter(many), timeout=timeout):
                    pass
            elif method.client_streaming:
                upload: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(path)
                upload(iter(many), timeout=timeout)
            elif method.server_streaming:
                download: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
                for _ in download(payloads[0], timeout=timeout):
                    pass
            else:
                unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
                unary(payloads[0], timeout=timeout)
            code, detail = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, detail = exc.code(), str(exc.details())
        seen[code.name] = seen.get(code.name, 0) + 1
        watch_cut = method.name == "WatchKnowledgeBase" and code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert code in ALLOWED or watch_cut, f"{method.name} answered {code.name}"
        if code == grpc.StatusCode.ABORTED:
            assert "etag" in detail, detail

    one_request()
    channel.close()
    print(f"fuzzed {sum(seen.values())} requests: {seen}")
    assert sum(seen.values()) >= REQUESTS * 0.9
    assert server.health() == 1  # SERVING: the server stayed up
    assert _snapshot(stub, bystander) == before
