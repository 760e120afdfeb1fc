"""Failed calls as the one exception tree of kato-grpc (``kato_grpc.errors``).

The server raises a ``KatoError`` and sends it as a ``google.rpc.Status``; the client turns the
status back into the same class, with the ErrorInfo ``reason`` and ``metadata`` and the
BadRequest field violations, so ``except NotFound`` and ``err.reason == "SESSION_NOT_FOUND"``
read the same on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from kato_grpc.errors import BY_CODE, FieldViolation, KatoError

_STATUS_TRAILER = "grpc-status-details-bin"
_REQUEST_ID = "x-request-id"  # sent by the server in every response's trailing metadata


def from_rpc_error(exc: grpc.RpcError) -> KatoError:
    """The KatoError a failed call stands for (its ``__cause__`` is ``exc``). Works for the
    blocking client's errors and grpc.aio's alike (both have code, details, trailers)."""
    code = _call(exc, "code") or grpc.StatusCode.UNKNOWN
    message = _call(exc, "details") or code.name
    reason, metadata, violations = "", dict[str, str](), tuple[FieldViolation, ...]()
    for detail in _status_details(_call(exc, "trailing_metadata") or ()):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = BY_CODE.get(code.name, KatoError)
    error = cls(message, reason=reason or None, violations=violations, metadata=metadata)
    if cls is KatoError:
        error.code = code.name  # a status without its own class (OUT_OF_RANGE, DATA_LOSS, ...)
    error.request_id = next((str(v) for k, v in _call(exc, "trailing_metadata") or () if k == _REQUEST_ID), "")
    error.__cause__ = exc
    return error


def _call(exc: grpc.RpcError, method: str) -> Any:
    fn = getattr(exc, method, None)
    return fn() if callable(fn) else None


def _status_details(trailers: Iterable[tuple[str, str | bytes]]) -> list[Any]:
    """The details of the google.rpc.Status in the ``grpc-status-details-bin`` trailer."""
    for key, value in trailers:
        if key == _STATUS_TRAILER and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


def retryable(error: KatoError) -> bool:
    """Worth the same call again, with the same request id: the server may not have done it,
    or lost a race, and deduplicates a repeat (a stale etag is the caller's to resolve).
    DEADLINE_EXCEEDED is not: each attempt's deadline is the rest of the call's budget, so it
    means the budget is spent (``channel.Options``)."""
    if error.code == "ABORTED":
        return error.reason != "ETAG_MISMATCH"
    return error.code == "UNAVAILABLE"
