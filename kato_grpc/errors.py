"""The one exception tree of kato-grpc.

Every error a client can cause or observe is a ``KatoError``. Each class names the gRPC
status it maps to (as a plain string, so the pure core stays free of grpc imports) and an
UPPER_SNAKE reason for ``google.rpc.ErrorInfo``. The server maps them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (becomes a ``google.rpc.BadRequest`` violation)."""

    field: str
    description: str


class KatoError(Exception):
    """Base of every kato-grpc error."""

    code: str = "UNKNOWN"
    default_reason: str = "KATO_ERROR"
    # Set by the client: the id the server gave the failed call (its access log has it).
    request_id: str = ""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = violations
        self.metadata = dict(metadata or {})


class InvalidArgument(KatoError):
    """Bad input or configuration; ``violations`` names the fields."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str = "INVALID_FIELD") -> InvalidArgument:
        return cls(f"{field}: {description}", reason=reason, violations=(FieldViolation(field, description),))


class InvalidFile(InvalidArgument):
    """A file given to a tool (``kato train``, ``kato kb import``) that its format cannot read,
    or whose line the server refused: where (the file, the line when there is one), which
    field of the line, and what is wrong — ``corpus.jsonl:3: events[1].strings[0]: is not a
    string``. Raised by the client side only; never sent."""

    default_reason = "INVALID_FILE"

    def __init__(self, path: object, line: int, field: str, description: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        violations = (FieldViolation(field, description),) if field else ()
        super().__init__(": ".join(p for p in (where, field, description) if p), violations=violations)
        self.path, self.line, self.field, self.description = str(path), line, field, description


class NotFound(KatoError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class FailedPrecondition(KatoError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class CounterLimit(FailedPrecondition):
    """A write that would take a counter past the bound an import may raise it to (engine.md
    D-30): its whole batch is refused, nothing of it applied. ``position`` is the write's index
    in its batch (an import names the pattern from it)."""

    default_reason = "COUNTER_LIMIT"

    def __init__(self, message: str, *, position: int, counter: str, value: int, bound: int) -> None:
        super().__init__(
            message,
            metadata={"counter": counter, "value": str(value), "bound": str(bound), "position": str(position)},
        )
        self.position = position
        self.counter = counter


class Aborted(KatoError):
    code = "ABORTED"
    default_reason = "ABORTED"


class AlreadyExists(KatoError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class ResourceExhausted(KatoError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(KatoError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(KatoError):
    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class DeadlineExceeded(KatoError):
    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Unavailable(KatoError):
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class StoreUnavailable(KatoError):
    """A backing store did not answer, or cannot serve for the moment (a connection refused or
    cut, a timeout, a failover under way): a retry may succeed. The stores raise it in place of
    their drivers' exceptions (architecture.md §4)."""

    code = "UNAVAILABLE"
    default_reason = "STORE_UNAVAILABLE"


class StoreError(Exception):
    """A backing store refused an operation for a reason no KatoError names and a retry does
    not change (a script error, a key of the wrong type, a full store): a fault of the service
    or its deployment, never of the caller — the client sees INTERNAL, the log the store's own
    error as its cause.
    ``codes``: the store's error codes, for operators (a dead letter keeps them)."""

    def __init__(self, message: str, *, codes: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.codes = codes


class StoreRefused(StoreError):
    """A store error that no retry can fix (a document too large, a counter that would
    overflow): the applier keeps a learn refused so as a dead letter instead of retrying it."""


class DataLoss(KatoError):
    """Stored data that cannot be read back (a damaged snapshot whose log was compacted)."""

    code = "DATA_LOSS"
    default_reason = "DATA_LOSS"


# Statuses the service itself never raises on purpose, but a client can observe (a crash,
# a proxy, a cancelled call): the client maps every status code into this tree.


class Cancelled(KatoError):
    code = "CANCELLED"
    default_reason = "CANCELLED"


class Unimplemented(KatoError):
    code = "UNIMPLEMENTED"
    default_reason = "UNIMPLEMENTED"


class Internal(KatoError):
    code = "INTERNAL"
    default_reason = "INTERNAL"


BY_CODE: dict[str, type[KatoError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        Aborted,
        AlreadyExists,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
        Unavailable,
        DataLoss,
        Cancelled,
        Unimplemented,
        Internal,
    )
}
