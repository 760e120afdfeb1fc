"""The access line and metric of a call that does not end by itself (issue 21, item 11): a real
grpc.aio server with the call interceptor (``server/kato_server/calls.py``) and a handler that waits until
grpc ends the call — the client cancels it, its deadline passes, or the server stops. Each is
logged with what happened (CANCELLED, DEADLINE_EXCEEDED at INFO: the client chose them;
UNAVAILABLE at WARNING when the server's shutdown cut it), never UNKNOWN, and counted so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import grpc
import pytest
from structlog.testing import capture_logs

from kato_server.calls import CallInterceptor
from kato_server.metrics import Metrics

Scenario = Callable[[grpc.aio.Channel, asyncio.Event, grpc.aio.Server], Awaitable[None]]


async def _run(
    scenario: Scenario, *, limit: bool = False, stopping: bool = False
) -> tuple[MutableMapping[str, Any], Metrics]:
    """Serve ``/t.Slow/Wait`` (it waits until grpc ends the call, or with ``limit`` aborts
    DEADLINE_EXCEEDED at once, as the server's own call limit does), run ``scenario``, and
    return the call's access line and the metrics."""
    metrics = Metrics()
    entered = asyncio.Event()

    async def wait(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        entered.set()
        if limit:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the server's call limit")
        await asyncio.Event().wait()  # until grpc cancels this task
        return b""

    server = grpc.aio.server(interceptors=[CallInterceptor(metrics, stopping=lambda: stopping)])
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Slow", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with capture_logs() as logs:
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(channel, entered, server)
                for _ in range(3000):  # polled: the handler's end runs on the server's side of the call
                    if [x for x in logs if x["event"] == "rpc"]:
                        break
                    await asyncio.sleep(0.01)
        finally:
            await server.stop(0)
    lines = [x for x in logs if x["event"] == "rpc"]
    assert len(lines) == 1, lines
    return lines[0], metrics


def _wait(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return cast(grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], channel.unary_unary("/t.Slow/Wait"))


def _count(metrics: Metrics, code: str) -> float:
    return metrics.registry.get_sample_value("kato_rpc_requests_total", {"rpc": "Wait", "code": code}) or 0.0


async def _cancelled(channel: grpc.aio.Channel, entered: asyncio.Event, _server: grpc.aio.Server) -> None:
    call = _wait(channel)(b"")
    await entered.wait()  # the server is inside the call
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def _deadline(channel: grpc.aio.Channel, entered: asyncio.Event, _server: grpc.aio.Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await _wait(channel)(b"", timeout=1.0)
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and entered.is_set()


async def _long_deadline(channel: grpc.aio.Channel, entered: asyncio.Event, _server: grpc.aio.Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await _wait(channel)(b"", timeout=60.0)
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def _server_stops(channel: grpc.aio.Channel, entered: asyncio.Event, server: grpc.aio.Server) -> None:
    call = _wait(channel)(b"", timeout=60.0)
    await entered.wait()
    await server.stop(0)  # no grace: the call is cut
    with pytest.raises(grpc.aio.AioRpcError):
        await call


def test_a_call_its_client_cancels_is_cancelled_at_info() -> None:
    line, metrics = asyncio.run(_run(_cancelled))
    assert (line["code"], line["log_level"]) == ("CANCELLED", "info")
    assert _count(metrics, "CANCELLED") == 1 and _count(metrics, "UNKNOWN") == 0


def test_a_call_whose_client_deadline_passes_is_deadline_exceeded_at_info() -> None:
    line, metrics = asyncio.run(_run(_deadline))
    assert (line["code"], line["log_level"]) == ("DEADLINE_EXCEEDED", "info")
    assert _count(metrics, "DEADLINE_EXCEEDED") == 1 and _count(metrics, "UNKNOWN") == 0


def test_a_call_the_servers_own_limit_cut_is_deadline_exceeded_at_warning() -> None:
    # The client had a minute left: the server's KATO_MAX_CALL_SECONDS ended it, an operator's concern.
    line, metrics = asyncio.run(_run(_long_deadline, limit=True))
    assert (line["code"], line["log_level"]) == ("DEADLINE_EXCEEDED", "warning")
    assert _count(metrics, "DEADLINE_EXCEEDED") == 1


def test_a_call_the_servers_shutdown_cut_is_unavailable_at_warning() -> None:
    line, metrics = asyncio.run(_run(_server_stops, stopping=True))
    assert (line["code"], line["log_level"]) == ("UNAVAILABLE", "warning")
    assert _count(metrics, "UNAVAILABLE") == 1 and _count(metrics, "UNKNOWN") == 0
