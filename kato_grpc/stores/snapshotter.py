"""When a process writes a KB snapshot (docs/scaling.md, "Cold start"; architecture.md §4).

Two things lead to one, and a sweep recovers what a crash lost.

**A KB this process caches.** The KB cache tells the snapshotter how many pattern documents
each load or refresh merged beyond the KB's last snapshot (``changed``). Once a KB of at least
``min_patterns`` has such changes, a snapshot of the cached index is written when the KB has
been quiet for ``quiet_seconds`` (behind a burst of writes, so the next cold start reads no
document at all), or at once when the changes reach ``growth`` times the KB's size (so a long
burst never leaves more than that share of the KB for a cold start to read document by
document).

**A KB this process wrote** (``wrote``: the applier after each learn batch, an import's
batches, a pattern's update or delete), cached here or not: bulk training with predictions off
and imports write KBs that no process reads, and every KB of at least ``min_patterns`` gets a
snapshot after its quiet period, whoever wrote it (issue 23). Once this process's writes to the
KB have been quiet for ``quiet_seconds``, it asks the store whether the KB is due
(``snapshots_due``: enough patterns, no snapshot as new as the KB). A KB whose version moved
past the newest this process knows of was written since by another process: one more quiet
period, from now, so the snapshot follows the KB's last write whoever made it. Then a KB this
process caches (or is loading into its cache: that load is joined, never repeated apart) is
refreshed and written as a cached one. Any other is loaded apart from the
cache (``SnapshotSource.snapshot_with``: counted against the cache's budget while held, then
dropped — a process keeps no KB because it wrote it), one such load at a time per process, by
the process holding the KB's claim in the store (``claim_snapshot``, renewed while it works,
lapsing ``CLAIM_SECONDS`` after a crash): a 100k-pattern KB without a snapshot takes seconds to
load, and N writers loading it at once would take N times the memory. A process that finds the
claim taken looks again a quiet period later, until the snapshot is stored (the KB is no longer
due) or the claim lapsed and it takes it.

**The sweep** (``sweep``: at start, then every ``sweep_seconds``) treats every KB that is due
as written now. What a crash loses is only the scheduling — which KBs this process was to
follow up — and the next write to the KB, or the next sweep of any process, schedules it again;
so do a stop within the quiet period, and KBs written before snapshots followed writes.

Duplicates are harmless: snapshots are versioned, the store keeps the first of a version, and a
process that finds one at least as new as its index writes none. A wipe (ClearKnowledgeBase)
leaves nothing to write: the wiped KB has no patterns, so it is not due; a snapshot encoded
from before it and stored after it is never loaded (``cleared_version``) and is replaced by the
next.

Encoding runs on a thread while the index is counted as read (``readers``), so the cache
changes a clone meanwhile; the snapshot is then stored, and the symbol log compacted up to the
snapshot it replaces — one snapshot behind, so that other processes, which refreshed their
cache of the KB since that one, keep refreshing it incrementally instead of reloading it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.protocols import KbSnapshots
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry

log = structlog.get_logger("kato.snapshots")

# What a writer calls once its write made a KB version: (KB id, version).
KbWritten = Callable[[str, int], None]
# A claim's lease, renewed every third of it while its process works on the KB: how long a KB
# waits for its snapshot after the process loading it died.
CLAIM_SECONDS = 60.0
# The least wait before looking again at a KB whose claim another process holds (a quiet
# period of 0 must not make it a busy loop).
RETRY_SECONDS = 1.0


class Clock(Protocol):
    """Where the snapshotter's time comes from: the system's, or a test's (which then says
    when the period has passed instead of sleeping through it)."""

    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock seconds: a claim's lease is compared across processes."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SnapshotSource(Protocol):
    """Where a KB's index at its current version comes from for a snapshot: the KB cache
    (``kb_cache.KbCache``), which makes itself its snapshotter's source."""

    def caches(self, kb_id: str) -> bool:
        """Whether the KB is cached here, or being loaded into the cache (a snapshot then
        joins that load instead of loading the KB a second time apart)."""
        ...

    async def snapshot_with(self, kb_id: str, write: Callable[[KnowledgeIndex], Awaitable[None]]) -> None:
        """``write`` the KB's index as it is now: the cached one refreshed, or one loaded apart
        and dropped once ``write`` returns."""
        ...


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    min_patterns: int = 1000
    quiet_seconds: float = 5.0
    growth: float = 0.25
    sweep_seconds: float = 600.0  # 0: the sweep runs at start only


