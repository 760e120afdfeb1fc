"""KB snapshots in MongoDB: written behind writes, loaded by cold caches, the symbol log
compacted under them, and every load equal to what the writes made (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient, MongoClient

from kato_grpc import names
from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
from kato_grpc.errors import DataLoss
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import mongo_snapshots, snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_snapshots import SnapshotMoved
from kato_grpc.stores.mongo_store import MongoStores
from kato_grpc.stores.protocols import KbChanges, StoredSnapshot
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server
from tests import snapshot_forgery as forgery
from tests.integration.support import details, eventually
from tests.integration.test_metrics import scrape
from tests.unit.kit import random_writes as _writes

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
QUICK = SnapshotPolicy(min_patterns=10, quiet_seconds=0.05, growth=0.25)
KB = "snap"


def _run(stores: Stores, body: Callable[[MongoStores], Awaitable[None]], database: str = "") -> None:
    async def run() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(devstack.mongodb_uri(stores[1]))
        store = MongoStores(client, database or "kato_" + uuid.uuid4().hex[:8])
        await store.deployment.ensure_indexes()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(run())


def _loads(store: MongoStores) -> list[KbChanges]:
    """Records what each of the store's refreshes returned."""
    seen: list[KbChanges] = []
    changes_since = store.reads.changes_since

    async def recording(*args: Any, **kwargs: Any) -> KbChanges:
        changes = await changes_since(*args, **kwargs)
        seen.append(changes)
        return changes

    store.reads.changes_since = recording  # type: ignore[method-assign]
    return seen


async def _stored(store: MongoStores, writes: list[storage.PatternWrite]) -> InMemoryKnowledgeBase:
    """The writes applied to the store's KB; the in-memory KB they make."""
    reference = InMemoryKnowledgeBase()
    for w in writes:
        reference.apply(w)
    await store.learns.apply_many(KB, writes)
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
    async def body(store: MongoStores) -> None:
        writes = _writes(160, 11)  # relearns, emotives, metadata: every kind of change
        reference = InMemoryKnowledgeBase()
        for w in writes:
            reference.apply(w)
        for i in range(0, 120, 20):
            await store.learns.apply_many(KB, writes[i : i + 20])
        early = KbCache(store.reads, check_seconds=0)
        await early.view(KB)  # cached before the first snapshot: its log goes from under it
        snapshotter = Snapshotter(store.snapshots, QUICK)
        writer = KbCache(store.reads, check_seconds=0, snapshotter=snapshotter)
        first = (await writer.view(KB)).version
        await _snapshot_written(snapshotter, 1)
        db = store.db
        header = await db.kb_snapshots.find_one({"kb_id": KB, "part": -1})
        assert header is not None and header["version"] == first
        assert await db.symbol_log.count_documents({"kb_id": KB}) > 0  # compaction lags a snapshot
        await store.learns.apply_many(KB, writes[120:140])
        version = (await writer.view(KB)).version  # the changes since: a second snapshot
        await _snapshot_written(snapshotter, 2)
        assert [d["version"] async for d in db.kb_snapshots.find({"kb_id": KB, "part": -1})] == [version]
        # The log the first snapshot held is gone; the KB document says up to where.
        assert await db.symbol_log.count_documents({"kb_id": KB, "kb_version": {"$lte": first}}) == 0
        assert await db.symbol_log.count_documents({"kb_id": KB}) > 0
        assert (await db.kb.find_one({"kb_id": KB}) or {})["compacted_through"] == first

        await store.learns.apply_many(KB, writes[140:])
        cold = KbCache(store.reads, check_seconds=0)
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
    async def body(store: MongoStores) -> None:
        reference = await _stored(store, _writes(60, 12))
        snapshotter = Snapshotter(store.snapshots, QUICK)
        writer = KbCache(store.reads, check_seconds=0, snapshotter=snapshotter)  # kept: it holds the index
        await writer.view(KB)
        await _snapshot_written(snapshotter, 1)
        names = sorted(p.name for p in reference.all_patterns())
        assert await store.admin.delete_pattern(KB, names[0]) is not None
        after = await store.admin.update_pattern(KB, names[1], frequency=42, emotives=None, metadata=None)
        assert after is not None
        updated = after[0]
        loads = _loads(store)
        view = await KbCache(store.reads, check_seconds=0).view(KB)
        # The snapshot's patterns are stale now, its statistics are not (neither change them).
        assert loads[0].snapshot is not None and not loads[0].snapshot_patterns
        expected = {p.name: p for p in reference.all_patterns() if p.name != names[0]} | {names[1]: updated}
        assert {p.name: p for p in view.all_patterns()} == expected
        assert all(view.symbol(s) == reference.symbol(s) for s in "abcdef.$")
        assert len(view.posting_arrays("a").ids) == sum("a" in p.flat for p in expected.values())

        await store.admin.clear(KB)
        assert await store.db.kb_snapshots.count_documents({"kb_id": KB}) == 0
        # A snapshot taken before the wipe and stored after it is never loaded.
        await store.snapshots.save_snapshot(KB, 1, b"stale")
        cleared = await KbCache(store.reads, check_seconds=0).view(KB)
        assert len(cleared) == 0 and cleared.symbol("a") is None
        await snapshotter.close()

    _run(stores, body)


