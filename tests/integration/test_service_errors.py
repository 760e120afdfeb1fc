"""Errors end to end: documented codes with rich details (ErrorInfo, BadRequest naming the
field), bad input that changes nothing, oversized and undecodable messages."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from tests.integration.support import create, details, observe


def _create(kb: str, **fields: object) -> svc.CreateSessionRequest:
    return svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb, **fields))  # type: ignore[arg-type]


_SID = "s-" + "0" * 32


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda s, n: s.CreateSession(_create("")), "INVALID_ARGUMENT", "session.knowledge_base"),
        (lambda s, n: s.CreateSession(_create("demo")), "INVALID_ARGUMENT", "session.knowledge_base"),
        (lambda s, n: s.CreateSession(_create("knowledgeBases/")), "INVALID_ARGUMENT", "session.knowledge_base"),
        # 258 bytes of UTF-8 in 129 characters: the limit is in bytes.
        (lambda s, n: s.CreateSession(_create("knowledgeBases/" + "é" * 129)), "INVALID_ARGUMENT",
         "session.knowledge_base"),
        (lambda s, n: s.CreateSession(_create(names.knowledge_base(n), ttl_seconds=5)), "INVALID_ARGUMENT",
         "session.ttl_seconds"),
        (
            lambda s, n: s.CreateSession(
                _create(names.knowledge_base(n), config=pb.SessionConfig(recall_threshold=math.nan))
            ),
            "INVALID_ARGUMENT", "session.config.recall_threshold",
        ),
        (lambda s, n: s.Observe(svc.ObserveRequest(name="")), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.Learn(svc.LearnRequest(name="sessions/" + _SID)), "NOT_FOUND", None),
        (lambda s, n: s.Learn(svc.LearnRequest(name=_SID)), "INVALID_ARGUMENT", "name"),  # a bare id
        (lambda s, n: s.Learn(svc.LearnRequest(name="sessions/s-unknown")), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.GetSession(svc.GetSessionRequest(name="sessions/")), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.GetPattern(svc.GetPatternRequest(name=names.pattern(n, "0" * 40))), "NOT_FOUND", None),
        (lambda s, n: s.GetPattern(svc.GetPatternRequest(name=names.pattern(n, "00"))), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.GetPattern(svc.GetPatternRequest(name="PTRN|" + "0" * 40)), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.DeletePattern(svc.DeletePatternRequest(name="0" * 40)), "INVALID_ARGUMENT", "name"),
        (lambda s, n: s.ListPatterns(svc.ListPatternsRequest(parent=n)), "INVALID_ARGUMENT", "parent"),
        (
            lambda s, n: s.ListPatterns(svc.ListPatternsRequest(parent=names.knowledge_base(n), page_token="%%%")),
            "INVALID_ARGUMENT", "page_token",
        ),
        (lambda s, n: s.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest(session=_SID)), "INVALID_ARGUMENT",
         "session"),
        (lambda s, n: s.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest(knowledge_base=n)), "INVALID_ARGUMENT",
         "knowledge_base"),
    ],
)  # fmt: skip
def test_errors_have_documented_codes_and_fields(
    stub: svc_grpc.KatoServiceStub, node_id: str, call: object, code: str, field: str | None
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(stub, node_id)  # type: ignore[operator]
    got_code, reason, fields = details(info.value)
    assert got_code.name == code and reason
    if field is not None:
        assert fields == [field]


def test_bad_observations_are_invalid_argument_and_change_nothing(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    observe(stub, sid, "a")
    bad = [
        (pb.Observation(strings=["a"], emotives={"joy": math.inf}), "observation.emotives.joy"),
        (pb.Observation(vectors=[pb.Vector(values=[1.0, math.nan])]), "observation.vectors[0]"),
        (pb.Observation(metadata={"k": struct_pb2.Value(number_value=math.nan)}), "observation.metadata.k"),
        (pb.Observation(strings=["x" * 5000]), "observation.strings[0]"),
    ]
    for obs, field in bad:
        with pytest.raises(grpc.RpcError) as info:
            stub.Observe(svc.ObserveRequest(name=sid, observation=obs))
        assert details(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert details(info.value)[2] == [field]
    session = stub.GetSession(svc.GetSessionRequest(name=sid))
    assert (session.time, session.stm_length) == (1, 1)


def test_learn_on_empty_stm_is_failed_precondition(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    with pytest.raises(grpc.RpcError) as info:
        stub.Learn(svc.LearnRequest(name=sid))
    assert details(info.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "STM_EMPTY")


def test_undecodable_bytes_are_invalid_argument_not_internal(server: object, stub: svc_grpc.KatoServiceStub) -> None:
    channel = grpc.insecure_channel(server.address)  # type: ignore[attr-defined]
    for path in ("/kato.v1.KatoService/Observe", "/kato.v1.KatoService/CreateSession"):
        unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        with pytest.raises(grpc.RpcError) as info:
            unary(b"\xff\xff\xff", timeout=5)
        assert details(info.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")
    stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream("/kato.v1.KatoService/ObserveStream")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([b"\xff\xff\xff"]), timeout=5))
    assert details(info.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_REQUEST")
    channel.close()


def test_oversized_messages_are_resource_exhausted(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    huge = pb.Observation(strings=["x" * 1000] * 5000)  # ~5 MB > the 4 MiB default limit
    with pytest.raises(grpc.RpcError) as info:
        stub.Observe(svc.ObserveRequest(name=sid, observation=huge))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetSession(svc.GetSessionRequest(name=sid)).time == 0


@pytest.mark.parametrize(
    ("call", "field", "expected"),
    [
        (lambda s: s.Learn(svc.LearnRequest(name=_SID)), "name", "sessions/s-{32 hex digits}"),
        (lambda s: s.ListPatterns(svc.ListPatternsRequest(parent="demo")), "parent", "knowledgeBases/{knowledge_base}"),
        (lambda s: s.GetPattern(svc.GetPatternRequest(name="knowledgeBases/k/patterns/00")), "name",
         "knowledgeBases/{knowledge_base}/patterns/{40 lowercase hex digits}"),
        (lambda s: s.GetSymbol(svc.GetSymbolRequest(name="knowledgeBases/k/sym")), "name",
         "knowledgeBases/{knowledge_base}/symbols/{percent-encoded symbol}"),
    ],
)  # fmt: skip
def test_a_malformed_name_says_its_field_and_form_in_error_info(
    stub: svc_grpc.KatoServiceStub, call: object, field: str, expected: str
) -> None:
    """MALFORMED_ID's ErrorInfo metadata names the field and the form it must have (issue 24,
    item 11), as the message and the BadRequest violation do."""
    with pytest.raises(grpc.RpcError) as info:
        call(stub)  # type: ignore[operator]
    status = rpc_status.from_call(info.value)
    assert status is not None
    error_info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error_info)
    assert (info.value.code(), error_info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ID")
    assert dict(error_info.metadata) == {"field": field, "expected": expected}
    assert details(info.value)[2] == [field]
