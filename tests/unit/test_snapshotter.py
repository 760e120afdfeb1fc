"""When a process writes KB snapshots: after a quiet period, at once past the growth share,
never below the minimum size, not when a newer one is stored; compaction one snapshot behind.
And for a KB only written (issue 23): the writer follows its writes up, loading the KB apart
from its cache when it does not cache it; one process at a time holds a KB's claim; a write
by another process moves the quiet period on; the sweep takes up what a crash left.

Time is the test's (``FakeClock``): the quiet period passes when the test moves the clock,
and each check waits until the snapshotter has done all it can at that time (``settled``),
so nothing depends on how fast the machine gets through a real sleep."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.protocols import KbChanges
from kato_grpc.stores.snapshotter import CLAIM_SECONDS, SnapshotPolicy, Snapshotter
from tests.unit.kit import kb_of, pattern_write


class MemorySnapshots:
    """The pattern store's twin (``memory.InMemoryPatternStore``, whose contract
    tests/contract/test_pattern_stores.py holds to MongoDB's), recording what the snapshotter
    asked of it: every version stored, the last compaction."""

    def __init__(self, twin: InMemoryPatternStore | None = None) -> None:
        self.twin = twin or InMemoryPatternStore()
        self.saved: dict[str, list[int]] = {}
        self.compacted: dict[str, int] = {}

    async def latest_snapshot_version(self, kb_id: str) -> int:
        return await self.twin.latest_snapshot_version(kb_id)

    async def save_snapshot(self, kb_id: str, version: int, blob: bytes) -> bool:
        snapshot.decode(blob)  # a readable snapshot, or this raises
        stored = await self.twin.save_snapshot(kb_id, version, blob)
        if stored:
            self.saved.setdefault(kb_id, []).append(version)
        return stored

    async def compact_log(self, kb_id: str, version: int) -> int:
        self.compacted[kb_id] = version
        return await self.twin.compact_log(kb_id, version)

    async def snapshots_due(self, min_patterns: int, kb_ids: Sequence[str] | None = None) -> dict[str, int]:
        return await self.twin.snapshots_due(min_patterns, kb_ids)

    async def claim_snapshot(self, kb_id: str, owner: str, now: float, until: float) -> bool:
        return await self.twin.claim_snapshot(kb_id, owner, now, until)

    async def release_snapshot(self, kb_id: str, owner: str) -> None:
        await self.twin.release_snapshot(kb_id, owner)


class FakeClock:
    """Time that moves only when the test says (``advance``); ``asleep``: the tasks sleeping
    on it, with the time each wakes at. Its wall clock is its monotonic one, from a start of
    1,000,000 s (the claims' leases compare it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.asleep: dict[asyncio.Task[object], tuple[float, asyncio.Future[None]]] = {}

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_000_000 + self.now

    async def sleep(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.asleep[task] = (self.now + seconds, wake)
        try:
            await wake
        finally:
            del self.asleep[task]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for at, wake in list(self.asleep.values()):
            if at <= self.now and not wake.done():
                wake.set_result(None)


async def settled(clock: FakeClock) -> None:
    """Until every other task of the loop has ended or sleeps on ``clock`` (a snapshot being
    encoded on a thread is waited for, however long the machine takes)."""
    me = asyncio.current_task()
    async with asyncio.timeout(60):  # bounds a hang only
        while True:
            busy = [t for t in asyncio.all_tasks() if t is not me and not t.done() and t not in clock.asleep]
            woken = [t for t, (_, wake) in clock.asleep.items() if wake.done()]
            if not busy and not woken:
                return
            await asyncio.sleep(0)  # a yield: the loop runs them (the poll's length matters to nothing)


def _kb(patterns: int, version: int) -> KnowledgeIndex:
    kb = kb_of([[f"a{i}", f"b{i}"]] for i in range(patterns))
    kb.version = version
    return kb


def test_a_snapshot_follows_a_quiet_period_and_the_next_compacts_the_log_of_the_first() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        # Jittered: each wait is between 1 and 1.5 quiet periods (replicas do not wake at once).
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=10, quiet_seconds=1, growth=10), clock=clock)
        kb = _kb(20, 5)
        snapshotter.changed("k", kb, 20)
        await settled(clock)
        assert store.saved == {} and len(clock.asleep) == 1  # waiting for the KB to be quiet
        clock.advance(0.99)
        await settled(clock)
        assert store.saved == {} and len(clock.asleep) == 1  # not quiet long enough yet
        clock.advance(0.51)
        await settled(clock)
        assert store.saved == {"k": [5]} and store.compacted == {}  # nothing behind it to compact
        kb.version = 6
        snapshotter.changed("k", kb, 1)
        await settled(clock)
        assert store.saved == {"k": [5]}  # the change starts another quiet period
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [5, 6]} and store.compacted == {"k": 5}
        snapshotter.changed("k", kb, 0)  # a lookup that changed nothing: no snapshot
        await settled(clock)
        assert clock.asleep == {}  # nothing waits to write one
        clock.advance(10)
        await settled(clock)
        assert store.saved == {"k": [5, 6]} and snapshotter.written == 2
        await snapshotter.close()

    asyncio.run(run())


