"""Every RPC passes here once, whatever its kind (a server interceptor): its request id, its
access-log line and its metrics.

- **Request id**: the caller's ``x-request-id`` (printable, at most 128 characters) or a new
  one; sent back in the response's trailing metadata, on success and failure alike (an abort
  sets its own trailers: the handler gets a context whose aborts add the id), and bound to
  every log line written for the call. Trailers, not initial metadata: sending initial
  metadata early is one more operation per call, +7 % on Observe (docs/performance.md).
- **Access log**: one line per call when it ends (``event="rpc"``): rpc, code, duration, the
  request id, the node the call touched (``Caller.touched``, bound by the servicer's guard)
  and, for a failure, its reason. Never a session id or a token. Its level says how much it
  matters: health checks and reflection at DEBUG, server-side failures at WARNING, the rest at
  INFO — so ``KATO_LOG_LEVEL`` decides what is written (docs/operations.md).
- **Abandoned calls**: when the client cancels a call, its deadline passes or the server stops,
  grpc cancels the handler's task (no status is set): the line says what happened —
  CANCELLED (the client cancelled, or its connection went), DEADLINE_EXCEEDED (the client's
  deadline passed: its choice, INFO like CANCELLED), UNAVAILABLE (cut by the server's shutdown,
  which is what the client gets: WARNING). DEADLINE_EXCEEDED is at WARNING only when the
  server's own limit (``KATO_MAX_CALL_SECONDS``) cut a call whose client still had time. A
  call whose requests stream in (ImportKnowledgeBase, ObserveStream) sees a client's cancel as
  the end of its requests; when it finishes before grpc cancels it, its line has the outcome
  of what it was sent (grpc tells the server no more).
- **Metrics** (``server/kato_server/metrics.py``), when on: the same code as the line.

A method's wrapped handler is made once and kept (handlers are the same for every call).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import grpc
import structlog
from opentelemetry import trace

from kato_server.metrics import Metrics, RpcMetrics

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 128
# Probes and tools: their calls are logged at DEBUG (a probe every few seconds is noise).
QUIET_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
)
# Failures that are the server's or its stores' (an operator looks at these): WARNING.
SERVER_SIDE = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED"})
log = structlog.get_logger("kato.access")
Ctx = Any  # grpc.aio.ServicerContext, or OpenTelemetry's proxy of it
# How a handler ended: it returned, it raised (an abort sets the status), or grpc cancelled it.
Ending = Literal["ok", "failed", "abandoned"]
# A client's deadline reaches the server as a duration, rounded up on the wire (to 10 ms under
# 10 s, about 1 % beyond) and counted from the request's arrival: the client gives up — its
# cancel reaching the server — a moment before the server's copy of the deadline passes. A
# call that ends with no more than this left of its deadline ended at the client's deadline.
DEADLINE_SLACK_SECONDS = 0.25
DEADLINE_SLACK_SHARE = 0.01


def request_id(context: Ctx) -> str:
    for key, value in context.invocation_metadata() or ():
        valid = isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID and value.isprintable()
        if key == REQUEST_ID_KEY and valid:
            return str(value)
    return uuid.uuid4().hex


class CallInterceptor(grpc.aio.ServerInterceptor):
    """``traced``: the calls run inside OpenTelemetry server spans; their trace id is logged.
    ``stopping``: whether the server is cutting the calls still running (its shutdown)."""

    def __init__(
        self, metrics: Metrics | None = None, traced: bool = False, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self._metrics = metrics
        self._traced = traced
        self._stopping = stopping
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        known = self._handlers.get(details.method)
        if known is not None:
            return known
        handler = await continuation(details)
        if handler is None:  # an unknown method: not kept (clients choose the names)
            return None
        wrapped = self._handlers[details.method] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, rpc = method.lstrip("/").rpartition("/")
        metrics = self._metrics.for_rpc(rpc) if self._metrics else None
        call = _Call(rpc, metrics, service in QUIET_SERVICES, self._traced, self._stopping)

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: Ctx) -> Any:
                started, ending = call.open(context), _FAILED
                try:
                    out = await behavior(request, _Context(context))
                    ending = _OK
                    return out
                except asyncio.CancelledError:
                    ending = _ABANDONED
                    raise
                finally:
                    call.close(context, started, ending)

            return run

        def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: Ctx) -> AsyncIterator[Any]:
                started, ending = call.open(context), _FAILED
                try:
                    async for item in behavior(request, _Context(context)):
                        yield item
                    ending = _OK
                except (asyncio.CancelledError, GeneratorExit):  # cancelled, or closed unfinished
                    ending = _ABANDONED
                    raise
                finally:
                    call.close(context, started, ending)

            return run

        kinds = (
            (handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary),
            (handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary),
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler, streaming),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler, streaming),
        )
        for behavior, make, wrap in kinds:
            if behavior is not None:
                return make(
                    wrap(behavior),  # type: ignore[arg-type]
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


_OK: Ending = "ok"
_FAILED: Ending = "failed"
_ABANDONED: Ending = "abandoned"


class _Call:
    """What is done at the start and the end of every call of one method."""

    def __init__(
        self, rpc: str, metrics: RpcMetrics | None, quiet: bool, traced: bool, stopping: Callable[[], bool]
    ) -> None:
        self.rpc, self.metrics, self.quiet, self.traced, self.stopping = rpc, metrics, quiet, traced, stopping

    def open(self, context: Ctx) -> float:
        rid = request_id(context)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        # grpc.aio runs each call in a task of its own, with a context of its own: what is
        # bound here (and by the guard) is this call's and goes with it.
        structlog.contextvars.bind_contextvars(rpc=self.rpc, request_id=rid)
        if self.traced:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                structlog.contextvars.bind_contextvars(trace_id=format(span.trace_id, "032x"))
        if self.metrics is not None:
            self.metrics.started()
        return time.perf_counter()

    def close(self, context: Ctx, started: float, ending: Ending) -> None:
        seconds = time.perf_counter() - started
        remaining = context.time_remaining()  # None: the call had no deadline
        deadline_passed = remaining is not None and remaining <= (
            DEADLINE_SLACK_SECONDS + DEADLINE_SLACK_SHARE * (remaining + seconds)
        )
        status = context.code()
        if isinstance(status, grpc.StatusCode) and status != grpc.StatusCode.OK:
            code = status.name
        elif ending == _ABANDONED:  # grpc cancelled the handler: no status was set
            code = "DEADLINE_EXCEEDED" if deadline_passed else "UNAVAILABLE" if self.stopping() else "CANCELLED"
        else:
            code = "UNKNOWN" if ending == _FAILED else "OK"
        if self.metrics is not None:
            self.metrics.ended(code, seconds)
        if self.quiet:
            level = logging.DEBUG
        elif code in SERVER_SIDE and not (code == "DEADLINE_EXCEEDED" and deadline_passed):
            level = logging.WARNING
        else:  # the client's own deadline passing is its choice, like a cancel
            level = logging.INFO
        log.log(level, "rpc", code=code, duration_ms=round(seconds * 1000, 3))


class _Context:
    """The call's context for the handler, whose aborts keep the request-id trailer (an abort
    replaces the trailing metadata with the status's own)."""

    __slots__ = ("_context",)

    def __init__(self, context: Ctx) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        kept = tuple(self._context.trailing_metadata() or ())
        await self._context.abort(code, details, tuple(trailing_metadata) + kept)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)
