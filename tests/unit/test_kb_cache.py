"""The KB cache under concurrent callers: one load per KB, shared; a caller that gives up does
not cancel it; a KB evicted while a call waits still answers that call."""

from __future__ import annotations

import asyncio
from typing import Any

from kato_grpc.engine.knowledge import Totals
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.mongo_reads import KbChanges


class SlowStore:
    """Enough of the pattern store for the cache: every KB at version 1, empty; reads of KBs
    other than "b" wait for ``gate`` when it is set up."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.loads = 0

    async def kb_version(self, kb_id: str) -> int:
        if self.gate is not None and kb_id == "a":
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
        cache = KbCache(store, check_seconds=0)  # type: ignore[arg-type]
        first = asyncio.create_task(cache.view("k"))
        others = [asyncio.create_task(cache.view("k")) for _ in range(7)]
        await asyncio.sleep(0.01)
        first.cancel()  # its caller's deadline passed
        store.gate.set()
        views = await asyncio.gather(*others)
        assert store.loads == 1 and all(v is views[0] for v in views)
        assert cache.cached_version("k") == 1

    asyncio.run(run())


def test_a_kb_evicted_while_a_call_waits_still_answers_it() -> None:
    async def run() -> None:
        store = SlowStore()
        cache = KbCache(store, max_kbs=1, check_seconds=0)  # type: ignore[arg-type]
        await cache.view("a")
        store.gate = asyncio.Event()
        waiting = asyncio.create_task(cache.view("a"))  # waits for a's version
        await asyncio.sleep(0.01)
        await cache.view("b")  # loads b, evicts a
        store.gate.set()
        assert (await waiting).version == 1
        assert cache.cached_version("a") is None

    asyncio.run(run())