def test_growth_writes_at_once_small_kbs_never_and_a_newer_stored_one_is_kept() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=10, quiet_seconds=60, growth=0.5), clock=clock)
        small, big, other = _kb(5, 1), _kb(20, 3), _kb(20, 8)  # held, as the cache holds them
        snapshotter.changed("small", small, 5)
        snapshotter.changed("big", big, 20)  # 20 changes ≥ 0.5 × 20 patterns: no waiting
        await settled(clock)
        assert store.saved == {"big": [3]} and clock.now == 0  # written with no time passing
        assert await store.save_snapshot("other", 9, snapshot.encode(_kb(20, 9)))  # another process's, newer
        snapshotter.changed("other", other, 20)
        await settled(clock)
        assert store.saved["other"] == [9] and snapshotter.written == 1
        assert clock.asleep == {}  # and none is waiting to write the small KB later
        clock.advance(120)
        await settled(clock)
        assert "small" not in store.saved
        await snapshotter.close()

    asyncio.run(run())


def test_an_evicted_kb_is_not_written() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=1, quiet_seconds=1, growth=10), clock=clock)
        kb = _kb(3, 1)
        snapshotter.changed("k", kb, 3)
        await settled(clock)
        assert len(clock.asleep) == 1  # its snapshot was due after the quiet period ...
        snapshotter.forget("k")
        await settled(clock)
        clock.advance(10)
        await settled(clock)
        assert store.saved == {} and clock.asleep == {}  # ... and was called off
        await snapshotter.close()

    asyncio.run(run())


# --- A KB only written (issue 23) -------------------------------------------------------------

QUICK = SnapshotPolicy(min_patterns=10, quiet_seconds=1, growth=0.01)  # growth: cached KBs only


async def _learned(twin: InMemoryPatternStore, kb_id: str, first: int, count: int) -> int:
    """``count`` new patterns learned into the twin's KB in one batch; the KB's version after."""
    writes = []
    for i in range(first, first + count):
        write = pattern_write([[f"a{i}"], [f"b{i}"]])
        write.write_id = f"{kb_id}-{i}"
        writes.append(write)
    return (await twin.apply_many(kb_id, writes)).version


class SlowSource:
    """A process's KB cache as its snapshotter's source, not caching the KB, whose load for a
    snapshot takes ``seconds`` of the test's clock (``loads``: how many it started)."""

    def __init__(self, twin: InMemoryPatternStore, clock: FakeClock, seconds: float) -> None:
        self.twin, self.clock, self.seconds = twin, clock, seconds
        self.loads = 0

    def caches(self, kb_id: str) -> bool:
        return False

    async def snapshot_with(self, kb_id: str, write: Callable[[KnowledgeIndex], Awaitable[None]]) -> None:
        self.loads += 1
        await self.clock.sleep(self.seconds)
        await write(await KbCache(self.twin).view(kb_id))


