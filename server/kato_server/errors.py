"""The one mapping from exceptions to gRPC statuses with rich details (architecture.md §7).

KatoErrors carry their code, reason and field violations; the stores raise their own
``StoreUnavailable`` (UNAVAILABLE) and ``StoreError`` (INTERNAL) for their drivers' errors, so
no driver exception reaches this module (architecture.md §7); any other failure is INTERNAL
with a generic message (the stack trace goes to the log only).
"""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from kato_grpc.errors import KatoError, Unavailable

DOMAIN = "kato.v1"

_STORE_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
)


def as_kato_error(exc: BaseException) -> KatoError | None:
    """The KatoError an exception stands for, or None for an unexpected failure."""
    if isinstance(exc, KatoError):
        return exc
    if isinstance(exc, _STORE_DOWN):
        return Unavailable("a backing store is unavailable; retry", reason="STORE_UNAVAILABLE")
    return None


def to_status(error: KatoError) -> grpc.Status:
    code = code_pb2.Code.Value(error.code)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    return cast(
        grpc.Status,
        rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details)),
    )


def internal_status() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error", details=[_pack(info)])
    return cast(grpc.Status, rpc_status.to_status(status))


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
