"""KB snapshots in MongoDB: written behind writes, loaded by cold caches, the symbol log
compacted under them, and every load equal to what the writes made (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from kato_grpc import devstack, names
from kato_grpc.client import KatoClient
from kato_grpc.devserver import new_server
from kato_grpc.errors import DataLoss
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.mongo_reads import KbChanges
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from tests.integration.support import eventually
from tests.integration.test_mongo_store import _writes

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
QUICK = SnapshotPolicy(min_patterns=10, quiet_seconds=0.05, growth=0.25)
KB = "snap"


def _run(stores: Stores, body: Callable[[MongoPatternStore], Awaitable[None]]) -> None:
    async def run() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoPatternStore(client, "kato_" + uuid.uuid4().hex[:8])
        await store.ensure_indexes()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(run())


def _loads(store: MongoPatternStore) -> list[KbChanges]:
    """Records what each of the store's refreshes returned."""
    seen: list[KbChanges] = []
    changes_since = store.changes_since

    async def recording(*args: Any, **kwargs: Any) -> KbChanges:
        changes = await changes_since(*args, **kwargs)
        seen.append(changes)
        return changes

    store.changes_since = recording  # type: ignore[method-assign]
    return seen


def _assert_equal(view: KnowledgeIndex, reference: KnowledgeIndex) -> None:
    assert view.totals() == reference.totals()
    assert {p.name: p for p in view.all_patterns()} == {p.name: p for p in reference.all_patterns()}
    for symbol in "abcdef.$":
        assert view.symbol(symbol) == reference.symbol(symbol), symbol


async def _snapshot_written(snapshotter: Snapshotter, count: int) -> None:
    deadline = time.monotonic() + 20
    while snapshotter.written < count:
        assert time.monotonic() < deadline, "no snapshot was written"
        await asyncio.sleep(0.02)


def test_a_cold_cache_loads_the_snapshot_and_what_came_after_it(stores: Stores) -> None:
    async def body(store: MongoPatternStore) -> None:
        writes = _writes(160, 11)  # relearns, emotives, metadata: every kind of change
        reference = InMemoryKnowledgeBase()
        for w in writes:
            reference.apply(w)
        for i in range(0, 120, 20):
            await store.apply_many(KB, writes[i : i + 20])
        early = KbCache(store, check_seconds=0)
        await early.view(KB)  # cached before the snapshot: its log goes from under it
        snapshotter = Snapshotter(store, QUICK)
        writer = KbCache(store, check_seconds=0, snapshotter=snapshotter)
        version = (await writer.view(KB)).version
        await _snapshot_written(snapshotter, 1)
        db = store._db
        header = await db.kb_snapshots.find_one({"kb_id": KB, "part": -1})
        assert header is not None and header["version"] == version
        # The log the snapshot holds is gone; the KB document says up to where.
        assert await db.symbol_log.count_documents({"kb_id": KB}) == 0
        assert (await db.kb.find_one({"kb_id": KB}) or {})["compacted_through"] == version

        await store.apply_many(KB, writes[120:])
        cold = KbCache(store, check_seconds=0)
        loads = _loads(store)
        views = await asyncio.gather(*(cold.view(KB) for _ in range(8)))  # eight callers, one load
        view = views[0]
        assert len(loads) == 1 and all(v is view for v in views)
        assert loads[0].snapshot is not None and loads[0].snapshot.version == version
        after = await db.patterns.count_documents({"kb_id": KB, "kb_version": {"$gt": version}})
        assert len(loads[0].patterns) == after < len(view)  # only what came after it
        _assert_equal(view, reference)
        # The cache from before the compaction cannot replay the log: it reloads whole.
        _assert_equal(await early.view(KB), reference)
        _assert_equal(await writer.view(KB), reference)
        await snapshotter.close()

    _run(stores, body)