def test_a_kb_only_written_gets_its_snapshot_from_a_load_apart_that_is_not_kept() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        cache = KbCache(store.twin, snapshotter=snapshotter, clock=clock.monotonic)
        first = await _learned(store.twin, "k", 0, 20)
        small = await _learned(store.twin, "small", 0, 5)
        snapshotter.wrote("k", first)
        snapshotter.wrote("small", small)
        await settled(clock)
        assert store.saved == {} and len(clock.asleep) == 2  # waiting for the writes to be quiet
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [first]}  # "small" is under the minimum
        assert cache.cached_version("k") is None and cache.total_bytes == 0  # loaded apart, dropped
        assert clock.asleep == {}  # nothing left to follow up
        second = await _learned(store.twin, "k", 20, 5)
        snapshotter.wrote("k", second)
        clock.advance(1.5)
        await settled(clock)
        # The second load started from the first snapshot; the log it held goes.
        assert store.saved == {"k": [first, second]} and store.compacted == {"k": first}
        # A cold cache reads the snapshot and no document: it holds the whole KB.
        changes = await store.twin.changes_since("k", 0)
        assert changes.snapshot is not None and changes.snapshot.version == second and changes.patterns == []
        assert len(snapshot.decode(changes.snapshot.blob)) == 25
        await snapshotter.close()

    asyncio.run(run())


def test_a_kb_written_and_cached_here_is_refreshed_for_its_snapshot_and_stays_cached() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, SnapshotPolicy(10, 1, growth=10), clock=clock, owner="me")
        cache = KbCache(store.twin, snapshotter=snapshotter, check_seconds=60, clock=clock.monotonic)
        await _learned(store.twin, "k", 0, 20)
        await cache.view("k")
        latest = await _learned(store.twin, "k", 20, 5)  # written, not yet read here
        snapshotter.wrote("k", latest)
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [latest]}  # refreshed to the KB's version first
        assert cache.cached_version("k") == latest
        # No claim taken: another process could have taken it at once.
        assert await store.twin.claim_snapshot("k", "other", clock.time(), clock.time() + 1)
        await snapshotter.close()

    asyncio.run(run())


def test_a_write_by_another_process_moves_the_quiet_period_on() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        KbCache(store.twin, snapshotter=snapshotter, clock=clock.monotonic)
        mine = await _learned(store.twin, "k", 0, 20)
        snapshotter.wrote("k", mine)
        clock.advance(0.9)
        theirs = await _learned(store.twin, "k", 20, 1)  # this process is not told
        clock.advance(0.6)
        await settled(clock)
        assert store.saved == {}  # the KB was not quiet: it looks again a quiet period later
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [theirs]}
        await snapshotter.close()

    asyncio.run(run())


