"""The per-process knowledge-base cache, stamped with each KB's version (architecture.md §4, D-8).

Every read is given the KB version that writers publish in Redis after each MongoDB commit
(one cheap GET) and fetches only what changed since the cached version, so predictions never
query MongoDB per candidate and several server processes stay coherent. MongoDB's own version
is checked at least every ``check_seconds`` per KB (also when Redis knows no version for it) —
that bounds the staleness left by a writer that died between its commit and its publish, or
by a Redis that lost the key.
A refresh is merged synchronously on the event loop once fetched. Predictions run on engine
threads (``server/engine_runner.py``): an index that one of them is reading is never changed
in place — the refresh goes into a clone that replaces it in the cache — so a prediction never
sees a half-applied refresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from kato_grpc.events import NO_EVENTS, Events
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.mongo_reads import KbChanges

DEFAULT_MAX_KBS = 100
FREEZE_AFTER = 1000


class KbCache:
    """``after_large_refresh`` is the process's memory policy (``server/memory_policy.py``),
    run after a refresh of at least ``FREEZE_AFTER`` patterns; none by default."""

    def __init__(
        self,
        store: MongoPatternStore,
        max_kbs: int = DEFAULT_MAX_KBS,
        check_seconds: float = 1.0,
        after_large_refresh: Callable[[], None] | None = None,
        events: Events = NO_EVENTS,
    ) -> None:
        self._store = store
        self._events = events
        self._after_large_refresh = after_large_refresh
        self._max = max_kbs
        self._check_seconds = check_seconds
        self._indexes: OrderedDict[str, KnowledgeIndex] = OrderedDict()
        self._checked: dict[str, float] = {}

    async def view(self, kb_id: str, published: int | None = None) -> KnowledgeIndex:
        """The KB's index, refreshed if its version moved since it was cached.

        ``published`` is the version from Redis (None if unknown): when it is not newer than
        the cache and MongoDB was checked recently, no MongoDB round trip happens at all.
        """
        index = self._indexes.get(kb_id)
        now = time.monotonic()
        recent = now - self._checked.get(kb_id, -1e9) < self._check_seconds
        # Writers publish after every applied write, so a missing version means no write since
        # Redis last knew it (or Redis lost the key): MongoDB, checked once a second, decides.
        if index is not None and (published is None or published <= index.version) and recent:
            current = index.version
        else:
            current = await self._store.kb_version(kb_id)
            self._checked[kb_id] = now
        result = "hit"
        if index is None or index.version != current:
            result = "load" if index is None else "refresh"
            since = index.version if index is not None else 0
            singles = index.singles if index is not None else {}
            changes = await self._store.changes_since(kb_id, since, singles)
            index = self._merge(kb_id, changes, singles)
            large = len(changes.patterns) >= FREEZE_AFTER
            del changes
            if large and self._after_large_refresh is not None:
                self._after_large_refresh()
        self._indexes.move_to_end(kb_id)
        self._events.kb_lookup(kb_id, result, len(index))
        while len(self._indexes) > self._max:
            evicted, _ = self._indexes.popitem(last=False)
            self._checked.pop(evicted, None)
            self._events.kb_evicted(evicted)
        return index

    def cached_version(self, kb_id: str) -> int | None:
        """The version this process has cached of a KB, or None (it is not cached)."""
        index = self._indexes.get(kb_id)
        return None if index is None else index.version

    def _merge(self, kb_id: str, changes: KbChanges, singles: dict[str, tuple[str]]) -> KnowledgeIndex:
        index = self._indexes.get(kb_id)
        if index is not None and changes.version <= index.version:
            return index  # a concurrent refresh already brought something at least as new
        if index is None:
            index = KnowledgeIndex(singles)
        elif changes.full:
            index = KnowledgeIndex()  # a fresh table: the wiped KB's symbols are not kept
        elif index.readers:
            # Engine threads are reading this index: change a copy, they keep theirs.
            index = index.clone()
        for record in changes.patterns:
            index.put_pattern(record)
        for change in changes.symbol_changes:
            index.apply_symbol_change(change)
        for name, values in changes.vectors:
            index.put_vector(name, values)
        index.set_totals(replace(changes.totals, vocabulary_size=index.symbol_count()))
        index.version = changes.version
        self._indexes[kb_id] = index
        return index
