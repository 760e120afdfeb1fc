"""The per-process knowledge-base cache, stamped with each KB's version (DESIGN 4, D-8).

Every read checks the KB version in MongoDB (one small query) and fetches only what changed
since the cached version, so predictions never query MongoDB per candidate and several
server processes stay coherent. A refresh replaces data wholesale and synchronously once
fetched, so a prediction (pure, no awaits) never sees a half-applied refresh.
"""

from __future__ import annotations

from collections import OrderedDict

from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.mongo_patterns import KbChanges, MongoPatternStore

DEFAULT_MAX_KBS = 100


class KbCache:
    def __init__(self, store: MongoPatternStore, max_kbs: int = DEFAULT_MAX_KBS) -> None:
        self._store = store
        self._max = max_kbs
        self._indexes: OrderedDict[str, KnowledgeIndex] = OrderedDict()

    async def view(self, kb_id: str) -> KnowledgeIndex:
        """The KB's index, refreshed if its version moved since it was cached."""
        index = self._indexes.get(kb_id)
        current = await self._store.kb_version(kb_id)
        if index is None or index.version != current:
            since = index.version if index is not None else 0
            changes = await self._store.changes_since(kb_id, since)
            index = self._merge(kb_id, changes)
        self._indexes.move_to_end(kb_id)
        while len(self._indexes) > self._max:
            self._indexes.popitem(last=False)
        return index

    def _merge(self, kb_id: str, changes: KbChanges) -> KnowledgeIndex:
        index = self._indexes.get(kb_id)
        if index is not None and changes.version <= index.version:
            return index  # a concurrent refresh already brought something at least as new
        if index is None or changes.full:
            index = KnowledgeIndex()
        for record in changes.patterns:
            index.put_pattern(record)
        for symbol, stats in changes.symbols:
            index.put_symbol(symbol, stats)
        for name, values in changes.vectors:
            index.put_vector(name, values)
        index.set_totals(changes.totals)
        index.version = changes.version
        self._indexes[kb_id] = index
        return index

    def cached_patterns(self) -> int:
        return sum(len(i) for i in self._indexes.values())