def test_one_process_holds_the_claim_and_renews_it_while_it_loads_the_other_defers() -> None:
    async def run() -> None:
        twin, clock = InMemoryPatternStore(), FakeClock()
        a_store, b_store = MemorySnapshots(twin), MemorySnapshots(twin)
        a = Snapshotter(a_store, QUICK, clock=clock, owner="a")
        b = Snapshotter(b_store, QUICK, clock=clock, owner="b")
        a_source, b_source = SlowSource(twin, clock, 100), SlowSource(twin, clock, 0)
        a.source, b.source = a_source, b_source
        version = await _learned(twin, "k", 0, 20)
        a.wrote("k", version)
        clock.advance(0.6)
        b.wrote("k", version)  # both wrote it; b wakes later
        clock.advance(0.9)
        await settled(clock)
        assert a_source.loads == 1  # a holds the claim, loading for 100 s
        for _ in range(4):  # past the claim's 60 s: a renews it, b never takes it
            clock.advance(CLAIM_SECONDS / 3)
            await settled(clock)
            assert b_source.loads == 0
        assert a_store.saved == {} and b_store.saved == {}
        clock.advance(25)
        await settled(clock)
        assert a_store.saved == {"k": [version]}
        clock.advance(1)
        await settled(clock)
        # b found the snapshot stored: nothing to do, nothing waiting.
        assert b_store.saved == {} and b_source.loads == 0 and clock.asleep == {}
        assert await twin.claim_snapshot("k", "c", clock.time(), clock.time() + 1)  # released
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_claim_left_by_a_dead_process_lapses() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        version = await _learned(store.twin, "k", 0, 20)
        # A process took the claim and died loading the KB.
        assert await store.twin.claim_snapshot("k", "dead", clock.time(), clock.time() + CLAIM_SECONDS)
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        KbCache(store.twin, snapshotter=snapshotter, clock=clock.monotonic)
        snapshotter.wrote("k", version)
        clock.advance(1.5)
        await settled(clock)
        for _ in range(int(CLAIM_SECONDS) - 3):  # looked at again every second while it lasts
            clock.advance(1)
            await settled(clock)
        assert store.saved == {}
        for _ in range(3):
            clock.advance(1)
            await settled(clock)
        assert store.saved == {"k": [version]}
        await snapshotter.close()

    asyncio.run(run())


def test_the_sweep_takes_up_kbs_left_without_their_snapshot() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        left = await _learned(store.twin, "left", 0, 20)  # its writer died within the quiet period
        done = await _learned(store.twin, "done", 0, 20)
        await _learned(store.twin, "small", 0, 5)
        assert await store.twin.save_snapshot("done", done, snapshot.encode(await KbCache(store.twin).view("done")))
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        KbCache(store.twin, snapshotter=snapshotter, clock=clock.monotonic)
        assert await snapshotter.sweep() == 1
        assert await snapshotter.sweep() == 0  # already followed up
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"left": [left]}
        assert await snapshotter.sweep() == 0
        await snapshotter.close()

    asyncio.run(run())


def test_a_kb_wiped_within_the_quiet_period_gets_none() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        KbCache(store.twin, snapshotter=snapshotter, clock=clock.monotonic)
        snapshotter.wrote("k", await _learned(store.twin, "k", 0, 20))
        await store.twin.clear("k")
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {} and clock.asleep == {}
        await snapshotter.close()

    asyncio.run(run())


def test_an_evicted_kb_this_process_wrote_is_still_followed_up() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, SnapshotPolicy(10, 1, growth=10), clock=clock)
        cache = KbCache(store.twin, max_kbs=1, snapshotter=snapshotter, clock=clock.monotonic)
        await _learned(store.twin, "k", 0, 20)
        await cache.view("k")
        version = await _learned(store.twin, "k", 20, 5)
        snapshotter.wrote("k", version)
        await _learned(store.twin, "other", 0, 3)
        await cache.view("other")  # evicts "k"
        assert cache.cached_version("k") is None
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [version]} and cache.cached_version("k") is None
        await snapshotter.close()

    asyncio.run(run())


def test_past_the_growth_share_the_cached_index_is_written_before_the_writes_are_quiet() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, SnapshotPolicy(10, 1, growth=0.5), clock=clock)
        cache = KbCache(store.twin, snapshotter=snapshotter, check_seconds=0, clock=clock.monotonic)
        first = await _learned(store.twin, "k", 0, 20)
        await cache.view("k")  # 20 documents merged: past half of 20, written at once
        snapshotter.wrote("k", first)
        await settled(clock)
        assert store.saved == {"k": [first]} and clock.now == 0
        clock.advance(0.9)
        second = await _learned(store.twin, "k", 20, 20)
        snapshotter.wrote("k", second)
        await cache.view("k")  # 20 more: half of 40
        clock.advance(0.6)
        await settled(clock)
        # At its wake the writes are not quiet yet; the cache's index, past the share, is written.
        assert store.saved == {"k": [first, second]}
        clock.advance(1.5)
        await settled(clock)
        # The writes, quiet now, are followed up: the stored snapshot is as new as the KB.
        assert store.saved == {"k": [first, second]} and clock.asleep == {}
        third = await _learned(store.twin, "k", 40, 2)
        snapshotter.wrote("k", third)
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [first, second, third]}
        await snapshotter.close()

    asyncio.run(run())


