"""The KB cache under concurrent callers: one load per KB, shared; a caller that gives up does
not cancel it; a KB evicted while a call waits still answers that call. And the index a
snapshot is written from: a KB not cached is loaded apart, counted against the budget only
while held."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.protocols import KbChanges
from tests.unit.kit import pattern_write


class SlowStore:
    """Enough of the pattern store for the cache: every KB at version 1, empty; reads of KBs
    other than "b" wait for ``gate`` when it is set up (``waiting``: the version reads
    waiting there)."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.loads = 0
        self.waiting = 0

    async def kb_version(self, kb_id: str) -> int:
        if self.gate is not None and kb_id == "a":
            self.waiting += 1
            await self.gate.wait()
        return 1

    async def changes_since(self, kb_id: str, since: int, singles: Any = None, **_: Any) -> KbChanges:
        self.loads += 1
        if self.gate is not None and kb_id != "b":
            await self.gate.wait()
        return KbChanges(version=1, full=since == 0, totals=Totals())


def test_callers_arriving_during_a_load_share_it_and_one_giving_up_does_not_cancel_it() -> None:
    async def run() -> None:
        store = SlowStore()
        store.gate = asyncio.Event()
        cache = KbCache(store, check_seconds=0)
        first = asyncio.create_task(cache.view("k"))
        others = [asyncio.create_task(cache.view("k")) for _ in range(7)]
        # Until the load waits at the gate: it is a task the first caller made, so it first
        # runs after every caller made before it has run up to its wait (none of them waits
        # before it joins the load: the version of "k" is read without waiting).
        while store.loads == 0:
            await asyncio.sleep(0)
        first.cancel()  # its caller's deadline passed
        store.gate.set()
        views = await asyncio.gather(*others)
        assert store.loads == 1 and all(v is views[0] for v in views)
        assert cache.cached_version("k") == 1

    asyncio.run(run())


def test_a_kb_evicted_while_a_call_waits_still_answers_it() -> None:
    async def run() -> None:
        store = SlowStore()
        cache = KbCache(store, max_kbs=1, check_seconds=0)
        await cache.view("a")
        store.gate = asyncio.Event()
        waiting = asyncio.create_task(cache.view("a"))  # waits for a's version
        while store.waiting == 0:  # until it does
            await asyncio.sleep(0)
        await cache.view("b")  # loads b, evicts a
        store.gate.set()
        assert (await waiting).version == 1
        assert cache.cached_version("a") is None

    asyncio.run(run())


class GrowingStore:
    """A KB at version 1 with one short pattern, then at version 2 with ``added`` more."""

    def __init__(self, added: list[PatternRecord]) -> None:
        self.version = 1
        self.added = added

    async def kb_version(self, kb_id: str) -> int:
        return self.version

    async def changes_since(self, kb_id: str, since: int, singles: Any = None, **_: Any) -> KbChanges:
        if since == 0:
            first = PatternRecord.build("p0", [["a"], ["b"]], 1)
            return KbChanges(version=1, full=True, totals=Totals(1, 1), patterns=[first])
        return KbChanges(
            version=2, full=False, totals=Totals(1 + len(self.added), 1 + len(self.added)), patterns=self.added
        )


def _long(name: str, symbols: int) -> PatternRecord:
    return PatternRecord.build(name, [[f"{name}-{i}" for i in range(30)] for _ in range(symbols // 30)], 1)


def test_a_large_refresh_is_merged_off_the_event_loop_into_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 (4): three patterns of 10,000 symbols once froze the process for seconds. The
    merge now waits on the event loop itself: merged on the loop, it could never finish."""
    loop_ran = threading.Event()
    threads: set[str] = set()
    put = KnowledgeIndex.put_pattern

    def waiting_put(index: KnowledgeIndex, record: PatternRecord) -> None:
        threads.add(threading.current_thread().name)
        if record.name != "p0":
            assert loop_ran.wait(10), "merged on the event loop: the loop could not run meanwhile"
        put(index, record)

    monkeypatch.setattr(KnowledgeIndex, "put_pattern", waiting_put)

    async def run() -> None:
        store = GrowingStore([_long(f"big{i}", 10_000) for i in range(3)])
        cache = KbCache(store, check_seconds=0)
        before = await cache.view("k")
        threads.clear()
        store.version = 2
        refresh = asyncio.create_task(cache.view("k"))
        await asyncio.sleep(0)  # the refresh has started; this runs only if the loop is free
        loop_ran.set()
        after = await refresh
        assert (before.version, len(before), after.version, len(after)) == (1, 1, 2, 4)  # the cached one untouched
        assert threading.main_thread().name not in threads

    asyncio.run(run())


def test_a_small_refresh_is_merged_in_place_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    put = KnowledgeIndex.put_pattern

    def recording_put(index: KnowledgeIndex, record: PatternRecord) -> None:
        threads.add(threading.current_thread().name)
        put(index, record)

    monkeypatch.setattr(KnowledgeIndex, "put_pattern", recording_put)

    async def run() -> None:
        store = GrowingStore([_long("small", 300)])
        cache = KbCache(store, check_seconds=0)
        before = await cache.view("k")
        store.version = 2
        after = await cache.view("k")
        assert after is before and len(after) == 2  # no reader: changed in place (no copy)
        assert threads == {threading.main_thread().name}

    asyncio.run(run())


def test_a_caller_waiting_for_a_load_ends_at_its_deadline() -> None:
    async def run() -> None:
        store = SlowStore()
        store.gate = asyncio.Event()
        cache = KbCache(store, check_seconds=0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cache.view("k"), 0.01)
        store.gate.set()
        assert (await cache.view("k")).version == 1 and store.loads == 1  # the load went on

    asyncio.run(run())


def test_a_kb_loaded_apart_for_its_snapshot_counts_against_the_budget_only_while_held() -> None:
    async def run() -> None:
        twin = InMemoryPatternStore()
        for kb_id in ("c", "d", "k"):
            await twin.apply_many(kb_id, [pattern_write([[f"{kb_id}{i}"], ["x"]]) for i in range(30)])
        sizes = {kb_id: (await KbCache(twin).view(kb_id)).estimated_bytes() for kb_id in ("c", "d", "k")}
        trims: list[str] = []
        cache = KbCache(twin, max_bytes=sizes["c"] + sizes["d"], after_eviction=lambda: trims.append("trim"))
        await cache.view("c")
        await cache.view("d")  # both fit
        seen: list[tuple[int, int, int | None, int | None]] = []

        async def write(index: KnowledgeIndex) -> None:
            seen.append((len(index), cache.total_bytes, cache.cached_version("c"), cache.cached_version("k")))

        await cache.snapshot_with("k", write)
        # While held, "k" counted: the least recently used KB made room for it; "k" never cached.
        assert seen == [(30, sizes["d"] + sizes["k"], None, None)]
        assert cache.total_bytes == sizes["d"] and cache.cached_version("k") is None
        assert trims == ["trim", "trim"]  # the eviction's, and the dropped index's
        # A KB this process caches is refreshed in place for its snapshot, and stays.
        version = (await twin.apply_many("d", [pattern_write([["new"], ["x"]])])).version
        await cache.snapshot_with("d", write)
        assert seen[-1][0] == 31 and cache.cached_version("d") == version

    asyncio.run(run())
