"""What MongoDB's refusals mean to the pattern store: a duplicate to retry inside the store, or,
at the edge of every store method, one of the project's own exceptions (``kato_grpc/errors.py``)
— so that nothing above the stores imports the driver (architecture.md §4, §7):

- a write conflict that outlived the driver's retries: ``Aborted`` (``WRITE_CONFLICT``);
- a store that does not answer or cannot serve now: ``StoreUnavailable`` (transient);
- a refusal no retry can fix: ``StoreRefused`` (the applier keeps the write as a dead letter);
- anything else the driver raises: ``StoreError`` (INTERNAL, as any unexpected failure).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from kato_grpc.errors import Aborted, CounterLimit, StoreError, StoreRefused, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DUPLICATE_KEY = 11000
WRITE_CONFLICT = 112
# Errors that no retry can fix: BadValue (e.g. a counter that would overflow), FailedToParse,
# TypeMismatch, DollarPrefixedFieldName, EmptyFieldName and DottedFieldName (a field name the
# store's encoding let through: an empty emotive name once made every later learn of its
# pattern fail, and the outbox was retried on every call of the session instead of being
# kept as a dead letter), BSONObjectTooLarge and the "document after update too large" family.
PERMANENT_CODES = frozenset({2, 9, 14, 52, 56, 57, 10334, 17419, 17420})
# MongoDB answers these while it starts, stops or recovers: the store is not available (yet).
UNAVAILABLE_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
RETRY_LABELS = ("TransientTransactionError", "UnknownTransactionCommitResult", "RetryableWriteError")
_DOWN = (ConnectionFailure, ServerSelectionTimeoutError, NetworkTimeout, AutoReconnect, WTimeoutError)
# What the driver raises (OverflowError: an integer BSON cannot hold, when it encodes one).
DRIVER_ERRORS = (PyMongoError, InvalidDocument, OverflowError)


def error_codes(exc: BaseException) -> set[int]:
    if isinstance(exc, StoreError):
        return set(exc.codes)
    if isinstance(exc, BulkWriteError):
        return {int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
    if isinstance(exc, OperationFailure) and exc.code is not None:
        return {int(exc.code)}
    return set()


def is_duplicate(exc: BaseException) -> bool:
    codes = error_codes(exc)
    return isinstance(exc, DuplicateKeyError) or (bool(codes) and codes <= {DUPLICATE_KEY})


def is_permanent(exc: BaseException) -> bool:
    """True when MongoDB (or the driver) refuses a write for good: retrying cannot help. Takes
    the store's own exceptions and the driver's (inside the store, before they are mapped)."""
    if isinstance(exc, StoreRefused | CounterLimit):
        return True
    if isinstance(exc, InvalidDocument | OverflowError):  # DocumentTooLarge is an InvalidDocument
        return True
    if isinstance(exc, PyMongoError) and any(
        exc.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError")
    ):
        return False
    return isinstance(exc, PyMongoError) and bool(error_codes(exc) & PERMANENT_CODES)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _DOWN):
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if any(exc.has_error_label(label) for label in RETRY_LABELS):
        return True
    return isinstance(exc, OperationFailure) and exc.code in UNAVAILABLE_CODES


def store_error(exc: BaseException) -> Exception:
    """The project's exception for a driver's (raised ``from`` it, so the log keeps both)."""
    if isinstance(exc, OperationFailure) and exc.code == WRITE_CONFLICT:
        return Aborted("a concurrent change to the knowledge base won; retry", reason="WRITE_CONFLICT")
    if _unavailable(exc):
        return StoreUnavailable("a backing store is unavailable; retry")
    message = f"{type(exc).__name__}: {str(exc)[:500]}"
    codes = frozenset(error_codes(exc))
    return StoreRefused(message, codes=codes) if is_permanent(exc) else StoreError(message, codes=codes)


def described(exc: BaseException) -> str:
    """What a dead letter says of the error: the driver's own, when the store mapped it."""
    cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {str(cause)[:500]}"


def mapped(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A store method whose driver errors leave it as the project's (``store_error``)."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise store_error(exc) from exc

    return call


async def mapped_iter(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """An async iterator over a cursor, its driver errors mapped like ``mapped``'s."""
    try:
        async for item in items:
            yield item
    except DRIVER_ERRORS as exc:
        raise store_error(exc) from exc
