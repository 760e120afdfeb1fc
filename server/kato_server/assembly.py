"""The service assembled from its stores' Protocols (architecture.md §4, "Assembly").

``assemble`` builds everything a serving process runs between the gRPC server and the stores —
the transaction runner, the KB cache and its snapshotter, the engine threads, the use cases
behind the servicer, and the outbox relay — from a session backend and the pattern side's
Protocols, and nothing else. It names no concrete store: the composition root
(``app.KatoServer``) builds the Redis and MongoDB stores from the settings, wraps them
(instrumentation, the tests' fault injection) and calls it; the in-process tests
(``tests/usecases/``) call it with the in-memory twins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kato_grpc.runner import Policy, TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.protocols import (
    KbEventLog,
    KbReads,
    KbSnapshots,
    KbTransferStore,
    KbWrites,
    PatternReads,
    PatternStore,
    SessionBackend,
)
from kato_grpc.stores.snapshotter import Snapshotter
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry
from kato_server import kb_cache_setup
from kato_server.engine_threads import EngineThreads
from kato_server.kb_admin import KbAdmin
from kato_server.kb_stats import KbStats
from kato_server.kb_transfer import KbTransfer
from kato_server.kb_watch import KbWatch
from kato_server.observing import Observing
from kato_server.relay import OutboxRelay
from kato_server.servicer import KatoServicer
from kato_server.sessions import Sessions


@dataclass(frozen=True, slots=True)
class PatternStores:
    """The pattern side as the service uses it, one Protocol per concern (architecture.md §4):
    MongoDB's classes (``mongo_store.MongoStores``), or one ``memory.InMemoryPatternStore`` in
    every field."""

    learns: PatternStore  # the runner's and the relay's applies
    reads: KbReads  # the KB cache
    patterns: PatternReads  # GetPattern, ListPatterns, ListKnowledgeBases
    admin: KbWrites  # UpdatePattern, DeletePattern, ClearKnowledgeBase
    transfer: KbTransferStore  # ExportKnowledgeBase, ImportKnowledgeBase
    events: KbEventLog  # WatchKnowledgeBase
    snapshots: KbSnapshots  # the KB cache's snapshotter


@dataclass(frozen=True, slots=True)
class Service:
    """What ``assemble`` built. The process that runs it starts ``relay.run`` and
    ``snapshotter.run`` (the sweep), and at shutdown drains the servicer and the runner's
    applier, then closes ``engine`` and ``snapshotter`` (``app.KatoServer.stop``)."""

    runner: TransactionRunner
    cache: KbCache
    snapshotter: Snapshotter | None
    engine: EngineThreads
    servicer: KatoServicer
    relay: OutboxRelay


def runner_policy(settings: Settings) -> Policy:
    return Policy(
        cas_retries=settings.cas_retries,
        backoff_max_seconds=settings.cas_backoff_max_seconds,
        default_ttl_seconds=settings.session_ttl_seconds,
        max_session_bytes=settings.max_session_bytes,
        ack_after_commit=settings.learn_ack == "committed",
        session_cache_bytes=settings.session_cache_mb * 1024 * 1024,
    )


def assemble(
    settings: Settings,
    sessions: SessionBackend,
    patterns: PatternStores,
    telemetry: Telemetry = NO_TELEMETRY,
    clock: Callable[[], float] = time.monotonic,
) -> Service:
    """The service over these stores, as ``settings`` configure it; ``telemetry`` hears what
    the runner, the KB cache, the engine threads and the session use cases report; ``clock``
    (seconds) times the KB cache's checks of MongoDB (the in-process tests give it theirs)."""
    cache, snapshotter = kb_cache_setup.kb_cache(settings, patterns.reads, patterns.snapshots, telemetry, clock)
    # Every write of this process — learns (the relay's too), imports, pattern updates and
    # deletes — tells the snapshotter, so a KB nobody reads still gets its snapshot (§4).
    written = snapshotter.wrote if snapshotter is not None else None
    engine = EngineThreads(settings.engine_threads, settings.max_prediction_work, telemetry.engine_stopped)
    runner = TransactionRunner(sessions, patterns.learns, runner_policy(settings), telemetry=telemetry, written=written)
    servicer = KatoServicer(
        settings,
        Sessions(
            settings,
            sessions=sessions,
            deletion=sessions,
            records=sessions,
            runner=runner,
            telemetry=telemetry,
        ),
        Observing(settings, sessions, cache, engine, runner),
        KbAdmin(
            settings,
            versions=sessions,
            records=sessions,
            patterns=patterns.patterns,
            writes=patterns.admin,
            runner=runner,
            written=written,
        ),
        KbStats(sessions, cache, engine, patterns.patterns),
        KbTransfer(settings, sessions, patterns.transfer, written),
        KbWatch(settings, sessions, patterns.events),
    )
    relay = OutboxRelay(
        sessions,
        runner.applier.apply,
        after_seconds=settings.outbox_relay_after_seconds,
        interval_seconds=settings.outbox_relay_interval_seconds,
    )
    return Service(runner, cache, snapshotter, engine, servicer, relay)
