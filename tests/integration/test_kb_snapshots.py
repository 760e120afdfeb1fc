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
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import snapshot
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


async def _stored(store: MongoPatternStore, writes: list[storage.PatternWrite]) -> InMemoryKnowledgeBase:
    """The writes applied to the store's KB; the in-memory KB they make."""
    reference = InMemoryKnowledgeBase()
    for w in writes:
        reference.apply(w)
    await store.apply_many(KB, writes)
    return reference


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
        await early.view(KB)  # cached before the first snapshot: its log goes from under it
        snapshotter = Snapshotter(store, QUICK)
        writer = KbCache(store, check_seconds=0, snapshotter=snapshotter)
        first = (await writer.view(KB)).version
        await _snapshot_written(snapshotter, 1)
        db = store._db
        header = await db.kb_snapshots.find_one({"kb_id": KB, "part": -1})
        assert header is not None and header["version"] == first
        assert await db.symbol_log.count_documents({"kb_id": KB}) > 0  # compaction lags a snapshot
        await store.apply_many(KB, writes[120:140])
        version = (await writer.view(KB)).version  # the changes since: a second snapshot
        await _snapshot_written(snapshotter, 2)
        assert [d["version"] async for d in db.kb_snapshots.find({"kb_id": KB, "part": -1})] == [version]
        # The log the first snapshot held is gone; the KB document says up to where.
        assert await db.symbol_log.count_documents({"kb_id": KB, "kb_version": {"$lte": first}}) == 0
        assert await db.symbol_log.count_documents({"kb_id": KB}) > 0
        assert (await db.kb.find_one({"kb_id": KB}) or {})["compacted_through"] == first

        await store.apply_many(KB, writes[140:])
        cold = KbCache(store, check_seconds=0)
        loads = _loads(store)
        views = await asyncio.gather(*(cold.view(KB) for _ in range(8)))  # eight callers, one load
        view = views[0]
        assert len(loads) == 1 and all(v is view for v in views)
        assert loads[0].snapshot is not None and loads[0].snapshot.version == version
        # A read retried under writes does not read the same snapshot's parts again.
        known = loads[0].snapshot
        assert await store.snapshots.latest(KB, at_least=0, at_most=version, known=known) is known
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
        reference = await _stored(store, _writes(60, 12))
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
        reference = await _stored(store, _writes(40, 13))
        db = store._db
        # Not compacted yet: a damaged snapshot is passed over, the documents still hold all.
        version = (await KbCache(store, check_seconds=0).view(KB)).version
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
    kb = names.knowledge_base(node)
    writer = new_server(*stores, log_dir, database).start(
        KATO_KB_SNAPSHOT_MIN_PATTERNS="20", KATO_KB_SNAPSHOT_QUIET_SECONDS="0.2"
    )
    rng = random.Random(7)
    mongo: MongoClient[dict[str, Any]] = MongoClient(devstack.mongodb_uri(stores[1]))
    db = mongo[database]

    def ask(kato: KatoClient) -> tuple[object, ...]:
        """Predictions and future potentials for a fresh session's two events."""
        session = kato.create_session(node).name
        kato.observe(session, ["a", "b"])
        answer = kato.observe(session, ["c"], return_predictions=True)
        return tuple(answer.predictions), tuple(answer.future_potentials)

    def snapshot_of_the_current_version() -> bool:
        current = (db.kb.find_one({"kb_id": node}) or {})["version"]
        return db.kb_snapshots.find_one({"kb_id": node, "part": -1, "version": current}) is not None

    try:
        with KatoClient(writer.address) as kato:
            learner = kato.create_session(node).name
            for learns in (40, 10):  # the second snapshot compacts the log the first one holds
                for _ in range(learns):
                    for _ in range(3):
                        kato.observe(learner, rng.sample("abcdefghij", 2), emotives={"joy": rng.uniform(-1, 1)})
                    kato.learn(learner)
                ask(kato)  # the KB cached or refreshed: a snapshot follows
                assert eventually(snapshot_of_the_current_version)
            # Only the snapshot holds the first learns' statistics now.
            assert eventually(lambda: (db.kb.find_one({"kb_id": node}) or {}).get("compacted_through", 0) > 0)
            expected = ask(kato)
            assert expected[0] and expected[1]
            symbols, stats = list(kato.symbols(kb)), kato.get_knowledge_base(kb)
    finally:
        writer.stop()
        mongo.close()
    reader = new_server(*stores, log_dir, database).start(KATO_KB_SNAPSHOTS="false")
    try:
        with KatoClient(reader.address) as kato:
            assert ask(kato) == expected
            assert list(kato.symbols(kb)) == symbols
            assert kato.get_knowledge_base(kb) == stats
    finally:
        reader.stop()
