"""When a process writes KB snapshots: after a quiet period, at once past the growth share,
never below the minimum size, not when a newer one is stored; compaction one snapshot behind.

Time is the test's (``FakeClock``): the quiet period passes when the test moves the clock,
and each check waits until the snapshotter has done all it can at that time (``settled``),
so nothing depends on how fast the machine gets through a real sleep."""

from __future__ import annotations

import asyncio

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from tests.unit.kit import kb_of


class MemorySnapshots:
    """The pattern store's twin (``memory.InMemoryPatternStore``, whose contract
    tests/contract/test_pattern_stores.py holds to MongoDB's), recording what the snapshotter
    asked of it: every version stored, the last compaction."""

    def __init__(self) -> None:
        self.twin = InMemoryPatternStore()
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


class FakeClock:
    """Time that moves only when the test says (``advance``); ``asleep``: the tasks sleeping
    on it, with the time each wakes at."""

    def __init__(self) -> None:
        self.now = 0.0
        self.asleep: dict[asyncio.Task[object], tuple[float, asyncio.Future[None]]] = {}

    def monotonic(self) -> float:
        return self.now

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