DAMAGES = ("a checksum mismatch", "an array declaring 2**40 elements", "a part deleted")


async def _damaged(store: MongoStores, kb_id: str, damage: str) -> int:
    """A snapshot of the KB's current version stored, then damaged; the version."""
    index = await KbCache(store.reads, check_seconds=0).view(kb_id)
    version, blob = index.version, snapshot.encode(index)
    assert version > 0 and len(index) > 0
    db = store.db
    if damage == "a checksum mismatch":  # the bytes changed after their checksum was taken
        assert await store.snapshots.save_snapshot(kb_id, version, blob)
        await db.kb_snapshots.update_one({"kb_id": kb_id, "part": 0}, {"$set": {"data": b"x" + blob[1:]}})
    elif damage == "an array declaring 2**40 elements":  # damaged before: the checksum is right
        assert await store.snapshots.save_snapshot(kb_id, version, forgery.oversized(blob))
    else:  # stored in three parts, the header unchanged and no newer snapshot: one part lost
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mongo_snapshots, "PART_BYTES", -(-len(blob) // 3))
            assert await store.snapshots.save_snapshot(kb_id, version, blob)
        assert (await db.kb_snapshots.delete_one({"kb_id": kb_id, "version": version, "part": 1})).deleted_count
    return version


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_snapshot(stores: Stores, damage: str) -> None:
    async def body(store: MongoStores) -> None:
        reference = await _stored(store, _writes(40, 13))
        # Not compacted yet: a damaged snapshot is passed over, the documents still hold all.
        version = await _damaged(store, KB, damage)
        for _ in range(2):  # and again: nothing was left half-loaded
            _assert_equal(await KbCache(store.reads, check_seconds=0).view(KB), reference)
        # Compacted: the statistics live only in the snapshot, and it cannot be read. Never
        # UNAVAILABLE ("kept changing"), which retrying clients would loop on.
        await store.snapshots.compact_log(KB, version)
        for _ in range(2):
            with pytest.raises(DataLoss) as lost:
                await KbCache(store.reads, check_seconds=0).view(KB)
            assert lost.value.reason == "KB_SNAPSHOT_UNREADABLE"

    _run(stores, body)


def test_a_part_missing_is_read_again_only_while_a_newer_snapshot_replaces_it(stores: Stores) -> None:
    async def body(store: MongoStores) -> None:
        writes = _writes(20, 14)
        await store.learns.apply_many(KB, writes[:10])
        await store.learns.apply_many(KB, writes[10:])
        db, first, second = store.db, 1, 2
        assert await store.reads.kb_version(KB) == second
        blob = bytes(range(256)) * 30
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mongo_snapshots, "PART_BYTES", 3000)
            assert await store.snapshots.save_snapshot(KB, first, blob)
        stored = [d async for d in db.kb_snapshots.find({"kb_id": KB, "version": first})]
        assert len(stored) == 4  # three parts and the header
        assert (await store.snapshots.latest(KB, at_least=0, at_most=second)) == StoredSnapshot(first, blob)
        # A part gone, the header still the newest: damaged, however often it is read.
        await db.kb_snapshots.delete_one({"kb_id": KB, "version": first, "part": 1})
        for _ in range(2):
            with pytest.raises(snapshot.SnapshotError):
                await store.snapshots.latest(KB, at_least=0, at_most=second)
        # A header newer than the KB (a forgery: no snapshot can be ahead of its KB) replaces
        # nothing: still damaged, not "read again" forever.
        await db.kb_snapshots.insert_one({"kb_id": KB, "version": 99, "part": -1, "parts": 0, "sha256": ""})
        with pytest.raises(snapshot.SnapshotError):
            await store.snapshots.latest(KB, at_least=0, at_most=second)
        await db.kb_snapshots.delete_one({"kb_id": KB, "version": 99})
        # A writer replacing it stores its own header before it deletes the older parts: a
        # reader that found the older header, then parts missing, reads again (and then finds
        # the newer one). The moment is rebuilt: the newer one stored, the older one not yet
        # all deleted.
        assert await store.snapshots.save_snapshot(KB, second, blob)
        await db.kb_snapshots.insert_many([d for d in stored if d["part"] != 1])
        with pytest.raises(SnapshotMoved):
            await store.snapshots.latest(KB, at_least=0, at_most=first)
        assert (await store.snapshots.latest(KB, at_least=0, at_most=second)) == StoredSnapshot(second, blob)

    _run(stores, body)


