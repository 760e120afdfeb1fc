"""The one mapping from exceptions to gRPC statuses with rich details (architecture.md §7).

KatoErrors carry their code, reason and field violations; store outages become UNAVAILABLE
(the session store raises its own StoreUnavailable: no driver exception leaves it); a store's
refusal (StoreFailed) and anything else is INTERNAL with a generic message (the stack trace
goes to the log only).
"""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pymongo import errors as mongo_errors

from kato_grpc.errors import Aborted, KatoError, StoreFailed, Unavailable

DOMAIN = "kato.v1"

_STORE_DOWN: tuple[type[BaseException], ...] = (
    mongo_errors.ConnectionFailure,
    mongo_errors.ServerSelectionTimeoutError,
    mongo_errors.NetworkTimeout,
    mongo_errors.AutoReconnect,
    mongo_errors.WTimeoutError,
    ConnectionError,
    TimeoutError,
)


# MongoDB answers these while it starts, stops or recovers: the store is not available (yet).
_MONGO_UNAVAILABLE_CODES = {
    6: "HostUnreachable",
    7: "HostNotFound",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    189: "PrimarySteppedDown",
    262: "ExceededTimeLimit",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
}
# A transaction that lost a race with another: the store is fine, the call is retryable.
_MONGO_WRITE_CONFLICT = 112
_MONGO_RETRY_LABELS = ("TransientTransactionError", "UnknownTransactionCommitResult", "RetryableWriteError")


def as_kato_error(exc: BaseException) -> KatoError | None:
    """The KatoError an exception stands for, or None for an unexpected failure."""
    if isinstance(exc, StoreFailed):  # not the caller's doing: what it sees of any fault of ours
        return None
    if isinstance(exc, KatoError):
        return exc
    if isinstance(exc, mongo_errors.OperationFailure) and exc.code == _MONGO_WRITE_CONFLICT:
        return Aborted("a concurrent change to the knowledge base won; retry", reason="WRITE_CONFLICT")
    if isinstance(exc, _STORE_DOWN) or _mongo_unavailable(exc):
        return Unavailable("a backing store is unavailable; retry", reason="STORE_UNAVAILABLE")
    return None


def _mongo_unavailable(exc: BaseException) -> bool:
    if not isinstance(exc, mongo_errors.PyMongoError):
        return False
    if any(exc.has_error_label(label) for label in _MONGO_RETRY_LABELS):
        return True
    return isinstance(exc, mongo_errors.OperationFailure) and exc.code in _MONGO_UNAVAILABLE_CODES


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
