"""What MongoDB's refusals mean to the pattern store: a duplicate to retry, or a write
refused for good (the runner keeps it as a dead letter)."""

from __future__ import annotations

from bson.errors import InvalidDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from kato_grpc.errors import CounterLimit

DUPLICATE_KEY = 11000
# Errors that no retry can fix: BadValue (e.g. a counter that would overflow), FailedToParse,
# TypeMismatch, BSONObjectTooLarge and the "document after update too large" family.
PERMANENT_CODES = frozenset({2, 9, 14, 10334, 17419, 17420})


def error_codes(exc: BaseException) -> set[int]:
    if isinstance(exc, BulkWriteError):
        return {int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
    if isinstance(exc, OperationFailure) and exc.code is not None:
        return {int(exc.code)}
    return set()


def is_duplicate(exc: BaseException) -> bool:
    codes = error_codes(exc)
    return isinstance(exc, DuplicateKeyError) or (bool(codes) and codes <= {DUPLICATE_KEY})


def is_permanent(exc: BaseException) -> bool:
    """True when MongoDB (or the driver) refuses a write for good: retrying cannot help."""
    if isinstance(exc, InvalidDocument | OverflowError | CounterLimit):  # DocumentTooLarge is an InvalidDocument
        return True
    if isinstance(exc, PyMongoError) and any(
        exc.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError")
    ):
        return False
    return bool(error_codes(exc) & PERMANENT_CODES)