def test_deletes_updates_and_wipes_after_a_snapshot(stores: Stores) -> None:
    async def body(store: MongoPatternStore) -> None:
        writes = _writes(60, 12)
        reference = InMemoryKnowledgeBase()
        for w in writes:
            reference.apply(w)
        await store.apply_many(KB, writes)
        snapshotter = Snapshotter(store, QUICK)
        writer = KbCache(store, check_seconds=0, snapshotter=snapshotter)  # kept: it holds the index
        await writer.view(KB)
        await _snapshot_written(snapshotter, 1)
        names = sorted(p.name for p in reference.all_patterns())
        assert await store.delete_pattern(KB, names[0]) is not None
        updated = await store.update_pattern(KB, names[1], frequency=42, emotives=None, metadata=None)
        assert updated is not None
        loads = _loads(store)
        view = await KbCache(store, check_seconds=0).view(KB)
        # The snapshot's patterns are stale now, its statistics are not (neither change them).
        assert loads[0].snapshot is not None and not loads[0].snapshot_patterns
        expected = {p.name: p for p in reference.all_patterns() if p.name != names[0]} | {names[1]: updated}
        assert {p.name: p for p in view.all_patterns()} == expected
        assert all(view.symbol(s) == reference.symbol(s) for s in "abcdef.$")
        assert len(view.posting_arrays("a").ids) == sum("a" in p.flat for p in expected.values())

        await store.clear(KB)
        assert await store._db.kb_snapshots.count_documents({"kb_id": KB}) == 0
        # A snapshot taken before the wipe and stored after it is never loaded.
        await store.save_snapshot(KB, 1, b"stale")
        cleared = await KbCache(store, check_seconds=0).view(KB)
        assert len(cleared) == 0 and cleared.symbol("a") is None
        await snapshotter.close()

    _run(stores, body)


def test_a_damaged_snapshot(stores: Stores) -> None:
    async def body(store: MongoPatternStore) -> None:
        writes = _writes(40, 13)
        reference = InMemoryKnowledgeBase()
        for w in writes:
            reference.apply(w)
        await store.apply_many(KB, writes)
        db = store._db
        # Not compacted yet: a damaged snapshot is passed over, the documents still hold all.
        version = (await KbCache(store, check_seconds=0).view(KB)).version
        from kato_grpc.stores import snapshot  # noqa: PLC0415 - only this test encodes by hand

        blob = snapshot.encode(await KbCache(store, check_seconds=0).view(KB))
        assert await store.save_snapshot(KB, version, blob)
        await db.kb_snapshots.update_one({"kb_id": KB, "part": 0}, {"$set": {"data": b"x" + blob[1:]}})
        _assert_equal(await KbCache(store, check_seconds=0).view(KB), reference)
        # Compacted: the statistics live only in the snapshot, and it cannot be read.
        await store.compact_log(KB, version)
        with pytest.raises(DataLoss):
            await KbCache(store, check_seconds=0).view(KB)

    _run(stores, body)


def test_a_fresh_server_answers_from_the_snapshot_another_server_wrote(stores: Stores, log_dir: Path) -> None:
    database, node = "kato_" + uuid.uuid4().hex[:8], "snap-" + uuid.uuid4().hex[:6]
    writer = new_server(*stores, log_dir, database).start(
        KATO_KB_SNAPSHOT_MIN_PATTERNS="20", KATO_KB_SNAPSHOT_QUIET_SECONDS="0.2"
    )
    rng = random.Random(7)
    try:
        with KatoClient(writer.address) as kato:
            learner = kato.create_session(node).name
            for _ in range(40):
                for _ in range(3):
                    kato.observe(learner, rng.sample("abcdefghij", 2), emotives={"joy": rng.uniform(-1, 1)})
                kato.learn(learner)
            query = kato.create_session(node).name
            kato.observe(query, ["a", "b"])
            kato.observe(query, ["c"])
            expected = kato.get_predictions(query)  # loads the KB: 40 patterns, a snapshot follows
            mongo: MongoClient[dict[str, Any]] = MongoClient(devstack.mongodb_uri(stores[1]))
            with mongo:
                db = mongo[database]
                assert eventually(lambda: db.kb_snapshots.find_one({"kb_id": node, "part": -1}) is not None)
                # The log goes into the snapshot: a fresh server can get the statistics only from it.
                assert eventually(lambda: db.symbol_log.count_documents({"kb_id": node}) == 0)
            symbols = list(kato.symbols(names.knowledge_base(node)))
            stats = kato.get_knowledge_base(names.knowledge_base(node))
    finally:
        writer.stop()
    reader = new_server(*stores, log_dir, database).start(KATO_KB_SNAPSHOTS="false")
    try:
        with KatoClient(reader.address) as kato:
            assert kato.get_predictions(query) == expected
            assert list(kato.symbols(names.knowledge_base(node))) == symbols
            assert kato.get_knowledge_base(names.knowledge_base(node)) == stats
    finally:
        reader.stop()
