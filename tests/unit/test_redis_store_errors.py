"""The session store's driver errors become the project's (architecture.md §4), and those the
statuses clients saw when the server mapped redis-py's exceptions itself (§7)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from redis import exceptions as redis_errors

from kato_grpc.errors import StoreError, StoreUnavailable, Unavailable
from kato_grpc.stores.redis_client import driver_errors
from kato_server.errors import as_kato_error, to_status

TRANSIENT = [
    redis_errors.ConnectionError("refused"),
    redis_errors.TimeoutError("timed out"),
    redis_errors.BusyLoadingError("loading"),
    redis_errors.AuthenticationError("not yet"),
    redis_errors.ClusterDownError("CLUSTERDOWN"),
    redis_errors.MasterDownError("MASTERDOWN"),
    redis_errors.TryAgainError("TRYAGAIN"),
    redis_errors.SlotNotCoveredError("slot 7"),
    redis_errors.ReadOnlyError("READONLY"),
    ConnectionResetError("reset"),
    TimeoutError("socket"),
]
PERMANENT = [
    redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis_errors.OutOfMemoryError("OOM command not allowed"),
    redis_errors.NoPermissionError("NOPERM"),
    redis_errors.DataError("invalid input"),
    redis_errors.RedisClusterException("no node"),
]


def _raising(exc: BaseException) -> object:
    @driver_errors
    async def call() -> None:
        raise exc

    return asyncio.run(call())


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_what_a_retry_may_get_past_is_store_unavailable_and_unavailable_to_clients(exc: Exception) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        _raising(exc)
    assert raised.value.__cause__ is exc  # the driver's exception, for the log
    error = as_kato_error(raised.value)
    assert error is not None
    status = to_status(error)
    assert (status.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_a_refusal_for_good_is_store_failed_and_internal_to_clients(exc: Exception) -> None:
    with pytest.raises(StoreError) as raised:
        _raising(exc)
    assert raised.value.__cause__ is exc
    assert as_kato_error(raised.value) is None  # the guard's "internal error", stack trace in the log


@pytest.mark.parametrize(
    "exc",
    [Unavailable("committed, not replicated", reason="NOT_REPLICATED"), asyncio.CancelledError(), ValueError("bug")],
    ids=lambda e: type(e).__name__,
)
def test_what_is_not_the_drivers_passes_as_it_is(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as raised:
        _raising(exc)
    assert raised.value is exc
