"""When a process writes KB snapshots: after a quiet period, at once past the growth share,
never below the minimum size, not when a newer one is stored; compaction one snapshot behind."""

from __future__ import annotations

import asyncio

from kato_grpc.stores import snapshot
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from tests.unit.kit import kb_of


def _saved(store: InMemoryPatternStore) -> dict[str, int]:
    """Each KB's stored snapshot (the store keeps the newest), each one readable."""
    out = {}
    for kb_id in ("k", "small", "big", "other"):
        stored = store.kb(kb_id).snapshots
        for blob in stored.values():
            snapshot.decode(blob)
        if stored:
            out[kb_id] = max(stored)
    return out


def _kb(patterns: int, version: int) -> KnowledgeIndex:
    kb = kb_of([[f"a{i}", f"b{i}"]] for i in range(patterns))
    kb.version = version
    return kb


def test_a_snapshot_follows_a_quiet_period_and_the_next_compacts_the_log_of_the_first() -> None:
    async def run() -> None:
        store = InMemoryPatternStore()
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=10, quiet_seconds=0.1, growth=10))
        kb = _kb(20, 5)
        snapshotter.changed("k", kb, 20)
        await asyncio.sleep(0.05)
        assert _saved(store) == {}  # not quiet long enough yet
        await asyncio.sleep(0.3)
        assert _saved(store) == {"k": 5} and store.kb("k").compacted_through == 0  # nothing behind it
        kb.version = 6
        snapshotter.changed("k", kb, 1)
        await asyncio.sleep(0.4)
        assert _saved(store) == {"k": 6} and store.kb("k").compacted_through == 5
        snapshotter.changed("k", kb, 0)  # a lookup that changed nothing: no snapshot
        await asyncio.sleep(0.4)
        assert _saved(store) == {"k": 6} and snapshotter.written == 2
        await snapshotter.close()

    asyncio.run(run())


def test_growth_writes_at_once_small_kbs_never_and_a_newer_stored_one_is_kept() -> None:
    async def run() -> None:
        store = InMemoryPatternStore()
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=10, quiet_seconds=60, growth=0.5))
        small, big, other = _kb(5, 1), _kb(20, 3), _kb(20, 8)  # held, as the cache holds them
        snapshotter.changed("small", small, 5)
        snapshotter.changed("big", big, 20)  # 20 changes ≥ 0.5 × 20 patterns: no waiting
        await asyncio.sleep(0.3)
        assert _saved(store) == {"big": 3}
        newer = snapshot.encode(_kb(20, 9))
        assert await store.save_snapshot("other", 9, newer)  # another process stored a newer one
        snapshotter.changed("other", other, 20)
        await asyncio.sleep(0.3)
        assert _saved(store)["other"] == 9 and snapshotter.written == 1
        await snapshotter.close()

    asyncio.run(run())


def test_an_evicted_kb_is_not_written() -> None:
    async def run() -> None:
        store = InMemoryPatternStore()
        snapshotter = Snapshotter(store, SnapshotPolicy(min_patterns=1, quiet_seconds=0.1, growth=10))
        kb = _kb(3, 1)
        snapshotter.changed("k", kb, 3)
        snapshotter.forget("k")
        await asyncio.sleep(0.3)
        assert _saved(store) == {}
        await snapshotter.close()

    asyncio.run(run())
