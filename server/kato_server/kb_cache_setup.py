"""The process's KB cache as the settings configure it: its budget, the process-wide memory
policy around its loads (``memory_policy.py``) and the snapshots it writes."""

from __future__ import annotations

import time
from collections.abc import Callable

from kato_grpc.settings import Settings
from kato_grpc.stores import snapshot
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.protocols import KbReads, KbSnapshots
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from kato_grpc.telemetry import Telemetry
from kato_server import memory_policy

MB = 1024 * 1024


def kb_cache(
    settings: Settings,
    reads: KbReads,
    snapshots: KbSnapshots,
    telemetry: Telemetry,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[KbCache, Snapshotter | None]:
    """The cache reading through ``reads``, and its snapshotter writing to ``snapshots``
    (None when this process writes no snapshots: the server runs its sweep and closes it at
    shutdown). The cache is the snapshotter's source: it loads the KBs this process wrote but
    does not cache for their snapshots, within its budget. ``clock`` times the cache's checks
    of MongoDB's version (D-8)."""
    policy = SnapshotPolicy(
        settings.kb_snapshot_min_patterns,
        settings.kb_snapshot_quiet_seconds,
        settings.kb_snapshot_growth,
        settings.kb_snapshot_sweep_seconds,
    )
    snapshotter = Snapshotter(snapshots, policy, telemetry) if settings.kb_snapshots else None
    cache = KbCache(
        reads,
        after_large_refresh=memory_policy.after_large_refresh(freeze=settings.gc_freeze, trim=settings.malloc_trim),
        telemetry=telemetry,
        max_bytes=settings.kb_cache_max_mb * MB if settings.kb_cache_max_mb else None,
        after_eviction=memory_policy.after_eviction(trim=settings.malloc_trim),
        snapshotter=snapshotter,
        decode=memory_policy.without_gc(snapshot.decode) if settings.gc_freeze else snapshot.decode,
        clock=clock,
    )
    return cache, snapshotter
