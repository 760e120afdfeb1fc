"""Prometheus metrics (``KATO_METRICS_PORT``; off when unset): every RPC by name and status
code, its latency and the calls in flight (counted by the call interceptor, ``server/kato_server/calls.py``,
so streams, health and reflection count too); store calls by operation
(``server/kato_server/instrumented_stores.py``); the shell's events (``kato_grpc/telemetry.py``) — CAS conflicts, outbox
applies and pending writes, KB cache lookups, evictions and sizes, engine computations stopped
early, sessions — plus the process
collectors.

Each process has its own registry and port: worker ``i`` of ``KATO_WORKERS`` serves
``KATO_METRICS_PORT + i`` (docs/operations.md), so no multiprocess files are shared.
"""

from __future__ import annotations

from collections.abc import Callable

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
        self.session_lookups = Counter(
            "kato_session_cache_lookups",
            "Session-changing calls by what this process's copy of the session did for them",
            ["result"],
            registry=r,
        )
        self.outbox = Counter("kato_outbox_writes", "Outbox writes applied, by result", ["result"], registry=r)
        self.outboxes = Counter("kato_outbox_applies", "Outboxes applied to the pattern store", registry=r)
        self.kb_lookups = Counter("kato_kb_cache_lookups", "KB cache lookups, by result", ["result"], registry=r)
        self.kb_evictions = Counter("kato_kb_cache_evictions", "KBs evicted from the cache", registry=r)
        self.kb_patterns = Gauge("kato_kb_cache_patterns", "Patterns of a cached KB", ["knowledge_base"], registry=r)
        self.kb_bytes = Gauge(
            "kato_kb_cache_estimated_bytes",
            "Memory of a cached KB, estimated from its patterns and symbols (what KATO_KB_CACHE_MAX_MB counts)",
            ["knowledge_base"],
            registry=r,
        )
        self.kb_loads = Counter("kato_kb_cache_loads", "KBs the cache read whole, by source", ["source"], registry=r)
        self.kb_load_seconds = Histogram(
            "kato_kb_cache_load_duration_seconds",
            "Reading a KB whole into the cache, by source",
            ["source"],
            buckets=BUCKETS,
            registry=r,
        )
        self.kb_snapshots = Counter(
            "kato_kb_snapshots", "KB snapshots this process set out to write, by result", ["result"], registry=r
        )
        self.kb_snapshot_seconds = Histogram(
            "kato_kb_snapshot_duration_seconds", "Encoding and storing a KB snapshot", buckets=BUCKETS, registry=r
        )
        self.pending = Gauge("kato_outbox_pending_writes", "Pattern writes being applied by this process", registry=r)
        self.store_latency = Histogram(
            "kato_store_duration_seconds",
            "Store calls, by store and operation",
            ["store", "operation"],
            buckets=BUCKETS,
            registry=r,
        )
        self.sessions = Counter("kato_sessions", "Sessions created and deleted", ["event"], registry=r)
        self.predictions = Counter(
            "kato_predictions_served",
            "GetPredictions answers: stored (the last observation's, still current) or computed",
            ["source"],
            registry=r,
        )
        self.engine_stops = Counter(
            "kato_engine_stopped", "Engine computations stopped early because their call gave up", registry=r
        )
        # Label children looked up once (a lookup per call is a lock and a dict).
        self._kb_hits = self.kb_lookups.labels("hit")
        self._session_results = {result: self.session_lookups.labels(result) for result in ("hit", "stale", "miss")}
        self._predictions = {source: self.predictions.labels(source) for source in ("stored", "computed")}

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)

    # --- kato_grpc.events.Telemetry -----------------------------------------------------------

    def cas_conflict(self) -> None:
        self.conflicts.inc()

    def cas_exhausted(self) -> None:
        self.exhausted.inc()

    def session_cache(self, result: str) -> None:
        self._session_results[result].inc()

    def outbox_applied(self, writes: int, refused: int) -> None:
        self.outboxes.inc()
        self.outbox.labels("applied").inc(writes - refused)
        if refused:
            self.outbox.labels("refused").inc(refused)

    def kb_lookup(self, kb_id: str, result: str, patterns: int, estimated_bytes: int) -> None:
        if result == "hit":  # the common case: nothing else changed
            self._kb_hits.inc()
            return
        self.kb_lookups.labels(result).inc()
        self.kb_patterns.labels(kb_id).set(patterns)
        self.kb_bytes.labels(kb_id).set(estimated_bytes)

    def kb_evicted(self, kb_id: str) -> None:
        self.kb_evictions.inc()
        self.kb_patterns.remove(kb_id)
        self.kb_bytes.remove(kb_id)

    def kb_loaded(self, kb_id: str, source: str, seconds: float) -> None:
        self.kb_loads.labels(source).inc()
        self.kb_load_seconds.labels(source).observe(seconds)

    def kb_snapshot(self, kb_id: str, result: str, seconds: float) -> None:
        self.kb_snapshots.labels(result).inc()
        if result == "written":
            self.kb_snapshot_seconds.observe(seconds)

    def engine_stopped(self) -> None:
        self.engine_stops.inc()

    def predictions_served(self, source: str) -> None:
        self._predictions[source].inc()

    def session_created(self) -> None:
        self.sessions.labels("created").inc()

    def session_deleted(self) -> None:
        self.sessions.labels("deleted").inc()

    # --- wiring -----------------------------------------------------------------------------

    def track_pending(self, writes: Callable[[], int]) -> None:
        """Read the process's pending outbox writes at each scrape."""
        self.pending.set_function(writes)

    def for_rpc(self, rpc: str) -> RpcMetrics:
        return RpcMetrics(self, rpc)


class RpcMetrics:
    """One RPC's series, looked up once per method (a label lookup is a lock and a dict)."""

    def __init__(self, m: Metrics, rpc: str) -> None:
        self._m, self._rpc = m, rpc
        self._latency, self._ok = m.latency.labels(rpc), m.rpcs.labels(rpc, "OK")

    def started(self) -> None:
        self._m.in_flight.inc()

    def ended(self, code: str, seconds: float) -> None:
        (self._ok if code == "OK" else self._m.rpcs.labels(self._rpc, code)).inc()
        self._latency.observe(seconds)
        self._m.in_flight.dec()
