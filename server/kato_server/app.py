"""Server lifecycle: stores, grpc.aio server, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from pymongo import AsyncMongoClient

from kato_grpc.settings import Settings
from kato_grpc.stores import redis_client
from kato_grpc.stores.keys import Keys
from kato_grpc.stores.mongo_docs import Doc
from kato_grpc.stores.mongo_store import MongoStores
from kato_grpc.stores.protocols import PatternStore, RecordLimits, SessionBackend, TransactionLeases
from kato_grpc.stores.redis_sessions import RedisSessionStore, Replication
from kato_grpc.stores.transaction_owners import TransactionOwners
from kato_grpc.telemetry import NO_TELEMETRY
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import reflection, tracing, validation
from kato_server.assembly import PatternStores, assemble
from kato_server.calls import CallInterceptor
from kato_server.handlers import add_service
from kato_server.instrumented_stores import observed
from kato_server.metrics import Metrics
from kato_server.reaper import TransactionReaper

S = TypeVar("S")
log = structlog.get_logger("kato.server")
# How often the GIL passes between threads (Python's default: 5 ms). The event loop shares
# the GIL with the engine threads; a shorter slice lets it answer health checks and short
# calls within a few ms while a long prediction computes (docs/performance.md).
GIL_SWITCH_SECONDS = 0.001
SERVICE_NAME = svc.DESCRIPTOR.services_by_name["KatoService"].full_name
# A health name that is SERVING while the process answers at all (a liveness probe): ""
# and SERVICE_NAME follow the stores (readiness), and a store outage must not restart pods.
LIVENESS = "liveness"


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The channel arguments of the server: message sizes, port sharing between workers,
    connection age (so load spreads over replicas) and keepalive."""
    ms = 1000
    options = [
        # The largest any method takes; each method's own limit is checked as it decodes.
        ("grpc.max_receive_message_length", validation.message_limit(settings)),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 1),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * ms)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * ms)),
        # Clients may ping as often as the server does (grpc's default would GOAWAY them).
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.keepalive_time_seconds * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_seconds:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * ms)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * ms)),
        ]
    return options


class StartupRefused(Exception):
    """The server must not serve with these settings and stores (one line for the operator)."""


