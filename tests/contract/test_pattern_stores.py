"""The pattern side's contract (architecture.md §4, §5): the same tests against the in-memory
twin (``kato_grpc/stores/memory.py``) and the MongoDB classes (``mongo_store.py``) on a local
SecantusDB. Each test is given the store as the Protocols of ``protocols.py`` only, so what
it asserts is what every use case may rely on, whichever store it is given."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from kato_grpc.engine import importing
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import MAX_PATTERN_METADATA_BYTES, canonical_json, metadata_bytes
from kato_grpc.errors import CounterLimit, DataLoss, StoreRefused, StoreUnavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase, InMemoryPatternStore
from kato_grpc.stores.mongo_docs import Doc
from kato_grpc.stores.mongo_store import MongoStores
from kato_grpc.stores.protocols import (
    Applied,
    DeploymentIdentity,
    KbEvent,
    KbEventLog,
    KbReads,
    KbSnapshots,
    KbTransferStore,
    KbWrites,
    PatternReads,
    PatternStore,
    TransactionSessions,
)
from kato_grpc.v1 import engine_pb2 as pb
from kato_server import devstack
from tests.unit.kit import pattern_write, random_writes

KB = "contract"
MAX = importing.MAX_SET_COUNT


@dataclass(frozen=True)
class Side:
    """The pattern side as the service is given it: one Protocol per concern."""

    learns: PatternStore
    reads: KbReads
    patterns: PatternReads
    writes: KbWrites
    transfer: KbTransferStore
    events: KbEventLog
    snapshots: KbSnapshots
    deployment: DeploymentIdentity
    sessions: TransactionSessions


Body = Callable[[Side], Coroutine[Any, Any, None]]


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.LocalServer]:
    server = devstack.start_mongo(Path(tmp_path_factory.mktemp("contract")) / "mongo")
    yield server
    server.stop()


@pytest.fixture(params=["memory", "mongodb"])
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Runs a test body against a new, empty store of the kind the parameter names."""
    if request.param == "memory":

        def in_memory(body: Body) -> None:
            twin = InMemoryPatternStore()
            asyncio.run(body(Side(twin, twin, twin, twin, twin, twin, twin, twin, twin)))

        return in_memory
    server: devstack.LocalServer = request.getfixturevalue("mongo")

    def on_mongodb(body: Body) -> None:
        async def go() -> None:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(devstack.mongodb_uri(server))
            m = MongoStores(client, "contract_" + uuid.uuid4().hex[:8])
            await m.deployment.ensure_indexes()
            try:
                await body(
                    Side(
                        m.learns,
                        m.reads,
                        m.patterns,
                        m.admin,
                        m.transfer,
                        m.events,
                        m.snapshots,
                        m.deployment,
                        m.sessions,
                    )
                )
            finally:
                await m.close()

        asyncio.run(go())

    return on_mongodb


def _imported(events: list[list[str]], frequency: int) -> storage.PatternWrite:
    return importing.pattern_write(
        pb.Pattern(events=[pb.Event(symbols=e) for e in events], frequency=frequency), {}, "p"
    )


async def _summary(side: Side) -> tuple[int, int, int]:
    version, totals, _ = await side.transfer.kb_summary(KB)
    return version, totals.total_unique_patterns, totals.total_pattern_frequencies