def test_malformed_snapshot_documents_are_damage(stores: Stores) -> None:
    async def body(store: MongoStores) -> None:
        await store.learns.apply_many(KB, _writes(10, 16))
        db, blob = store.db, bytes(range(256)) * 4
        assert await store.snapshots.save_snapshot(KB, 1, blob)
        header = await db.kb_snapshots.find_one({"kb_id": KB, "part": -1})
        assert header is not None
        # Sizes a forged document declares are compared with what is stored, never allocated.
        for collection_filter, change in (
            ({"part": -1}, {"parts": 2**40}),
            ({"part": -1}, {"sha256": None}),
            ({"part": 0}, {"data": 2**40}),  # bytes(2**40) would be a TiB of zeros
            ({"part": 0}, {"data": "text"}),
        ):
            await db.kb_snapshots.update_one({"kb_id": KB, **collection_filter}, {"$set": change})
            with pytest.raises(snapshot.SnapshotError):
                await store.snapshots.latest(KB, at_least=0, at_most=1)
            await db.kb_snapshots.delete_many({"kb_id": KB})
            assert await store.snapshots.save_snapshot(KB, 1, blob)

    _run(stores, body)


def _answers(stub: svc_grpc.KatoServiceStub, kb_id: str) -> tuple[object, ...]:
    """A KB's totals and symbol statistics as the service answers them (from its cache)."""
    kb = names.knowledge_base(kb_id)
    stats = stub.GetKnowledgeBase(svc.GetKnowledgeBaseRequest(name=kb), timeout=60)
    symbols = stub.ListSymbols(svc.ListSymbolsRequest(parent=kb, page_size=1000), timeout=60).symbols
    return (
        (stats.pattern_count, stats.total_pattern_frequencies, stats.symbol_count),
        {s.symbol: (s.frequency, s.pattern_member_frequency, dict(s.affinity)) for s in symbols},
    )


