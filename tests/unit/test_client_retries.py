"""The client's retries against a real gRPC server on loopback that fails on purpose: the same
request (and so the same request id) every attempt, what is and is not retried."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from kato_grpc.client import Aborted, KatoClient, Unavailable
from kato_grpc.v1 import kato_service_pb2 as svc


class Flaky:
    """Answers each method's first ``failures`` calls with ``status``, then succeeds."""

    def __init__(self, failures: int, code: int, reason: str) -> None:
        self.failures, self.code, self.reason = failures, code, reason
        self.seen: list[Any] = []

    def handle(self, request: Any, context: grpc.ServicerContext, reply: Any) -> Any:
        self.seen.append(request)
        if len(self.seen) <= self.failures:
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain="kato.v1"))
            context.abort_with_status(
                rpc_status.to_status(status_pb2.Status(code=self.code, message="on purpose", details=[info]))
            )
        return reply


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    state = Flaky(0, code_pb2.UNAVAILABLE, "")
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Learn": grpc.unary_unary_rpc_method_handler(
            lambda r, c: state.handle(r, c, svc.LearnResponse(pattern="knowledgeBases/k/patterns/" + "0" * 40)),
            request_deserializer=svc.LearnRequest.FromString,
            response_serializer=svc.LearnResponse.SerializeToString,
        ),
        "DeleteSession": grpc.unary_unary_rpc_method_handler(
            lambda r, c: state.handle(r, c, None) or c.abort(grpc.StatusCode.NOT_FOUND, "gone"),
            request_deserializer=svc.DeleteSessionRequest.FromString,
            response_serializer=lambda m: b"",
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kato.v1.KatoService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield state, f"127.0.0.1:{port}"
    server.stop(0)


def test_retries_send_the_same_request_id(flaky: tuple[Flaky, str]) -> None:
    state, address = flaky
    state.failures = 2
    with KatoClient(address, backoff=0.001) as kato:
        assert kato.learn("sessions/s-" + "0" * 32).pattern.endswith("0" * 40)
    ids = [r.request_id for r in state.seen]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]  # one fresh id, sent three times


def test_retries_give_up_with_the_last_error(flaky: tuple[Flaky, str]) -> None:
    state, address = flaky
    state.failures = 10
    with KatoClient(address, retries=2, backoff=0.001) as kato, pytest.raises(Unavailable):
        kato.learn("sessions/s-" + "0" * 32)
    assert len(state.seen) == 3


def test_a_stale_etag_is_not_retried(flaky: tuple[Flaky, str]) -> None:
    state, address = flaky
    state.failures, state.code, state.reason = 10, code_pb2.ABORTED, "ETAG_MISMATCH"
    with KatoClient(address, backoff=0.001) as kato, pytest.raises(Aborted) as info:
        kato.learn("sessions/s-" + "0" * 32)
    assert info.value.reason == "ETAG_MISMATCH" and len(state.seen) == 1


def test_a_delete_retried_after_a_lost_answer_is_done(flaky: tuple[Flaky, str]) -> None:
    # The first attempt may have deleted it: NOT_FOUND on the retry means done.
    state, address = flaky
    state.failures = 1
    with KatoClient(address, backoff=0.001) as kato:
        kato.delete_session("sessions/s-" + "0" * 32)
    assert len(state.seen) == 2


def test_the_client_needs_none_of_the_server_dependencies() -> None:
    code = (
        "import sys, kato_grpc.client; "
        "print(sorted(m for m in ('numpy', 'redis', 'pymongo', 'structlog', 'pydantic', 'server', "
        "'kato_grpc.engine.processor', 'rapidfuzz') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