def test_each_write_applies_once_and_each_batch_is_one_version(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(12, 1)
        assert await side.reads.kb_version(KB) == 0
        first = await side.learns.apply_many(KB, writes[:5])
        assert (first.count, first.version) == (5, 1)
        again = await side.learns.apply_many(KB, writes[:5])  # a retry: the ledger has them all
        assert (again.count, again.version) == (0, 1)
        # An id repeated inside a batch counts once; a batch partly applied applies the rest.
        assert (await side.learns.apply_many(KB, [*writes[5:9], writes[6]])).count == 4
        partly = await side.learns.apply_many(KB, [writes[2], writes[9]])
        assert (partly.count, partly.version) == (1, 3)
        assert (await side.learns.apply_many(KB, [])).version == 3
        assert await side.reads.kb_version(KB) == 3
        assert (await _summary(side))[2] == 10

    run(body)


def test_an_import_batch_applies_once_per_batch_id(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        batch = [_imported([["a"], ["b"]], 3), _imported([["c"], ["a"]], 2)]
        assert (await side.transfer.apply_batch(KB, "import:1", batch)).count == 2
        assert (await side.transfer.apply_batch(KB, "import:1", batch)).count == 0
        assert await _summary(side) == (1, 2, 5)
        assert (await side.transfer.apply_batch(KB, "import:2", batch)).count == 2  # another batch
        assert await _summary(side) == (2, 2, 10)
        record = await side.patterns.get_pattern(KB, pattern_name([["a"], ["b"]]))
        assert record is not None and record.frequency == 6

    run(body)


def test_a_batch_past_a_counter_bound_is_refused_whole(run: Callable[[Body], None]) -> None:
    # engine.md D-30: nothing of the batch applied, no version, no event; refused for good.
    async def body(side: Side) -> None:
        await side.learns.apply_many(KB, [pattern_write([["x"]])])  # one symbol: D-30 leaves room
        before = (await _summary(side), await side.events.events_since(KB, 0, 100))
        batch = [_imported([["a"], ["b"]], MAX // 2), _imported([["c"], ["d"]], MAX // 2)]
        applies: list[Callable[[], Awaitable[Applied]]] = [
            lambda: side.learns.apply_many(KB, batch),
            lambda: side.transfer.apply_batch(KB, "import:big", batch),
        ]
        for apply in applies:
            with pytest.raises(CounterLimit) as refused:
                await apply()
            assert refused.value.position == 1 and side.learns.is_permanent(refused.value)
            assert (await _summary(side), await side.events.events_since(KB, 0, 100)) == before
            assert await side.patterns.get_pattern(KB, batch[0].name) is None
        assert (await side.transfer.apply_batch(KB, "import:big", batch[:1])).count == 1
        assert (await _summary(side))[2] == 1 + MAX // 2

    run(body)


def test_what_is_permanent(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        assert side.learns.is_permanent(StoreRefused("too large"))
        assert not side.learns.is_permanent(StoreUnavailable("down"))
        write = pattern_write([["a"], ["b"]])
        write.write_id = "refused"
        for _ in range(2):  # kept once, however often the applier gives it
            await side.learns.dead_letter(KB, write, StoreRefused("too large"))

    run(body)


def test_the_version_only_moves_on(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(6, 2)
        versions = [await side.writes.clear(KB)]  # a KB never written: wiped all the same
        versions.append((await side.learns.apply_many(KB, writes[:3])).version)
        name = writes[0].name
        updated = await side.writes.update_pattern(KB, name, frequency=7, emotives=None, metadata=None)
        assert updated is not None and updated[0].frequency == 7
        assert updated[1] == await side.reads.kb_version(KB)
        versions.append(updated[1])
        deleted = await side.writes.delete_pattern(KB, name)
        assert deleted is not None
        versions += [deleted, await side.writes.clear(KB)]
        versions.append((await side.learns.apply_many(KB, writes[3:])).version)
        assert versions == [1, 2, 3, 4, 5, 6]
        # Neither a pattern it lacks nor a write it applied moves it.
        absent = "0" * 40
        assert await side.writes.delete_pattern(KB, absent) is None
        assert await side.writes.update_pattern(KB, absent, frequency=1, emotives=None, metadata=None) is None
        assert (await side.learns.apply_many(KB, writes)).version == 6

    run(body)


def test_a_wipe_with_an_id_happens_once(run: Callable[[Body], None]) -> None:
    """A ClearKnowledgeBase retried after it wiped but before it recorded its request id
    (kb_admin.py) wipes nothing the second time: the id's ledger record commits with the wipe."""

    async def body(side: Side) -> None:
        assert await side.writes.clear(KB, "wipe:one") == 1
        applied = await side.learns.apply_many(KB, random_writes(3, 2))
        assert await side.writes.clear(KB, "wipe:one") == applied.version  # nothing wiped, nothing moved
        assert await side.patterns.list_patterns(KB, "", 100) != []
        assert await side.writes.clear(KB) == applied.version + 1  # without an id: every time
        assert await side.writes.clear(KB, "wipe:one") == applied.version + 1  # the ledger outlives wipes
        assert await side.writes.clear(KB, "wipe:two") == applied.version + 2

    run(body)


def test_events_come_in_version_order_and_a_wipe_keeps_them(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        a, b = pattern_write([["a"], ["b"]]), pattern_write([["b"], ["c"]])
        await side.learns.apply_many(KB, [a])
        again = pattern_write([["a"], ["b"]])
        await side.learns.apply_many(KB, [again, b])  # one version: both events
        await side.learns.apply_many(KB, [importing.vector_write([("v", [1.0, 2.0])])])  # no event
        await side.writes.update_pattern(KB, a.name, frequency=5, emotives=None, metadata=None)
        await side.writes.delete_pattern(KB, b.name)
        await side.writes.clear(KB)
        expected = [
            KbEvent(1, "learned", a.name),
            KbEvent(2, "relearned", a.name),
            KbEvent(2, "learned", b.name),
            KbEvent(4, "updated", a.name),
            KbEvent(5, "deleted", b.name),
            KbEvent(6, "cleared", ""),
        ]
        assert await side.events.events_since(KB, 0, 100) == expected
        assert await side.events.kb_version(KB) == 6
        assert await side.events.events_since(KB, 2, 100) == expected[3:]
        assert await side.events.events_since(KB, 0, 2) == expected[:3]  # two versions, never split
        assert await side.events.events_since(KB, 6, 100) == []

    run(body)


def test_a_wipe_leaves_the_ledger_and_no_snapshot_from_before_it(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(8, 3)
        applied = await side.learns.apply_many(KB, [*writes, importing.vector_write([("v", [1.0])])])
        assert await side.snapshots.save_snapshot(KB, applied.version, b"before the wipe")
        cleared = await side.writes.clear(KB)
        assert cleared == applied.version + 1
        version, totals, vectors = await side.transfer.kb_summary(KB)
        assert (version, totals.total_unique_patterns, totals.total_pattern_frequencies, vectors) == (cleared, 0, 0, 0)
        assert await side.patterns.list_patterns(KB, "", 100) == []
        assert await side.snapshots.latest_snapshot_version(KB) == 0
        # A late retry of a write applied before the wipe cannot bring its pattern back.
        assert (await side.learns.apply_many(KB, writes[:2])).count == 0
        assert await side.patterns.get_pattern(KB, writes[0].name) is None
        # A snapshot taken before the wipe and stored after it is never loaded.
        assert await side.snapshots.save_snapshot(KB, applied.version, b"stale")
        changes = await side.reads.changes_since(KB, 0)
        assert changes.full and changes.snapshot is None and changes.version == cleared
        assert changes.patterns == [] and changes.symbol_changes == [] and changes.vectors == []

    run(body)


def test_a_cache_over_the_store_holds_what_the_writes_make(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        cache = KbCache(side.reads, check_seconds=0)  # no published versions: asks the store each time
        reference = InMemoryKnowledgeBase()
        writes = random_writes(40, 4)
        for w in writes:
            reference.apply(w)
        await side.learns.apply_many(KB, writes[:25])
        first = await cache.view(KB)
        cached, cached_patterns = first.version, len(first)  # the cache may refresh it in place
        assert cached_patterns > 0
        for w in writes[25:]:  # one version each: the cache catches up incrementally
            await side.learns.apply_many(KB, [w])
        changes = await side.reads.changes_since(KB, cached)
        assert not changes.full and len(changes.symbol_changes) == 15
        assert {p.name for p in changes.patterns} == {w.name for w in writes[25:]}
        view = await cache.view(KB)
        assert view.version == cached + 15
        assert view.totals() == reference.totals()
        assert {p.name: p for p in view.all_patterns()} == {p.name: p for p in reference.all_patterns()}
        for symbol in "abcdef.$":
            assert view.symbol(symbol) == reference.symbol(symbol), symbol
        # A change the log cannot replay (a delete): the next refresh is a full load.
        await side.writes.delete_pattern(KB, writes[0].name)
        assert (await side.reads.changes_since(KB, view.version)).full
        assert len(await cache.view(KB)) == len(view) - 1
        await side.writes.clear(KB)
        cleared = await cache.view(KB)
        assert len(cleared) == 0 and cleared.totals().total_unique_patterns == 0

    run(body)


def test_a_full_load_starts_from_the_newest_snapshot_and_a_compacted_log_needs_one(
    run: Callable[[Body], None],
) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(20, 5)
        await side.learns.apply_many(KB, writes[:10])
        await side.learns.apply_many(KB, writes[10:])
        assert await side.snapshots.save_snapshot(KB, 1, b"one")
        assert not await side.snapshots.save_snapshot(KB, 1, b"one again")  # one per version
        assert await side.snapshots.latest_snapshot_version(KB) == 1
        load = await side.reads.changes_since(KB, 0)
        assert load.full and load.snapshot is not None and (load.snapshot.version, load.snapshot.blob) == (1, b"one")
        assert load.snapshot_patterns and len(load.symbol_changes) == 10  # the second batch's
        assert {p.name for p in load.patterns} == {w.name for w in writes[10:]}
        assert await side.snapshots.compact_log(KB, 1) == 1  # the log the snapshot holds
        assert len((await side.reads.changes_since(KB, 0)).symbol_changes) == 10
        assert not (await side.reads.changes_since(KB, 1)).full  # the log after it is still there
        assert await side.snapshots.save_snapshot(KB, 2, b"two")
        assert await side.snapshots.latest_snapshot_version(KB) == 2
        assert await side.snapshots.compact_log(KB, 2) == 1
        moved = await side.reads.changes_since(KB, 1)  # its log is gone now: a full load
        assert moved.full and moved.snapshot is not None and moved.snapshot.version == 2
        assert moved.symbol_changes == [] and moved.patterns == []
        # A delete after the snapshot: its statistics stand, its patterns do not.
        await side.writes.delete_pattern(KB, writes[0].name)
        stale = await side.reads.changes_since(KB, 0)
        assert stale.snapshot is not None and stale.snapshot.version == 2 and not stale.snapshot_patterns
        assert {p.name for p in stale.patterns} == {w.name for w in writes} - {writes[0].name}
        assert stale.symbol_changes == []
        # Compacted with no snapshot to load from: the statistics are lost, and said to be.
        await side.learns.apply_many("other", random_writes(3, 50))
        await side.snapshots.compact_log("other", 1)
        with pytest.raises(DataLoss) as lost:
            await side.reads.changes_since("other", 0)
        assert lost.value.reason == "KB_SNAPSHOT_UNREADABLE"

    run(body)


def _distinct(kb_id: str, first: int, count: int) -> list[storage.PatternWrite]:
    """``count`` learns of distinct patterns (each a new one)."""
    writes = []
    for i in range(first, first + count):
        write = pattern_write([[f"s{i}"], ["x"]])
        write.write_id = f"{kb_id}-{i}"
        writes.append(write)
    return writes


def test_which_kbs_are_due_a_snapshot(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        due = side.snapshots.snapshots_due
        big = (await side.learns.apply_many("big", _distinct("big", 0, 5))).version
        await side.learns.apply_many("small", _distinct("small", 0, 2))
        relearned = await side.learns.apply_many("small", [pattern_write([["s0"], ["x"]])])  # not a new pattern
        assert relearned.count == 1
        assert await due(3) == {"big": big}  # by patterns, not learns: "small" has 2
        assert await due(2) == {"big": big, "small": relearned.version}
        assert await due(2, ["small", "never-written"]) == {"small": relearned.version}
        assert await due(3, []) == {}
        # A snapshot of its version: no longer due; a write after it makes it due again.
        assert await side.snapshots.save_snapshot("big", big, b"snapshot")
        assert await due(3) == {}
        later = (await side.learns.apply_many("big", _distinct("big", 5, 1))).version
        assert await due(3) == {"big": later}
        # A wiped KB has no patterns: nothing to snapshot. Refilled, a snapshot from before the
        # wipe (stored after it) does not count.
        await side.writes.clear("big")
        assert await due(1, ["big"]) == {}
        assert await side.snapshots.save_snapshot("big", later, b"from before the wipe")
        refilled = (await side.learns.apply_many("big", _distinct("big", 10, 3))).version
        assert await due(3, ["big"]) == {"big": refilled}

    run(body)


def test_a_snapshot_claim_is_one_owners_until_it_lapses(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        claim, release, t = side.snapshots.claim_snapshot, side.snapshots.release_snapshot, 1_000_000.0
        assert await claim("k", "a", t, t + 60)
        assert not await claim("k", "b", t + 59, t + 119)  # a's, still running
        assert await claim("k", "a", t + 30, t + 90)  # its owner extends it
        assert not await claim("k", "b", t + 89, t + 149)
        assert await claim("other", "b", t + 89, t + 149)  # one claim per KB
        assert await claim("k", "b", t + 90, t + 150)  # lapsed: anyone's
        assert not await claim("k", "a", t + 100, t + 160)
        await release("k", "a")  # not a's: it stays
        assert not await claim("k", "a", t + 100, t + 160)
        await release("k", "b")
        assert await claim("k", "a", t + 100, t + 160)

    run(body)


def test_patterns_read_updated_and_deleted(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(30, 6)
        await side.learns.apply_many(KB, writes)
        names = sorted({w.name for w in writes})
        page = await side.patterns.list_patterns(KB, "", 4)
        assert [p.name for p in page] == names[:4]
        assert [p.name for p in await side.patterns.list_patterns(KB, names[3], 100)] == names[4:]
        totals = await _summary(side)
        emotives = [{"joy": 0.5, "a.b": -1.0}]
        metadata = {"k": [canonical_json("x"), canonical_json(2)], "empty": []}
        after = await side.writes.update_pattern(KB, names[0], frequency=9, emotives=emotives, metadata=metadata)
        assert after is not None
        updated = after[0]
        assert updated == await side.patterns.get_pattern(KB, names[0])
        assert (updated.frequency, list(updated.emotives)) == (9, emotives)
        assert dict(updated.metadata) == {"k": ('"x"', "2")}
        kept = await side.writes.update_pattern(KB, names[0], frequency=None, emotives=None, metadata=None)
        assert kept is not None and kept[0] == updated
        assert await side.writes.delete_pattern(KB, names[1]) is not None
        assert await side.patterns.get_pattern(KB, names[1]) is None
        # Neither changes the totals (engine.md §5.4): only the version moved, twice.
        assert await _summary(side) == (totals[0] + 3, *totals[1:])
        assert await side.patterns.get_pattern("elsewhere", names[2]) is None

    run(body)


def test_knowledge_bases_are_listed_in_id_order_once_written_a_page_at_a_time(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        ids = ["kb-c", "kb-a", "kb-é", "kb-b"]
        for n, kb_id in enumerate(ids):
            await side.learns.apply_many(kb_id, random_writes(n + 1, n))
        await side.patterns.get_pattern("kb-read-only", "0" * 40)  # a read makes no KB
        await side.writes.clear("kb-b")  # a wiped KB stays listed, empty
        listed = await side.patterns.list_knowledge_bases("", 100, None)
        assert [k.kb_id for k in listed] == sorted(ids)
        wiped = next(k for k in listed if k.kb_id == "kb-b")
        assert (wiped.totals.total_unique_patterns, wiped.totals.total_pattern_frequencies) == (0, 0)
        a = next(k for k in listed if k.kb_id == "kb-a")
        version, totals, _ = await side.transfer.kb_summary("kb-a")
        assert (a.version, a.totals.total_unique_patterns, a.totals.total_pattern_frequencies) == (
            version, totals.total_unique_patterns, totals.total_pattern_frequencies,
        )  # fmt: skip
        assert [k.kb_id for k in await side.patterns.list_knowledge_bases("", 2, None)] == ["kb-a", "kb-b"]
        assert [k.kb_id for k in await side.patterns.list_knowledge_bases("kb-b", 2, None)] == ["kb-c", "kb-é"]
        among = frozenset({"kb-c", "kb-a", "kb-never"})
        assert [k.kb_id for k in await side.patterns.list_knowledge_bases("", 100, among)] == ["kb-a", "kb-c"]
        assert [k.kb_id for k in await side.patterns.list_knowledge_bases("kb-a", 100, among)] == ["kb-c"]
        assert await side.patterns.list_knowledge_bases("", 100, frozenset()) == []

    run(body)


def test_an_export_holds_every_pattern_with_what_its_learns_added_to_affinity(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        writes = random_writes(30, 7)
        await side.learns.apply_many(KB, [*writes, importing.vector_write([("v1", [1.0]), ("v2", [2.0])])])
        rows = [batch async for batch in side.transfer.pattern_rows(KB, 7)]
        assert all(len(batch) <= 7 for batch in rows) and all(len(batch) == 7 for batch in rows[:-1])
        exported = {
            record.name: (record, affinity) for batch in rows for record, affinity in map(side.transfer.exported, batch)
        }
        assert set(exported) == {w.name for w in writes}
        for name, (record, affinity) in exported.items():
            assert record == await side.patterns.get_pattern(KB, name)
            added: dict[str, float] = {}
            for w in writes:
                if w.name == name:
                    for key, value in w.affinity_delta.items():
                        added[key] = added.get(key, 0.0) + value
            assert affinity == pytest.approx(added)
        vectors = [v async for batch in side.transfer.vector_batches(KB, 1) for v in batch]
        assert sorted(vectors) == [("v1", [1.0]), ("v2", [2.0])]
        assert (await side.transfer.kb_summary(KB))[2] == 2

    run(body)


def test_what_a_pattern_accumulates_stays_within_its_bound(run: Callable[[Body], None]) -> None:
    # engine.md D-31: a learn keeps everything the pattern has; new values join while they fit.
    async def body(side: Side) -> None:
        writes = []
        for i in range(40):  # 40 × 10 KiB of new metadata values: past the 256 KiB bound
            w = pattern_write([["a"], ["b"]])
            w.write_id = f"learn-{i}"
            w.metadata["k"].values.append(canonical_json(f"{i:02d}" + "x" * 10_000))
            writes.append(w)
        for i in range(0, 40, 8):
            await side.learns.apply_many(KB, writes[i : i + 8])
        record = await side.patterns.get_pattern(KB, writes[0].name)
        assert record is not None and record.frequency == 40
        assert metadata_bytes({k: set(v) for k, v in record.metadata.items()}) <= MAX_PATTERN_METADATA_BYTES
        kept = len(record.metadata["k"])
        assert 20 <= kept < 40 and record.metadata["k"] == tuple(
            sorted(w.metadata["k"].values[0] for w in writes[:kept])
        )

    run(body)


def test_the_ledger_is_the_deployments_not_a_kbs(run: Callable[[Body], None]) -> None:
    # Write ids are unique per execution (request_ids.py): one applied to a KB is applied.
    async def body(side: Side) -> None:
        writes = random_writes(3, 8)
        assert (await side.learns.apply_many(KB, writes)).count == 3
        assert (await side.learns.apply_many("other", writes)).count == 0
        assert await side.patterns.list_patterns("other", "", 10) == []

    run(body)


def test_the_deployment_id_is_made_once(run: Callable[[Body], None]) -> None:
    async def body(side: Side) -> None:
        first = await side.deployment.deployment_id()
        assert first and await side.deployment.deployment_id() == first
        await side.sessions.end_sessions([])  # nothing to end: no error

    run(body)


def test_emotive_names_a_document_store_must_escape_accumulate_across_learns(run: Callable[[Body], None]) -> None:
    # The empty name, "%", what looks like an escape, a path and an operator: each learn of the
    # pattern after the first adds to the affinity it keeps (a MongoDB update path may hold
    # none of them raw: "affinity." was refused, and every later learn of the pattern failed).
    names = ["", "%", "%2E", "a.b", "$x"]

    async def body(side: Side) -> None:
        for i in range(3):
            write = pattern_write([["p"], ["q"]])
            write.write_id = f"escape-{i}"
            write.affinity_delta.update({name: float(i + k) for k, name in enumerate(names)})
            await side.learns.apply_many(KB, [write])
        rows = [
            side.transfer.exported(row)
            for batch in [b async for b in side.transfer.pattern_rows(KB, 10)]
            for row in batch
        ]
        assert len(rows) == 1 and rows[0][0].frequency == 3
        assert rows[0][1] == pytest.approx({name: float(sum(i + k for i in range(3))) for k, name in enumerate(names)})

    run(body)