def test_damaged_snapshots_through_the_service(stores: Stores, log_dir: Path) -> None:
    database = "kato_" + uuid.uuid4().hex[:8]
    cases = {
        (damage, compacted): f"damaged-{n}-{int(compacted)}"
        for n, damage in enumerate(("an array declaring 2**40 elements", "a part deleted"))
        for compacted in (False, True)
    }
    reference = InMemoryKnowledgeBase()
    for w in _writes(40, 15):
        reference.apply(w)
    totals = reference.totals()
    expected = (
        (totals.total_unique_patterns, totals.total_pattern_frequencies, reference.symbol_count()),
        {
            s: (st.frequency, st.pattern_member_frequency, dict(st.affinity))
            for s, st in reference.symbols_after(None, 1000)
        },
    )

    async def damage(store: MongoStores) -> None:
        for (what, compacted), kb_id in cases.items():
            writes = _writes(40, 15)
            for w in writes:  # the same learns in every KB, each applied once (the ledger's ids)
                w.write_id = f"{kb_id}-{w.write_id}"
            await store.learns.apply_many(kb_id, writes)
            version = await _damaged(store, kb_id, what)
            if compacted:
                await store.snapshots.compact_log(kb_id, version)

    _run(stores, damage, database)
    # A fresh server (writing no snapshot of its own): every KB is loaded cold, from its
    # damaged snapshot or its documents.
    server = new_server(*stores, log_dir, database).start(KATO_KB_SNAPSHOTS="false")
    try:
        stub = server.stub()
        for (what, compacted), kb_id in cases.items():
            for _ in range(2):  # the same answer again: nothing cached half-loaded
                if not compacted:
                    assert _answers(stub, kb_id) == expected, what
                    continue
                with pytest.raises(grpc.RpcError) as lost:
                    _answers(stub, kb_id)
                assert details(lost.value)[:2] == (grpc.StatusCode.DATA_LOSS, "KB_SNAPSHOT_UNREADABLE"), what
        # What operations.md tells an operator to do ("Backup and restore"): export the KB
        # (its pattern documents carry their affinity), clear it, import the export.
        lost_kb = cases["a part deleted", True]
        with KatoClient(server.address) as kato:
            exported = list(kato.export_knowledge_base(lost_kb))
            kato.clear_knowledge_base(knowledge_base=lost_kb)
            patterns = [p for part in exported for p in part.patterns]
            kato.import_knowledge_base(build.import_requests(lost_kb, "restore", patterns))
        assert _answers(stub, lost_kb) == expected
    finally:
        server.stop()


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


# --- KBs only written (issue 23) ------------------------------------------------------------


def _observations(patterns: int, first: int = 0) -> list[pb.Observation]:
    """Three events per pattern, each pattern's own symbols."""
    return [pb.Observation(strings=[f"t{i}-{j}", f"x{j}"]) for i in range(first, first + patterns) for j in range(3)]


def _bulk_trained(kato: KatoClient, kb_id: str, patterns: int) -> None:
    """Bulk training as bench.service does it: predictions off, a pattern every three
    observations, nothing ever read (the process never caches the KB)."""
    config = pb.SessionConfig(process_predictions=False)
    session = kato.create_session(kb_id, config=config).name
    for first in range(0, patterns, 50):
        count = min(50, patterns - first)
        reply = kato.observe_sequence(
            session, _observations(count, first), learn_after=[3 * k + 2 for k in range(count)]
        )
        assert len(reply.auto_learned_patterns) == count


def _imported(kato: KatoClient, kb_id: str, patterns: int) -> None:
    stored = [
        pb.Pattern(events=[pb.Event(symbols=[f"i{i}"]), pb.Event(symbols=["y", f"z{i % 7}"])], frequency=1 + i % 3)
        for i in range(patterns)
    ]
    kato.import_knowledge_base(build.import_requests(kb_id, "fill", stored, batch_size=40))


def _snapshot_of_the_kb(db: Any, kb_id: str) -> bool:
    """Whether the KB's newest snapshot is of its current version (a cold load reads no document)."""
    version = (db.kb.find_one({"kb_id": kb_id}) or {}).get("version", -1)
    return db.kb_snapshots.find_one({"kb_id": kb_id, "part": -1, "version": version}) is not None


