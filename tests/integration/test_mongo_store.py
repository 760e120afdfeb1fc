"""The MongoDB pattern store applies writes exactly as the in-memory KB does, exactly once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

from pymongo import AsyncMongoClient

from kato_grpc import devstack
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import average_emotives
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.v1 import engine_pb2 as pb

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def _writes(n: int, seed: int) -> list[pb.PatternWrite]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        events = [[rng.choice("abcdef.$")] for _ in range(rng.randint(2, 4))]
        emotives = [{rng.choice(["joy", "a.b", "$x"]): rng.uniform(-1, 1)} for _ in range(rng.randint(0, 3))]
        write = pb.PatternWrite(write_id=f"w-{seed}-{i}", name=pattern_name(events), persistence=rng.randint(1, 3))
        write.events.extend(pb.Event(symbols=e) for e in events)
        write.emotives.extend(pb.EmotiveRecord(values=e) for e in emotives)
        write.symbol_counts.update(Counter(s for e in events for s in e))
        write.affinity_delta.update(average_emotives(emotives))
        if rng.random() < 0.5:
            write.metadata["k"].values.extend(sorted({rng.choice("xyz") for _ in range(2)}))
        out.append(write)
    return out


def test_mongo_store_matches_the_in_memory_kb_and_applies_once(stores: Stores) -> None:
    async def run() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoPatternStore(client, "kato_" + uuid.uuid4().hex[:8])
        await store.ensure_indexes()
        kb_id = "store-test"
        cache = KbCache(store)
        reference = InMemoryKnowledgeBase()
        writes = _writes(40, 1)
        for w in writes:
            reference.apply(w)
        # Apply in batches, one batch twice and one write duplicated inside a batch.
        assert (await store.apply_many(kb_id, writes[:10])).count == 10
        assert (await store.apply_many(kb_id, writes[:10])).count == 0
        assert (await store.apply_many(kb_id, [*writes[10:25], writes[12]])).count == 15
        first_view = await cache.view(kb_id)  # cached now: later writes arrive incrementally
        assert len(first_view) > 0
        for w in writes[25:]:
            assert await store.apply(kb_id, w)
        assert not await store.apply(kb_id, writes[30])
        view = await cache.view(kb_id)
        assert view.totals() == reference.totals()
        assert {p.name: p for p in view.all_patterns()} == {p.name: p for p in reference.all_patterns()}
        for symbol in "abcdef.$":
            assert view.symbol(symbol) == reference.symbol(symbol), symbol
        await store.clear(kb_id)
        cleared = await cache.view(kb_id)
        assert len(cleared) == 0 and cleared.totals().total_unique_patterns == 0
        await store.close()

    asyncio.run(run())
