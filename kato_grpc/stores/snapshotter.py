"""When a process writes a KB snapshot (docs/scaling.md, "Cold start").

The KB cache tells the snapshotter how many pattern documents each load or refresh merged
beyond the KB's last snapshot. Once a KB of at least ``min_patterns`` has such changes, a
snapshot of the cached index is written when the KB has been quiet for ``quiet_seconds``
(behind a burst of writes, so the next cold start reads no document at all), or at once
when the changes reach ``growth`` times the KB's size (so a long burst never leaves more than
that share of the KB for a cold start to read document by document).

Encoding runs on a thread while the index is counted as read (``readers``), so the cache
changes a clone meanwhile; the snapshot is then stored, and the symbol log compacted up to the
snapshot it replaces — one snapshot behind, so that other processes, which refreshed their
cache of the KB since that one, keep refreshing it incrementally instead of reloading it whole.
Several processes caching one KB may each write one: the store keeps the first of a
version, and a process that finds a snapshot at least as new as its index writes none.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

import structlog

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.protocols import KbSnapshots
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry

log = structlog.get_logger("kato.snapshots")


class Clock(Protocol):
    """Where the quiet period's time comes from: the system's, or a test's (which then says
    when the period has passed instead of sleeping through it)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    min_patterns: int = 1000
    quiet_seconds: float = 5.0
    growth: float = 0.25


@dataclass(slots=True)
class _Kb:
    index: weakref.ref[KnowledgeIndex]
    last_change: float  # by the snapshotter's clock
    pending: int = 0  # pattern documents merged since the last snapshot
    task: asyncio.Task[None] | None = None


class Snapshotter:
    def __init__(
        self,
        store: KbSnapshots,
        policy: SnapshotPolicy,
        telemetry: Telemetry = NO_TELEMETRY,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._clock = clock or SystemClock()
        self._policy = policy
        self._events = telemetry
        self._kbs: dict[str, _Kb] = {}
        self.written = 0  # snapshots this process stored (tests and logs read it)

    def changed(self, kb_id: str, index: KnowledgeIndex, patterns: int) -> None:
        """The cache now holds ``index`` for the KB, ``patterns`` documents past its snapshot."""
        kb = self._kbs.get(kb_id)
        if kb is None:
            kb = self._kbs[kb_id] = _Kb(weakref.ref(index), self._clock.monotonic())
        kb.index = weakref.ref(index)
        if patterns:
            kb.pending += patterns
            kb.last_change = self._clock.monotonic()
        if kb.pending and len(index) >= self._policy.min_patterns and kb.task is None:
            kb.task = asyncio.get_running_loop().create_task(self._run(kb_id, kb))

    def forget(self, kb_id: str) -> None:
        """The KB left the cache: no snapshot of it from this process."""
        kb = self._kbs.pop(kb_id, None)
        if kb is not None and kb.task is not None:
            kb.task.cancel()

    async def close(self) -> None:
        tasks = [kb.task for kb in self._kbs.values() if kb.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, kb_id: str, kb: _Kb) -> None:
        # Replicas caching one KB would all wake at once: a jittered wait spreads them.
        quiet = self._policy.quiet_seconds * (1 + random.random() / 2)
        try:
            while kb.pending:
                index = kb.index()
                if index is None:
                    return
                wait = quiet - (self._clock.monotonic() - kb.last_change)
                if wait > 0 and kb.pending < self._policy.growth * len(index):
                    del index
                    await self._clock.sleep(wait)
                    continue
                kb.pending = 0
                await self._write(kb_id, index)
        except asyncio.CancelledError:
            raise
        except Exception:  # logged and counted; tried again after the next change
            log.warning("kb snapshot failed", knowledge_base=kb_id, exc_info=True)
            self._events.kb_snapshot(kb_id, "failed", 0.0)
        finally:
            kb.task = None

    async def _write(self, kb_id: str, index: KnowledgeIndex) -> None:
        started = time.perf_counter()
        index.readers += 1  # the cache changes a clone while this one is encoded
        try:
            version = index.version
            previous = await self._store.latest_snapshot_version(kb_id)
            if previous >= version:
                self._events.kb_snapshot(kb_id, "skipped", time.perf_counter() - started)
                return  # another process stored one at least as new
            blob = await asyncio.to_thread(snapshot.encode, index)
        finally:
            index.readers -= 1
        if not await self._store.save_snapshot(kb_id, version, blob):
            self._events.kb_snapshot(kb_id, "skipped", time.perf_counter() - started)
            return
        compacted = await self._store.compact_log(kb_id, previous) if previous else 0
        self.written += 1
        self._events.kb_snapshot(kb_id, "written", time.perf_counter() - started)
        log.info(
            "kb snapshot",
            knowledge_base=kb_id,
            version=version,
            patterns=len(index),
            bytes=len(blob),
            log_documents_compacted=compacted,
            seconds=round(time.perf_counter() - started, 3),
        )