def _first_calls_from_snapshots(stores: Stores, log_dir: Path, database: str, expected: dict[str, int]) -> None:
    """A fresh server (writing no snapshot of its own) answers its first call on each KB from
    the KB's snapshot: its cache loads each from a snapshot, none from documents."""
    port = devstack.free_port()
    reader = new_server(*stores, log_dir, database).start(KATO_KB_SNAPSHOTS="false", KATO_METRICS_PORT=str(port))
    try:
        with KatoClient(reader.address) as kato:
            for kb_id, patterns in expected.items():
                stats = kato.get_knowledge_base(kb_id)
                assert not stats.cache.cached and stats.pattern_count == patterns, kb_id
        metrics = scrape(port)
        assert metrics.get('kato_kb_cache_loads_total{source="snapshot"}') == len(expected)
        assert metrics.get('kato_kb_cache_loads_total{source="documents"}', 0) == 0
    finally:
        reader.stop()


def test_kbs_only_written_get_their_snapshot_from_the_writer(stores: Stores, log_dir: Path) -> None:
    database, tag = "kato_" + uuid.uuid4().hex[:8], uuid.uuid4().hex[:6]
    imported, trained = f"imported-{tag}", f"trained-{tag}"
    port = devstack.free_port()
    writer = new_server(*stores, log_dir, database).start(
        KATO_KB_SNAPSHOT_MIN_PATTERNS="50", KATO_KB_SNAPSHOT_QUIET_SECONDS="0.3", KATO_METRICS_PORT=str(port)
    )
    mongo: MongoClient[dict[str, Any]] = MongoClient(devstack.mongodb_uri(stores[1]))
    db = mongo[database]
    try:
        with KatoClient(writer.address) as kato:
            _imported(kato, imported, 120)
            _bulk_trained(kato, trained, 150)
            assert eventually(lambda: _snapshot_of_the_kb(db, imported) and _snapshot_of_the_kb(db, trained), 60)
        # The writer wrote them, without ever having either KB in its cache. It counts a
        # snapshot once it has also compacted the KB's log (after the snapshot is stored).
        assert eventually(lambda: scrape(port).get('kato_kb_snapshots_total{result="written"}', 0) >= 2, 60)
        assert not any(k.startswith("kato_kb_cache_loads_total") for k in scrape(port))
    finally:
        writer.stop()
        mongo.close()
    _first_calls_from_snapshots(stores, log_dir, database, {imported: 120, trained: 150})


def test_a_kb_whose_writer_died_within_its_quiet_period_gets_its_snapshot_from_the_next_sweep(
    stores: Stores, log_dir: Path
) -> None:
    database, kb_id = "kato_" + uuid.uuid4().hex[:8], "orphan-" + uuid.uuid4().hex[:6]
    settings = {"KATO_KB_SNAPSHOT_MIN_PATTERNS": "50", "KATO_KB_SNAPSHOT_QUIET_SECONDS": "3600"}
    writer = new_server(*stores, log_dir, database).start(**settings)
    mongo: MongoClient[dict[str, Any]] = MongoClient(devstack.mongodb_uri(stores[1]))
    db = mongo[database]
    try:
        with KatoClient(writer.address) as kato:
            _imported(kato, kb_id, 80)
        writer.stop(signal.SIGKILL)  # its snapshot was an hour away
        assert db.kb_snapshots.count_documents({"kb_id": kb_id}) == 0
        # The next process to start sweeps: the KB is due, and has been quiet.
        successor = new_server(*stores, log_dir, database).start(**settings | {"KATO_KB_SNAPSHOT_QUIET_SECONDS": "0.3"})
        try:
            assert eventually(lambda: _snapshot_of_the_kb(db, kb_id), 60)
        finally:
            successor.stop()
    finally:
        writer.stop()
        mongo.close()
    _first_calls_from_snapshots(stores, log_dir, database, {kb_id: 80})
