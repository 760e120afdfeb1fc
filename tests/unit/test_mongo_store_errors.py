"""The MongoDB store's driver errors leave it as the project's own exceptions, which the
server maps to the gRPC codes clients saw when the server mapped the driver's itself:
WRITE_CONFLICT is ABORTED, an outage UNAVAILABLE, anything else INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from bson.errors import InvalidDocument
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, ServerSelectionTimeoutError

from kato_grpc.errors import Aborted, StoreError, StoreRefused, StoreUnavailable
from kato_grpc.stores.mongo_errors import described, is_permanent, mapped, mapped_iter, store_error
from kato_server.errors import as_kato_error, to_status


def _labelled(label: str) -> OperationFailure:
    exc = OperationFailure("lost", code=251)
    exc._add_error_label(label)
    return exc


@pytest.mark.parametrize(
    ("driver", "mapped_to", "code", "reason"),
    [
        (OperationFailure("conflict", code=112), Aborted, grpc.StatusCode.ABORTED, "WRITE_CONFLICT"),
        (AutoReconnect("gone"), StoreUnavailable, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
        (ServerSelectionTimeoutError("none"), StoreUnavailable, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
        (
            OperationFailure("stepping down", code=189),
            StoreUnavailable,
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
        ),
        (_labelled("TransientTransactionError"), StoreUnavailable, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
    ],
)
def test_driver_errors_clients_see_keep_their_codes(
    driver: Exception, mapped_to: type[Exception], code: grpc.StatusCode, reason: str
) -> None:
    error = store_error(driver)
    assert type(error) is mapped_to and not is_permanent(error)
    kato = as_kato_error(error)
    assert kato is not None and (kato.code, kato.reason) == (code.name, reason)
    assert to_status(kato).code == code


def test_refusals_are_permanent_internal_errors_that_keep_the_drivers_codes() -> None:
    for driver in (OperationFailure("overflow", code=2), InvalidDocument("too large"), OverflowError("int")):
        error = store_error(driver)
        assert isinstance(error, StoreRefused) and is_permanent(error)
        assert as_kato_error(error) is None  # INTERNAL, as any unexpected failure
    # A field name MongoDB cannot store, in one write of a bulk write: refused for good (the
    # applier keeps the write as a dead letter instead of failing every call of its session).
    empty = BulkWriteError({"writeErrors": [{"index": 0, "code": 56, "errmsg": "empty field name"}]})
    assert isinstance(store_error(empty), StoreRefused) and is_permanent(store_error(empty))
    refused = store_error(OperationFailure("overflow", code=2))
    assert isinstance(refused, StoreRefused) and refused.codes == {2}
    other = store_error(OperationFailure("odd", code=4242))
    assert type(other) is StoreError and not is_permanent(other) and as_kato_error(other) is None


def test_mapped_methods_and_cursors_raise_the_projects_exceptions_from_the_drivers() -> None:
    async def failing() -> int:
        raise AutoReconnect("gone")

    async def cursor() -> AsyncIterator[int]:
        yield 1
        raise OperationFailure("overflow", code=2)

    async def run() -> None:
        with pytest.raises(StoreUnavailable) as down:
            await mapped(failing)()
        assert isinstance(down.value.__cause__, AutoReconnect)
        seen = []
        with pytest.raises(StoreRefused) as refused:
            async for item in mapped_iter(cursor()):
                seen.append(item)
        assert seen == [1]
        assert described(refused.value) == "OperationFailure: overflow"  # a dead letter names the driver's

    asyncio.run(run())
