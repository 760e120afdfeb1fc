"""The MongoDB pattern store applies writes exactly as the in-memory KB does, exactly once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

from pymongo import AsyncMongoClient

from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import average_emotives, canonical_json
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.v1 import engine_pb2 as pb
from kato_server import devstack

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def _writes(n: int, seed: int) -> list[storage.PatternWrite]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        events = [[rng.choice("abcdef.$")] for _ in range(rng.randint(2, 4))]
        emotives = [{rng.choice(["joy", "a.b", "$x"]): rng.uniform(-1, 1)} for _ in range(rng.randint(0, 3))]
        write = storage.PatternWrite(write_id=f"w-{seed}-{i}", name=pattern_name(events), persistence=rng.randint(1, 3))
        write.events.extend(pb.Event(symbols=e) for e in events)
        write.emotives.extend(pb.EmotiveRecord(values=e) for e in emotives)
        write.symbol_counts.update(Counter(s for e in events for s in e))
        write.affinity_delta.update(average_emotives(emotives))
        if rng.random() < 0.5:
            write.metadata["k"].values.extend(sorted({canonical_json(rng.choice(["x", 1, True])) for _ in range(2)}))
        out.append(write)
    return out


def test_mongo_store_matches_the_in_memory_kb_and_applies_once(stores: Stores) -> None:
    async def run() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoPatternStore(client, "kato_" + uuid.uuid4().hex[:8])
        await store.ensure_indexes()
        kb_id = "store-test"
        cache = KbCache(store, check_seconds=0)  # no Redis hints here: ask MongoDB every time
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


def test_cache_without_a_published_version_asks_mongodb_once_per_check_interval(stores: Stores) -> None:
    # A KB nobody wrote since Redis last knew it has no published version; calls on it must
    # not cost a MongoDB round trip each, yet a write is still seen within the interval.
    async def run() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoPatternStore(client, "kato_" + uuid.uuid4().hex[:8])
        await store.ensure_indexes()
        asked = 0
        kb_version = store.kb_version

        async def counting(kb_id: str) -> int:
            nonlocal asked
            asked += 1
            return await kb_version(kb_id)

        store.kb_version = counting  # type: ignore[method-assign]
        # The cache's clock is the test's: the interval passes when the test says so, not
        # while 20 calls run on a machine that may be slow.
        now = 0.0
        cache = KbCache(store, check_seconds=0.5, clock=lambda: now)
        assert len(await cache.view("quiet")) == 0  # the first view loads the KB
        loaded = asked
        for _ in range(20):
            assert len(await cache.view("quiet")) == 0
        assert asked == loaded
        await store.apply_many("quiet", _writes(3, 2))
        now = 0.49
        assert len(await cache.view("quiet")) == 0 and asked == loaded  # within the interval: not asked
        now = 0.5
        assert len(await cache.view("quiet")) > 0 and asked == loaded + 1  # the interval passed: asked once
        await store.close()

    asyncio.run(run())


def test_metadata_stored_before_d29_reads_as_json_values(stores: Stores) -> None:
    # Values stored as Python str() texts before D-29 come back as JSON values: JSON texts as
    # what they say, anything else as a string; duplicates of new canonical values merge.
    async def run() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        database = "kato_" + uuid.uuid4().hex[:8]
        store = MongoPatternStore(client, database)
        name = pattern_name([["a"], ["b"]])
        legacy = [["k", "hello"], ["k", '"hello"'], ["k", "3"], ["k", "3.0"], ["k", "True"], ["k", "[1, 2]"]]
        await client[database].patterns.insert_one(
            {"kb_id": "old", "name": name, "events": [["a"], ["b"]], "frequency": 1, "metadata": legacy}
        )
        record = await store.get_pattern("old", name)
        assert record is not None
        assert record.metadata == {"k": ('"True"', '"hello"', "3", "[1,2]")}
        await store.close()

    asyncio.run(run())
