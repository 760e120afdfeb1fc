"""The per-process knowledge-base cache, stamped with each KB's version (architecture.md §4, D-8).

Every read is given the KB version that writers publish in Redis after each MongoDB commit
(one cheap GET) and fetches only what changed since the cached version, so predictions never
query MongoDB per candidate and several server processes stay coherent. MongoDB's own version
is checked at least every ``check_seconds`` per KB (also when Redis knows no version for it) —
that bounds the staleness left by a writer that died between its commit and its publish, or
by a Redis that lost the key.
A small refresh is merged on the event loop once fetched; a large one (``OFF_LOOP_WORK``) and
every full load on a thread, so the loop keeps answering health checks and other calls, and a
caller waiting for it still ends at its deadline. Predictions run on engine threads
(``server/kato_server/engine_threads.py``): an index that one of them is reading is never changed in place —
the refresh goes into a clone that replaces it in the cache — so a prediction never sees a
half-applied refresh; a refresh on a thread always changes an index nobody else sees yet.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.protocols import KbChanges, KbReads
from kato_grpc.stores.snapshotter import Snapshotter
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry

log = structlog.get_logger("kato.snapshots")

DEFAULT_MAX_KBS = 100
FREEZE_AFTER = 1000


class KbCache:
    """At most ``max_kbs`` KBs and, with ``max_bytes``, at most that many estimated bytes
    (``KnowledgeIndex.estimated_bytes``): the least recently used KBs are evicted whole and
    loaded again when asked for. The KB being read is never evicted, so one KB larger than
    the budget is still served (alone).

    ``after_large_refresh`` / ``after_eviction`` are the process's memory policy
    (``server/kato_server/memory_policy.py``): after a refresh of at least ``FREEZE_AFTER`` patterns, and
    after an eviction; none by default. ``clock`` (seconds) times the MongoDB version checks;
    injectable so a test can say when an interval has passed instead of sleeping through it."""

    def __init__(
        self,
        store: KbReads,
        max_kbs: int = DEFAULT_MAX_KBS,
        check_seconds: float = 1.0,
        after_large_refresh: Callable[[], None] | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
        max_bytes: int | None = None,
        after_eviction: Callable[[], None] | None = None,
        snapshotter: Snapshotter | None = None,
        decode: Callable[[bytes], KnowledgeIndex] = snapshot.decode,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._snapshotter = snapshotter
        self._decode = decode  # the server's runs with the GC paused (server/kato_server/memory_policy.py)
        self._events = telemetry
        self._after_large_refresh = after_large_refresh
        self._after_eviction = after_eviction
        self._max = max_kbs
        self._max_bytes = max_bytes
        self._check_seconds = check_seconds
        self._indexes: OrderedDict[str, KnowledgeIndex] = OrderedDict()
        self._checked: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[KnowledgeIndex]] = {}
        self._bytes: dict[str, int] = {}  # each cached KB's estimate, as of its last load or refresh
        self.total_bytes = 0  # the cached KBs' estimates, and a KB's loaded apart for its snapshot
        if snapshotter is not None:
            snapshotter.source = self  # the KBs this process writes are loaded for their snapshots here

    async def view(self, kb_id: str, published: int | None = None) -> KnowledgeIndex:
        """The KB's index, refreshed if its version moved since it was cached.

        ``published`` is the version from Redis (None if unknown): when it is not newer than
        the cache and MongoDB was checked recently, no MongoDB round trip happens at all.
        """
        index, result = await self._current(kb_id, published)
        self._events.kb_lookup(kb_id, result, len(index), self._bytes.get(kb_id, 0))
        return index

    async def snapshot_with(self, kb_id: str, write: Callable[[KnowledgeIndex], Awaitable[None]]) -> None:
        """``write`` (a snapshot, ``snapshotter.SnapshotSource``) the KB as MongoDB has it now:
        the cached index refreshed, when this process caches the KB; otherwise an index loaded
        apart — through a cache of its own, so from the KB's snapshot and what came after it
        like any load, with the decode and the large merges on threads — counted against this
        cache's budget while ``write`` runs (the least recently used KBs are evicted for it, as
        for any load) and dropped after: a process that only writes a KB never keeps it."""
        if self.caches(kb_id):  # a load in flight is joined: the KB is never loaded twice at once
            index, _ = await self._current(kb_id, None, check=True)
            await write(index)
            return
        apart = KbCache(self._store, max_kbs=1, decode=self._decode, clock=self._clock)
        index = await apart.view(kb_id)
        size = apart.total_bytes
        del apart
        self.total_bytes += size
        self._evict(keep=kb_id)
        try:
            await write(index)
        finally:
            self.total_bytes -= size
            del index
            if self._after_eviction is not None:
                self._after_eviction()  # the index is freed: the heap it took goes back

    async def version(self, kb_id: str, published: int | None = None) -> int:
        """The KB's version as a ``view`` now would take it, without loading or refreshing it:
        the cached index's when ``view`` would take that as it is, else MongoDB's (counted as a
        check only when the cached index is at it: the index is not brought up to it here)."""
        index = self._indexes.get(kb_id)
        now = self._clock()
        if self._as_cached(kb_id, index, published, now):
            assert index is not None
            return index.version
        current = await self._store.kb_version(kb_id)
        index = self._indexes.get(kb_id)
        if index is not None and index.version == current:
            self._checked[kb_id] = now  # the cached index is the KB as MongoDB has it: a check
        return current

    def _as_cached(self, kb_id: str, index: KnowledgeIndex | None, published: int | None, now: float) -> bool:
        """Whether the cached ``index`` is the KB now: not older than ``published`` and MongoDB
        was asked within ``check_seconds``. Writers publish after every applied write, so a
        missing version means no write since Redis last knew it (or Redis lost the key):
        MongoDB, checked once a second, decides."""
        recent = now - self._checked.get(kb_id, -1e9) < self._check_seconds
        return index is not None and (published is None or published <= index.version) and recent

    async def _current(self, kb_id: str, published: int | None, *, check: bool = False) -> tuple[KnowledgeIndex, str]:
        """``view``'s index and what the lookup did (``hit``, ``refresh``, ``load``);
        ``check``: ask MongoDB for the version even when it was asked recently."""
        index = self._indexes.get(kb_id)
        now = self._clock()
        if not check and self._as_cached(kb_id, index, published, now):
            assert index is not None
            current = index.version
        else:
            current = await self._store.kb_version(kb_id)
            self._checked[kb_id] = now
        result = "hit"
        if index is None or index.version != current:
            result = "load" if index is None else "refresh"
            # One load or refresh per KB at a time: callers arriving meanwhile join it (a cold
            # 1M-pattern KB under 64 callers must load once, not 64 times). Shielded: a caller
            # that gives up does not cancel the load the others wait for.
            task = self._loading.get(kb_id)
            if task is None:
                task = self._loading[kb_id] = asyncio.create_task(self._refresh(kb_id, index))
                task.add_done_callback(lambda t: self._loaded(kb_id, t))
            index = await asyncio.shield(task)
            if index.version < current:  # joined a refresh older than the version asked for
                index = await self._refresh(kb_id, index)
        if kb_id in self._indexes:  # another KB's load may have evicted it while this call waited
            self._indexes.move_to_end(kb_id)
        return index, result

    def _loaded(self, kb_id: str, task: asyncio.Task[KnowledgeIndex]) -> None:
        if self._loading.get(kb_id) is task:
            del self._loading[kb_id]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has seen it, none may be left to

    async def _refresh(self, kb_id: str, index: KnowledgeIndex | None) -> KnowledgeIndex:
        started = time.perf_counter()
        since = index.version if index is not None else 0
        singles = index.singles if index is not None else {}
        changes = await self._store.changes_since(kb_id, since, singles)
        current = self._indexes.get(kb_id)
        moved = current is not None and current.version != since and current.version < changes.version
        if not changes.full and (current is None or moved):
            # The cached index is no longer the one these changes start from: another refresh
            # replaced it meanwhile (a clone, the old one being read) or the KB was evicted.
            # Merged into it, the changes in between would count twice (symbol statistics add
            # up): fetch again from what is cached now.
            return await self._refresh(kb_id, current)
        base = await self._base(kb_id, changes) if changes.full else None
        if changes.full and base is None and changes.snapshot is not None:
            changes = await self._store.changes_since(kb_id, 0, singles, snapshots=False)
        index = await self._merge(kb_id, changes, singles, base)
        if changes.full:
            source = "snapshot" if base is not None else "documents"
            self._events.kb_loaded(kb_id, source, time.perf_counter() - started)
        large = len(changes.patterns) >= FREEZE_AFTER or base is not None
        if self._snapshotter is not None:
            self._snapshotter.changed(kb_id, index, len(changes.patterns))
        del changes, base
        size = index.estimated_bytes()
        self.total_bytes += size - self._bytes.get(kb_id, 0)
        self._bytes[kb_id] = size
        self._evict(keep=kb_id)
        if large and self._after_large_refresh is not None:
            self._after_large_refresh()
        return index

    def _evict(self, keep: str) -> None:
        """Least recently used first, until within both bounds (``keep`` stays)."""
        evicted = False
        while len(self._indexes) > 1 and (
            len(self._indexes) > self._max or (self._max_bytes is not None and self.total_bytes > self._max_bytes)
        ):
            kb_id = next(iter(self._indexes))
            if kb_id == keep:
                self._indexes.move_to_end(kb_id)
                continue
            # Dropped, not emptied: a call may hold it between its lookup and its prediction.
            # Without reference cycles (see index.py) it is freed when the last one lets go.
            del self._indexes[kb_id]
            self._checked.pop(kb_id, None)
            if self._snapshotter is not None:
                self._snapshotter.forget(kb_id)
            self.total_bytes -= self._bytes.pop(kb_id, 0)
            self._events.kb_evicted(kb_id)
            evicted = True
        if evicted and self._after_eviction is not None:
            self._after_eviction()

    def caches(self, kb_id: str) -> bool:
        """Whether the KB is cached, or being loaded into the cache."""
        return kb_id in self._indexes or kb_id in self._loading

    def cached_version(self, kb_id: str) -> int | None:
        """The version this process has cached of a KB, or None (it is not cached)."""
        index = self._indexes.get(kb_id)
        return None if index is None else index.version

    async def _base(self, kb_id: str, changes: KbChanges) -> KnowledgeIndex | None:
        """A full load's starting index: its snapshot, decoded on a thread (a large one takes
        seconds of CPU: the event loop keeps answering meanwhile). None: start empty."""
        if changes.snapshot is None:
            return None
        try:
            base = await asyncio.to_thread(self._decode, changes.snapshot.blob)
        except snapshot.SnapshotError:
            # ERROR, as its twin "kb snapshot damaged": if the log was compacted into it, the
            # load from documents that follows fails DATA_LOSS (``KbReads.changes_since``).
            log.error("kb snapshot unreadable: loading from documents", knowledge_base=kb_id, exc_info=True)
            return None
        if not changes.snapshot_patterns:
            base.drop_patterns()
        return base

    async def _merge(
        self, kb_id: str, changes: KbChanges, singles: dict[str, tuple[str]], base: KnowledgeIndex | None = None
    ) -> KnowledgeIndex:
        index = self._indexes.get(kb_id)
        if index is not None and changes.version <= index.version:
            return index  # a concurrent refresh already brought something at least as new
        heavy = _work(changes) >= OFF_LOOP_WORK
        if base is not None:
            merged = base
        elif index is None:
            merged = KnowledgeIndex(singles)
        elif changes.full:
            merged = KnowledgeIndex()  # a fresh table: the wiped KB's symbols are not kept
        elif heavy or (index.readers and len(index) >= OFF_LOOP_CLONE):
            # Cloned and changed on a thread while the cached one goes on serving; leased
            # meanwhile, so that no small refresh changes it in place under the clone.
            index.readers += 1
            try:
                merged = await asyncio.to_thread(lambda: _apply(index.clone(), changes))
            finally:
                index.readers -= 1
            return self._publish(kb_id, merged)
        elif index.readers:
            merged = index.clone()  # engine threads are reading it: change a copy, they keep theirs
        else:
            merged = index
        if heavy:  # an index nobody else sees yet
            merged = await asyncio.to_thread(_apply, merged, changes)
        else:
            _apply(merged, changes)
        return self._publish(kb_id, merged)

    def _publish(self, kb_id: str, merged: KnowledgeIndex) -> KnowledgeIndex:
        current = self._indexes.get(kb_id)
        if current is not None and current is not merged and current.version >= merged.version:
            return current  # a refresh that ran beside this one published one as new meanwhile
        self._indexes[kb_id] = merged
        return merged


# Patterns' symbols, symbol statistics and vectors a refresh merges: past this much it runs on
# a thread (a few ms of Python on the event loop at most; 30,000 new symbols took seconds).
OFF_LOOP_WORK = 5_000
# Cloning an index copies its tables: past this many patterns, on a thread too.
OFF_LOOP_CLONE = 20_000


def _work(changes: KbChanges) -> int:
    return (
        sum(r.length for r in changes.patterns)
        + sum(len(c.counts) for c in changes.symbol_changes)
        + len(changes.vectors)
    )


def _apply(index: KnowledgeIndex, changes: KbChanges) -> KnowledgeIndex:
    """Merge ``changes`` into ``index`` (which no engine thread reads)."""
    for record in changes.patterns:
        index.put_pattern(record)
    for change in changes.symbol_changes:
        index.apply_symbol_change(change)
    for name, values in changes.vectors:
        index.put_vector(name, values)
    index.set_totals(replace(changes.totals, vocabulary_size=index.symbol_count()))
    index.version = changes.version
    return index
