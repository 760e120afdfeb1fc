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

# A scenario returns False when its call never reached the handler (nothing to check).
Scenario = Callable[[grpc.aio.Channel, asyncio.Event, grpc.aio.Server], Awaitable[bool | None]]


async def _run(
    scenario: Scenario, *, limit: bool = False, stopping: bool = False
) -> tuple[MutableMapping[str, Any], Metrics] | None:
    """Serve ``/t.Slow/Wait`` (it waits until grpc ends the call, or with ``limit`` aborts
    DEADLINE_EXCEEDED at once, as the server's own call limit does), run ``scenario``, and
    return the call's access line and the metrics (None: the call never reached the handler)."""
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
                if await scenario(channel, entered, server) is False:
                    return None
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


def _deadline(seconds: float) -> Scenario:
    async def scenario(channel: grpc.aio.Channel, entered: asyncio.Event, _server: grpc.aio.Server) -> bool:
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await _wait(channel)(b"", timeout=seconds)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return entered.is_set()  # False: the deadline passed before the server was inside the call

    return scenario


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


def _ran(
    scenario: Scenario, *, limit: bool = False, stopping: bool = False
) -> tuple[MutableMapping[str, Any], Metrics]:
    ran = asyncio.run(_run(scenario, limit=limit, stopping=stopping))
    assert ran is not None, "the call reached the handler"
    return ran


def test_a_call_its_client_cancels_is_cancelled_at_info() -> None:
    line, metrics = _ran(_cancelled)
    assert (line["code"], line["log_level"]) == ("CANCELLED", "info")
    assert _count(metrics, "CANCELLED") == 1 and _count(metrics, "UNKNOWN") == 0


def test_a_call_whose_client_deadline_passes_is_deadline_exceeded_at_info() -> None:
    # The deadline must pass while the server is inside the call: a machine too slow to get
    # the call there within it gets a new server and twice the deadline, until one does (the
    # last deadline only bounds a hang). What is checked is that call's line.
    for seconds in (1, 2, 4, 8, 16, 32, 64):
        ran = asyncio.run(_run(_deadline(seconds)))
        if ran is not None:
            break
    assert ran is not None, "a call reached the handler before its deadline"
    line, metrics = ran
    assert (line["code"], line["log_level"]) == ("DEADLINE_EXCEEDED", "info")
    assert _count(metrics, "DEADLINE_EXCEEDED") == 1 and _count(metrics, "UNKNOWN") == 0


def test_a_call_the_servers_own_limit_cut_is_deadline_exceeded_at_warning() -> None:
    # The client had a minute left: the server's KATO_MAX_CALL_SECONDS ended it, an operator's concern.
    line, metrics = _ran(_long_deadline, limit=True)
    assert (line["code"], line["log_level"]) == ("DEADLINE_EXCEEDED", "warning")
    assert _count(metrics, "DEADLINE_EXCEEDED") == 1


def test_a_call_the_servers_shutdown_cut_is_unavailable_at_warning() -> None:
    line, metrics = _ran(_server_stops, stopping=True)
    assert (line["code"], line["log_level"]) == ("UNAVAILABLE", "warning")
    assert _count(metrics, "UNAVAILABLE") == 1 and _count(metrics, "UNKNOWN") == 0