class KatoServer:
    """One serving process: call ``start()``, then ``wait()``; ``stop()`` drains gracefully."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        mongodb_uri: str,
        wrap_pattern_store: Callable[[PatternStore], PatternStore] | None = None,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``wrap_pattern_store`` wraps the store the transaction runner applies writes
        through (fault injection in tests); reads and administration use the stores themselves.
        ``metrics``: counted for Prometheus when given (``server/kato_server/metrics.py``);
        ``tracer_provider``: calls and store calls traced when given (``server/kato_server/tracing.py``)."""
        self.settings = settings
        self.tracer_provider = tracer_provider
        telemetry = metrics if metrics is not None else NO_TELEMETRY
        store_tracer = tracing.tracer(tracer_provider) if tracer_provider is not None else None
        timeout = settings.store_timeout_seconds
        self._redis = redis_client.connect(redis_url, timeout)
        self._mongo: AsyncMongoClient[Doc] = AsyncMongoClient(
            mongodb_uri,
            serverSelectionTimeoutMS=int(timeout * 1000),
            connectTimeoutMS=int(timeout * 1000),
            socketTimeoutMS=int(timeout * 1000) * 2,
        )
        keys = Keys(settings.namespace)
        # The one place that names the concrete stores: every other module takes the narrow
        # Protocols of kato_grpc/stores/protocols.py (architecture.md §4).
        self.sessions: SessionBackend = observed(
            RedisSessionStore(
                self._redis,
                RecordLimits(settings.max_request_records, settings.max_request_record_bytes),
                Replication(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
                keys,
            ),
            "redis",
            metrics,
            store_tracer,
        )
        self.owners: TransactionLeases = TransactionOwners(self._redis, keys, settings.transaction_lease_seconds)
        # The pattern side: one object per concern on one client, each use case given the
        # Protocols it uses (kato_grpc/stores/protocols.py), each observed on its own.
        self.mongo = MongoStores(self._mongo, settings.mongodb_database, self.owners.register)

        def mongo(store: S) -> S:
            return observed(store, "mongodb", metrics, store_tracer)

        self.patterns = mongo(self.mongo.learns)
        self.deployment = mongo(self.mongo.deployment)
        self.reaper = TransactionReaper(self.owners, mongo(self.mongo.sessions), settings.transaction_lease_seconds / 3)
        # Everything between the gRPC server and the stores, built from their Protocols
        # alone (assembly.py; the in-process tests build the same over the twins).
        service = assemble(
            settings,
            self.sessions,
            PatternStores(
                learns=wrap_pattern_store(self.patterns) if wrap_pattern_store is not None else self.patterns,
                reads=mongo(self.mongo.reads),
                patterns=mongo(self.mongo.patterns),
                admin=mongo(self.mongo.admin),
                transfer=mongo(self.mongo.transfer),
                events=mongo(self.mongo.events),
                snapshots=mongo(self.mongo.snapshots),
            ),
            telemetry,
        )
        self.runner, self.cache, self.snapshotter = service.runner, service.cache, service.snapshotter
        self.engine, self.servicer, self.relay = service.engine, service.servicer, service.relay
        if metrics is not None:
            metrics.track_pending(lambda: self.runner.applier.pending_writes)
        self.health = health.aio.HealthServicer()
        # The trace's span outermost, so the request id, access line and metrics are inside it.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracer_provider is not None:
            interceptors.append(tracing.server_interceptor(tracer_provider))
        # Calls still running when the grace ends are cut by the server: logged UNAVAILABLE.
        self._cutting = False
        interceptors.append(
            CallInterceptor(metrics, traced=tracer_provider is not None, stopping=lambda: self._cutting)
        )
        self.server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
        self._serving: bool | None = None
        self.port = 0
        self._stopping = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        if self.settings.gil_switch_interval:
            sys.setswitchinterval(GIL_SWITCH_SECONDS)
        await self._prepare_stores()
        # First: a restart ends what the process it replaces left open in MongoDB (once its
        # lease expired), before this one's calls and relay wait on it.
        self._reaper_task = asyncio.create_task(self.reaper.run(self._stopping))
        add_service(self.servicer, self.server, lambda method: validation.message_limit(self.settings, method))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        address = f"{self.settings.host}:{self.settings.port}"
        s = self.settings
        if s.tls_cert_file and s.tls_key_file:
            credentials = grpc.ssl_server_credentials(
                [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
                root_certificates=s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None,
                require_client_auth=s.tls_client_ca_file is not None,
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        # grpc's health servicer says SERVING for "" until told otherwise: not before the
        # stores answer and the preloaded KBs are cached.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._preload()  # readiness waits for it
        await self._check_health()
        self._health_task = asyncio.create_task(self._health_loop())
        self._relay_task = asyncio.create_task(self.relay.run(self._stopping))
        if self.snapshotter is not None:  # KBs left without the snapshot due to them (§4)
            self._sweep_task = asyncio.create_task(self.snapshotter.run(self._stopping))
        log.info("serving", host=self.settings.host, port=self.port)
        return self.port

    async def _prepare_stores(self) -> None:
        """Indexes, and the Redis namespace bound to this database. The stores may still be
        starting (make run starts them beside us): a little wait for them."""
        for attempt in range(30):
            try:
                await self.deployment.ensure_indexes()
                await self._claim_namespace()
                return
            except StartupRefused:
                raise
            except Exception:
                if attempt == 29:
                    raise
                await asyncio.sleep(0.5)

    async def _claim_namespace(self) -> None:
        """One Redis namespace per MongoDB database: the relay applies every outbox of its
        namespace into its own database, so a namespace shared by two databases would move
        one deployment's learns into the other's (docs/operations.md, "Sharing one Redis")."""
        deployment = await self.deployment.deployment_id()
        recorded = await self.sessions.claim_namespace(deployment)
        if recorded != deployment:
            raise StartupRefused(
                f"the Redis namespace {self.settings.namespace!r} belongs to another deployment (MongoDB "
                f"deployment id {recorded}; this database's is {deployment}): set KATO_REDIS_NAMESPACE to a "
                "namespace of its own"
            )

    async def _preload(self) -> None:
        for kb_id in self.settings.preload_nodes:
            started = asyncio.get_running_loop().time()
            index = await self.cache.view(kb_id, await self.sessions.kb_version(kb_id))
            seconds = round(asyncio.get_running_loop().time() - started, 3)
            log.info("preloaded", node_id=kb_id, patterns=len(index), seconds=seconds)

    async def _store_down(self) -> str:
        """The first store that does not answer a ping in time, or "" (both are up)."""
        for name, store in (("redis", self.sessions), ("mongodb", self.deployment)):
            try:
                async with asyncio.timeout(self.settings.store_timeout_seconds):
                    await store.ping()
            except Exception as exc:
                return f"{name}: {type(exc).__name__}"
        return ""

    async def _check_health(self) -> None:
        down = "stopping" if self._stopping.is_set() else await self._store_down()
        serving = not down
        if serving != self._serving:  # log changes only, not every check
            if serving:
                log.info("health", status="SERVING")
            else:
                log.warning("health", status="NOT_SERVING", cause=down)
            self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _health_loop(self) -> None:
        while not self._stopping.is_set():
            await self._check_health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.health_interval_seconds)

    async def stop(self) -> None:
        """NOT_SERVING first, then refuse new calls and let in-flight ones finish (grace)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        log.info("health", status="NOT_SERVING", cause="stopping")
        self._serving = False
        log.info("stopping", grace_seconds=self.settings.grace_seconds)
        started = asyncio.get_running_loop().time()
        await self.servicer.drain(self.settings.grace_seconds)
        left = self.settings.grace_seconds - (asyncio.get_running_loop().time() - started)
        self.engine.cancel_all()  # whatever still computes past the grace period stops now
        self._cutting = True
        await self.server.stop(max(left, 0.1))
        await self.runner.applier.drain(max(left, 0.1))
        for task in (self._health_task, self._relay_task, self._reaper_task, self._sweep_task):
            if task is not None:
                await task
        with contextlib.suppress(Exception):  # nothing of this process is left open in MongoDB
            await self.owners.leave()
        self.engine.close()
        if self.snapshotter is not None:
            await self.snapshotter.close()  # a snapshot cut short is never read (no header)
        await self.sessions.close()
        await self.mongo.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # exports what is still buffered

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def serve(
    settings: Settings,
    redis_url: str,
    mongodb_uri: str,
    wrap_pattern_store: Callable[[PatternStore], PatternStore] | None = None,
    worker: int = 0,
) -> None:
    """Serve until SIGTERM or SIGINT; worker ``worker`` of ``KATO_WORKERS`` serves its metrics
    on ``KATO_METRICS_PORT + worker``."""
    metrics = None
    if settings.metrics_port is not None:
        metrics = Metrics()
        metrics.serve(settings.metrics_port + worker)
    provider = tracing.provider_from_env(os.environ)
    server = KatoServer(settings, redis_url, mongodb_uri, wrap_pattern_store, metrics, provider)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
