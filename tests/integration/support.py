"""Helpers shared by the integration tests (reading results, waiting, error details)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc


def frequency(stub: svc_grpc.KatoServiceStub, node: str, name: str) -> int:
    """A pattern's frequency in a node's KB; 0 when the KB does not have it."""
    try:
        return int(stub.GetPattern(svc.GetPatternRequest(node_id=node, name=name)).frequency)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def error_info(exc: grpc.RpcError) -> tuple[str, str, str]:
    """(code, ErrorInfo reason, ErrorInfo metadata["method"]) of a failed call."""
    status = rpc_status.from_call(exc)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return exc.code().name, info.reason, info.metadata.get("method", "")
    return exc.code().name, "", ""
