"""Knowledge-base and symbol statistics, read from this process's KB cache — the numbers the
predictions of this process are computed from (docs/engine.md §1.8) — and the list of the
knowledge bases a caller may use, read as stored."""

from __future__ import annotations

from kato_grpc import names
from kato_grpc.access import ALL_NODES, Caller
from kato_grpc.engine.knowledge import SymbolStats
from kato_grpc.errors import NotFound
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.protocols import KbVersionBoard, PatternReads
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import paging, validation
from kato_server.engine_threads import EngineThreads


class KbStats:
    def __init__(self, versions: KbVersionBoard, cache: KbCache, engine: EngineThreads, stored: PatternReads) -> None:
        self.versions = versions
        self.cache = cache
        self.engine = engine
        self.stored = stored

    async def _index(self, node: str, caller: Caller) -> KnowledgeIndex:
        caller.authorize(node)
        return await self.cache.view(node, await self.versions.kb_version(node))

    async def get_knowledge_base(self, req: svc.GetKnowledgeBaseRequest, caller: Caller) -> svc.KnowledgeBase:
        node = validation.node_id(req.name, "name")
        before = self.cache.cached_version(node)
        index = await self._index(node, caller)
        totals = index.totals()
        return svc.KnowledgeBase(
            name=names.knowledge_base(node),
            version=index.version,
            pattern_count=totals.total_unique_patterns,
            total_pattern_frequencies=totals.total_pattern_frequencies,
            symbol_count=index.symbol_count(),
            vector_count=index.vector_count(),
            cache=svc.KnowledgeBaseCache(cached=before is not None, cached_version=before or 0),
        )

    async def list_knowledge_bases(
        self, req: svc.ListKnowledgeBasesRequest, caller: Caller
    ) -> svc.ListKnowledgeBasesResponse:
        size, after = paging.page_size(req.page_size), paging.after(req.page_token)
        # A token's nodes bound the query itself: nobody learns another tenant's KB ids, not
        # even by how long a page takes.
        among = None if caller.nodes is None or ALL_NODES in caller.nodes else caller.nodes
        page = await self.stored.list_knowledge_bases(after or "", size + 1, among)
        out = svc.ListKnowledgeBasesResponse(
            knowledge_bases=[
                svc.KnowledgeBase(
                    name=names.knowledge_base(kb.kb_id),
                    version=kb.version,
                    pattern_count=kb.totals.total_unique_patterns,
                    total_pattern_frequencies=kb.totals.total_pattern_frequencies,
                )
                for kb in page[:size]
            ]
        )
        if len(page) > size:
            out.next_page_token = paging.token(page[size - 1].kb_id)
        return out

    async def get_symbol(self, req: svc.GetSymbolRequest, caller: Caller) -> svc.Symbol:
        node, text = validation.symbol_ref(req.name)
        index = await self._index(node, caller)
        stats = index.symbol(text)
        if stats is None:
            raise NotFound(f"symbol {req.name} not found", reason="SYMBOL_NOT_FOUND")
        return _symbol(node, text, stats, index)

    async def list_symbols(self, req: svc.ListSymbolsRequest, caller: Caller) -> svc.ListSymbolsResponse:
        node = validation.node_id(req.parent, "parent")
        size, after = paging.page_size(req.page_size), paging.after(req.page_token)
        index = await self._index(node, caller)
        # Sorting a large vocabulary takes a while: on an engine thread, off the event loop.
        page = await self.engine.run(lambda _budget: index.symbols_after(after, size + 1), [index])
        out = svc.ListSymbolsResponse(symbols=[_symbol(node, s, stats, index) for s, stats in page[:size]])
        if len(page) > size:
            out.next_page_token = paging.token(page[size - 1][0])
        return out


def _symbol(node: str, text: str, stats: SymbolStats, index: KnowledgeIndex) -> svc.Symbol:
    patterns = index.totals().total_unique_patterns
    return svc.Symbol(
        name=names.symbol(node, text),
        symbol=text,
        frequency=stats.frequency,
        pattern_member_frequency=stats.pattern_member_frequency,
        probability=stats.pattern_member_frequency / patterns if patterns else 0.0,
        affinity=dict(stats.affinity),
    )