@dataclass(slots=True)
class _Kb:
    index: weakref.ref[KnowledgeIndex] | None  # the cache's index, while the KB is cached here
    last_change: float  # by the snapshotter's clock
    pending: int = 0  # pattern documents the cache merged since the last snapshot
    written: int = 0  # the newest version this process wrote (or swept) and has yet to follow up; 0: none
    following: bool = False  # following up writes (maybe loading apart): not called off by an eviction
    task: asyncio.Task[None] | None = None


class Snapshotter:
    def __init__(
        self,
        store: KbSnapshots,
        policy: SnapshotPolicy,
        telemetry: Telemetry = NO_TELEMETRY,
        clock: Clock | None = None,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._clock = clock or SystemClock()
        self._policy = policy
        self._events = telemetry
        self._kbs: dict[str, _Kb] = {}
        self._owner = owner or uuid.uuid4().hex  # names this process's claims
        self._apart: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.source: SnapshotSource | None = None  # set by the KB cache this snapshotter serves
        self.written = 0  # snapshots this process stored (tests and logs read it)

    def changed(self, kb_id: str, index: KnowledgeIndex, patterns: int) -> None:
        """The cache now holds ``index`` for the KB, ``patterns`` documents past its snapshot."""
        kb = self._entry(kb_id)
        kb.index = weakref.ref(index)
        if patterns:
            kb.pending += patterns
            kb.last_change = self._clock.monotonic()
        if kb.pending and len(index) >= self._policy.min_patterns:
            self._start(kb_id, kb)

    def wrote(self, kb_id: str, version: int) -> None:
        """This process's write made ``version`` of the KB: a snapshot follows once the KB is
        quiet, if it is large enough (``KbWritten``)."""
        kb = self._entry(kb_id)
        kb.written = max(kb.written, version)
        kb.last_change = self._clock.monotonic()
        self._start(kb_id, kb)

    def forget(self, kb_id: str) -> None:
        """The KB left the cache: no snapshot of its cached index from this process. One still
        follows this process's writes to it (loaded apart)."""
        kb = self._kbs.get(kb_id)
        if kb is None:
            return
        kb.index, kb.pending = None, 0
        if not kb.written and not kb.following:
            del self._kbs[kb_id]
            if kb.task is not None:
                kb.task.cancel()

    async def sweep(self) -> int:
        """Follow up every KB that is due as if this process had just written it (its quiet
        period from now); returns how many it took up."""
        taken = 0
        for kb_id, version in (await self._store.snapshots_due(self._policy.min_patterns)).items():
            kb = self._kbs.get(kb_id)
            if kb is None or kb.task is None:  # one followed up already keeps its own schedule
                self.wrote(kb_id, version)
                taken += 1
        if taken:
            log.info("kb snapshots due", knowledge_bases=taken)
        return taken

    async def run(self, stop: asyncio.Event) -> None:
        """The sweep, now and every ``sweep_seconds`` (0: now only), until ``stop``; a failing
        one (a store down) is tried again at the next."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("kb snapshot sweep failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            if not self._policy.sweep_seconds:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._policy.sweep_seconds)

    async def close(self) -> None:
        tasks = [kb.task for kb in self._kbs.values() if kb.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _entry(self, kb_id: str) -> _Kb:
        kb = self._kbs.get(kb_id)
        if kb is None:
            kb = self._kbs[kb_id] = _Kb(None, self._clock.monotonic())
        return kb

    def _start(self, kb_id: str, kb: _Kb) -> None:
        if kb.task is None:
            kb.task = asyncio.get_running_loop().create_task(self._run(kb_id, kb))

    async def _run(self, kb_id: str, kb: _Kb) -> None:
        # Replicas caching (or writing) one KB would all wake at once: a jittered wait spreads them.
        quiet = self._policy.quiet_seconds * (1 + random.random() / 2)
        try:
            while kb.pending or kb.written:
                index = kb.index() if kb.index is not None else None
                wait = quiet - (self._clock.monotonic() - kb.last_change)
                # Grown: changes merged into the cached index past its share. None merged is
                # never grown, even of an empty index (that read as grown, the loop spun
                # without awaiting while this process's writes were not quiet yet).
                grown = index is not None and kb.pending > 0 and kb.pending >= self._policy.growth * len(index)
                if wait > 0 and not grown:
                    del index
                    await self._clock.sleep(wait)
                    continue
                if kb.written and wait <= 0:
                    del index
                    await self._follow_writes(kb_id, kb)
                    continue
                # The cache's index as it is (also when past the growth share while this
                # process's writes are not quiet yet: they are followed up once they are).
                kb.pending = 0
                if index is not None and len(index) >= self._policy.min_patterns:
                    await self._write(kb_id, index)
        except asyncio.CancelledError:
            raise
        except Exception:  # logged and counted; tried again after the next change or sweep
            log.warning("kb snapshot failed", knowledge_base=kb_id, exc_info=True)
            self._events.kb_snapshot(kb_id, "failed", 0.0)
        finally:
            kb.task = None
            # Nothing left to follow up of a KB not cached here: its entry goes (a process
            # that writes many KBs keeps none of them).
            if kb.index is None and not kb.written and self._kbs.get(kb_id) is kb:
                del self._kbs[kb_id]

    async def _follow_writes(self, kb_id: str, kb: _Kb) -> None:
        """The KB has been quiet since the newest version this process wrote or swept: make
        sure a snapshot of it is stored. Leaves ``written`` set (and the loop going on) when it
        must look again: the KB changed meanwhile, or another process holds its claim."""
        source = self.source
        if source is None:  # no cache to take the index from (a snapshotter on its own)
            kb.written = 0
            return
        kb.following = True  # an eviction meanwhile does not call it off
        claimed = False
        try:
            if source.caches(kb_id):
                # Cached here: refreshed as a lookup would, written as any cached KB — no claim
                # (nor a load apart): the index is in memory already.
                if await self._due(kb_id, kb) is not None:
                    kb.written = 0  # a write of this process from here on is followed up again
                    await source.snapshot_with(kb_id, lambda index: self._written_up(kb_id, kb, index))
                return
            async with self._one_apart():  # one KB loaded apart at a time: bounds the memory
                if await self._due(kb_id, kb) is None:
                    return
                now = self._clock.time()
                claimed = await self._store.claim_snapshot(kb_id, self._owner, now, now + CLAIM_SECONDS)
                if claimed:
                    kb.written = 0
                    renewal = asyncio.get_running_loop().create_task(self._renew(kb_id))
                    try:
                        await source.snapshot_with(kb_id, lambda index: self._written_up(kb_id, kb, index, apart=True))
                    finally:
                        renewal.cancel()
                        with contextlib.suppress(Exception):  # a claim not released lapses
                            await self._store.release_snapshot(kb_id, self._owner)
        finally:
            kb.following = False
        if not claimed:
            # Another process is loading it for its snapshot (``written`` still set): look
            # again later, outside the lock, so that this process's other KBs go on meanwhile.
            self._events.kb_snapshot(kb_id, "deferred", 0.0)
            await self._clock.sleep(max(self._policy.quiet_seconds, RETRY_SECONDS))

    async def _due(self, kb_id: str, kb: _Kb) -> int | None:
        """The KB's version when its snapshot is to be written now. None: not now — with
        ``written`` cleared when nothing is left to do, or the quiet period moved on when
        another process wrote the KB since."""
        known = kb.written
        version = (await self._store.snapshots_due(self._policy.min_patterns, [kb_id])).get(kb_id)
        if version is None:  # too small, wiped, or a snapshot as new as the KB is stored
            if kb.written == known:  # (a write of this process meanwhile keeps it going)
                kb.written = kb.pending = 0
            return None
        if version > kb.written and self._policy.quiet_seconds:  # written since by another process:
            kb.written = version  # quiet once more, from now (no quiet period: at once)
            kb.last_change = self._clock.monotonic()
            return None
        return version

    async def _written_up(self, kb_id: str, kb: _Kb, index: KnowledgeIndex, *, apart: bool = False) -> None:
        kb.pending = 0  # the index is the KB as it is now: the cache's changes are in it
        await self._write(kb_id, index, apart=apart)

    def _one_apart(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()  # a lock is bound to a loop: the tests run several
        if self._apart is None or self._apart[0] is not loop:
            self._apart = (loop, asyncio.Lock())
        return self._apart[1]

    async def _renew(self, kb_id: str) -> None:
        try:
            while True:
                await self._clock.sleep(CLAIM_SECONDS / 3)
                now = self._clock.time()
                if not await self._store.claim_snapshot(kb_id, self._owner, now, now + CLAIM_SECONDS):
                    # It lapsed (this process stalled past its lease) and another took it: both
                    # may write one; the store keeps the first of a version.
                    log.warning("kb snapshot claim lost to another process", knowledge_base=kb_id)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store down: the claim lapses, a duplicate is harmless
            log.warning("kb snapshot claim not renewed", knowledge_base=kb_id, error=repr(exc)[:300])

    async def _write(self, kb_id: str, index: KnowledgeIndex, *, apart: bool = False) -> None:
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
            loaded_apart=apart,
            seconds=round(time.perf_counter() - started, 3),
        )
