"""Prometheus metrics (``KATO_METRICS_PORT``; off when unset): every RPC by name and status
code, its latency and the calls in flight (a server interceptor, so streams, health and
reflection count too), and the shell's events (``kato_grpc/events.py``) — CAS conflicts,
outbox applies, KB cache lookups and evictions, sessions — plus the process collectors.

Each process has its own registry and port: worker ``i`` of ``KATO_WORKERS`` serves
``KATO_METRICS_PORT + i`` (docs/operations.md), so no multiprocess files are shared.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
    start_http_server,
)

# 0.5 ms .. 30 s: a health check to a large export's batch.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)
        self.rpcs = Counter(
            "kato_rpc_requests", "RPCs answered, by method and status code", ["rpc", "code"], registry=r
        )
        self.latency = Histogram("kato_rpc_duration_seconds", "RPC duration", ["rpc"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("kato_rpc_in_flight", "RPCs being served", registry=r)
        self.conflicts = Counter("kato_cas_conflicts", "Compare-and-sets lost to a concurrent change", registry=r)
        self.exhausted = Counter("kato_cas_exhausted", "Calls ABORTED after KATO_CAS_RETRIES conflicts", registry=r)
        self.outbox = Counter("kato_outbox_writes", "Outbox writes applied, by result", ["result"], registry=r)
        self.outboxes = Counter("kato_outbox_applies", "Outboxes applied to the pattern store", registry=r)
        self.kb_lookups = Counter("kato_kb_cache_lookups", "KB cache lookups, by result", ["result"], registry=r)
        self.kb_evictions = Counter("kato_kb_cache_evictions", "KBs evicted from the cache", registry=r)
        self.kb_patterns = Gauge("kato_kb_cache_patterns", "Patterns of a cached KB", ["knowledge_base"], registry=r)
        self.sessions = Counter("kato_sessions", "Sessions created and deleted", ["event"], registry=r)
        # Label children looked up once (a lookup per call is a lock and a dict).
        self._kb_hits = self.kb_lookups.labels("hit")

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)

    # --- kato_grpc.events.Events -----------------------------------------------------------

    def cas_conflict(self) -> None:
        self.conflicts.inc()

    def cas_exhausted(self) -> None:
        self.exhausted.inc()

    def outbox_applied(self, writes: int, refused: int) -> None:
        self.outboxes.inc()
        self.outbox.labels("applied").inc(writes - refused)
        if refused:
            self.outbox.labels("refused").inc(refused)

    def kb_lookup(self, kb_id: str, result: str, patterns: int) -> None:
        if result == "hit":  # the common case: nothing else changed
            self._kb_hits.inc()
            return
        self.kb_lookups.labels(result).inc()
        self.kb_patterns.labels(kb_id).set(patterns)

    def kb_evicted(self, kb_id: str) -> None:
        self.kb_evictions.inc()
        self.kb_patterns.remove(kb_id)

    def session_created(self) -> None:
        self.sessions.labels("created").inc()

    def session_deleted(self) -> None:
        self.sessions.labels("deleted").inc()

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self)


class _Interceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC once, at its end, with the status code it ended with. A method's
    wrapped handler is made once and kept (handlers are the same for every call of it)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
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
        wrapped = self._handlers[details.method] = self._wrap(details.method.rpartition("/")[2], handler)
        return wrapped

    def _wrap(self, rpc: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        m = self.m
        latency, ok = m.latency.labels(rpc), m.rpcs.labels(rpc, "OK")

        def done(started: float, context: Any, failed: bool) -> None:
            code = context.code()
            if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
                m.rpcs.labels(rpc, code.name).inc()
            elif failed:
                m.rpcs.labels(rpc, "UNKNOWN").inc()
            else:
                ok.inc()
            latency.observe(time.perf_counter() - started)
            m.in_flight.dec()

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: Any) -> Any:
                started, failed = time.perf_counter(), True
                m.in_flight.inc()
                try:
                    out = await behavior(request, context)
                    failed = False
                    return out
                finally:
                    done(started, context, failed)

            return run

        def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: Any) -> AsyncIterator[Any]:
                started, failed = time.perf_counter(), True
                m.in_flight.inc()
                try:
                    async for item in behavior(request, context):
                        yield item
                    failed = False
                finally:
                    done(started, context, failed)

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