class SlowReads:
    """The twin's ``KbReads``, each full read taking ``seconds`` of the test's clock
    (``full_loads``: how many began)."""

    def __init__(self, twin: InMemoryPatternStore, clock: FakeClock, seconds: float) -> None:
        self.twin, self.clock, self.seconds = twin, clock, seconds
        self.full_loads = 0

    async def kb_version(self, kb_id: str) -> int:
        return await self.twin.kb_version(kb_id)

    async def changes_since(
        self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None, *, snapshots: bool = True
    ) -> KbChanges:
        if since == 0:
            self.full_loads += 1
            await self.clock.sleep(self.seconds)
        return await self.twin.changes_since(kb_id, since, singles, snapshots=snapshots)


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(60):  # bounds a hang only
        while not check():
            await asyncio.sleep(0)


def test_a_snapshot_joins_the_load_of_the_kb_into_the_cache_in_flight() -> None:
    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        reads = SlowReads(store.twin, clock, 10)
        snapshotter = Snapshotter(store, QUICK, clock=clock)
        cache = KbCache(reads, snapshotter=snapshotter, clock=clock.monotonic)
        version = await _learned(store.twin, "k", 0, 20)
        snapshotter.wrote("k", version)
        call = asyncio.create_task(cache.view("k"))  # a call loads the KB: 10 s of reads
        await _until(lambda: reads.full_loads == 1)
        clock.advance(1.5)  # the writes are quiet while the load is still in flight
        for _ in range(100):  # (all on the loop: the snapshotter reaches the load and waits on it)
            await asyncio.sleep(0)
        clock.advance(10)
        await _until(lambda: bool(store.saved))
        assert store.saved == {"k": [version]} and reads.full_loads == 1  # loaded once, not apart too
        assert (await call).version == version and cache.cached_version("k") == version
        await snapshotter.close()

    asyncio.run(run())


def test_a_write_to_a_kb_cached_empty_waits_out_its_quiet_period_without_spinning() -> None:
    """A process caches a KB while it is empty (its first Observe), then learns into it: the
    snapshot is followed up after the quiet period — and until then the follow-up sleeps. It
    once spun without yielding (an empty index read as "grown past the growth share" on every
    pass), blocking the event loop of every server whose first learn went to a KB it had cached
    empty. The scenario runs on a thread of its own so that a spin fails the test instead of
    hanging it (the join bounds a hang only)."""
    outcome: list[object] = []

    async def run() -> None:
        store, clock = MemorySnapshots(), FakeClock()
        snapshotter = Snapshotter(store, QUICK, clock=clock, owner="me")
        cache = KbCache(store.twin, snapshotter=snapshotter, check_seconds=60, clock=clock.monotonic)
        assert len(await cache.view("k")) == 0  # cached empty
        snapshotter.wrote("k", await _learned(store.twin, "k", 0, 20))  # not yet refreshed here
        await settled(clock)
        assert store.saved == {} and len(clock.asleep) == 1  # waiting out the quiet period
        clock.advance(1.5)
        await settled(clock)
        assert store.saved == {"k": [1]}
        await snapshotter.close()
        outcome.append("done")

    def thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by the test below
            outcome.append(exc)

    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the snapshotter spun: the event loop never came back"
    assert outcome == ["done"], outcome
