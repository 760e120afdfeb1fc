"""What only the MongoDB pattern store has to do: documents stored before D-29, and the KB
cache's check interval against it. What every pattern store does, the twin included, is the
contract suite (tests/contract/test_pattern_stores.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pymongo import AsyncMongoClient

from kato_grpc.engine.naming import pattern_name
from kato_grpc.errors import StoreRefused, StoreUnavailable
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.mongo_store import MongoStores
from kato_server import devstack
from tests.unit.kit import pattern_write, random_writes

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def test_cache_without_a_published_version_asks_mongodb_once_per_check_interval(stores: Stores) -> None:
    # A KB nobody wrote since Redis last knew it has no published version; calls on it must
    # not cost a MongoDB round trip each, yet a write is still seen within the interval.
    async def run() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoStores(client, "kato_" + uuid.uuid4().hex[:8])
        await store.deployment.ensure_indexes()
        asked = 0
        kb_version = store.reads.kb_version

        async def counting(kb_id: str) -> int:
            nonlocal asked
            asked += 1
            return await kb_version(kb_id)

        store.reads.kb_version = counting  # type: ignore[method-assign]
        # The cache's clock is the test's: the interval passes when the test says so, not
        # while 20 calls run on a machine that may be slow.
        now = 0.0
        cache = KbCache(store.reads, check_seconds=0.5, clock=lambda: now)
        assert len(await cache.view("quiet")) == 0  # the first view loads the KB
        loaded = asked
        for _ in range(20):
            assert len(await cache.view("quiet")) == 0
        assert asked == loaded
        await store.learns.apply_many("quiet", random_writes(3, 2))
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
        store = MongoStores(client, database)
        name = pattern_name([["a"], ["b"]])
        legacy = [["k", "hello"], ["k", '"hello"'], ["k", "3"], ["k", "3.0"], ["k", "True"], ["k", "[1, 2]"]]
        await client[database].patterns.insert_one(
            {"kb_id": "old", "name": name, "events": [["a"], ["b"]], "frequency": 1, "metadata": legacy}
        )
        record = await store.patterns.get_pattern("old", name)
        assert record is not None
        assert record.metadata == {"k": ('"True"', '"hello"', "3", "[1,2]")}
        await store.close()

    asyncio.run(run())


def test_driver_errors_leave_the_store_as_the_projects_own(stores: Stores) -> None:
    # Nothing above the stores knows the driver (architecture.md §7): an outage is
    # StoreUnavailable, a refusal for good StoreRefused, which the dead letter describes.
    async def run() -> None:
        closed = devstack.free_port()
        down: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{closed}/?directConnection=true", serverSelectionTimeoutMS=100
        )
        unreachable = MongoStores(down, "kato_down")
        with pytest.raises(StoreUnavailable):
            await unreachable.reads.kb_version("k")
        with pytest.raises(StoreUnavailable):
            await anext(unreachable.transfer.pattern_rows("k", 10))
        await unreachable.close()

        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoStores(client, "kato_" + uuid.uuid4().hex[:8])
        await store.deployment.ensure_indexes()
        write = pattern_write([["w1"], ["w2"]])
        write.write_id = "full"
        await store.learns.apply_many("k", [write])
        await store.db.patterns.update_one({"kb_id": "k", "name": write.name}, {"$set": {"frequency": 2**63 - 1}})
        again = pattern_write([["w1"], ["w2"]])
        again.write_id = "overflows"
        with pytest.raises(StoreRefused) as refused:
            await store.learns.apply_many("k", [again])
        assert store.learns.is_permanent(refused.value)
        await store.learns.dead_letter("k", again, refused.value)
        dead = await store.db.dead_letters.find_one({"_id": "overflows"})
        assert dead is not None and not dead["error"].startswith("StoreRefused")  # the driver's own
        await store.close()

    asyncio.run(run())
