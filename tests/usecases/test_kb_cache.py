"""The KB cache under the use cases that read it, over the twins: what a process's cache
serves after concurrent refreshes equals what a cold load of the KB gives."""

from __future__ import annotations

import asyncio

from kato_grpc.access import ANYONE
from kato_grpc.stores.kb_cache import KbCache
from tests.usecases.harness import KB, Kato, session_id


def test_two_calls_refreshing_a_kb_at_once_count_each_change_once(kato: Kato) -> None:
    """Found by a 300,000-step run of the simulation (its snapshotter the reader): a call
    that read the cached index, then waited for MongoDB's version while another call of the
    process refreshed the cache into a clone (the index being read), fetched the changes
    since the index it had read and merged them into the newer clone — the changes in
    between counted twice in the symbol statistics (architecture.md §4: a cache equals the
    KB at its version)."""

    async def main() -> None:
        reader, learner = await kato.create(), await kato.create()
        await kato.learned(learner.name, ["a"], ["b"])
        await kato.learned(learner.name, ["b"], ["c"])
        await kato.observe(reader.name, "a")
        sid = session_id(reader.name)
        await kato.use.observing.get_predictions(sid, ANYONE)  # the cache holds version 2
        await kato.learned(learner.name, ["c"], ["d"])  # version 3, published
        cached = await kato.service.cache.view(KB, 2)
        cached.readers += 1  # a prediction reads it on an engine thread: a refresh changes a clone

        store = kato.pattern_store
        asked, answer = asyncio.Event(), asyncio.Event()

        async def slow_version(kb_id: str) -> int:  # MongoDB's version, slow for the first call
            del store.kb_version
            asked.set()
            await answer.wait()
            return await store.kb_version(kb_id)

        store.kb_version = slow_version  # type: ignore[method-assign]
        first = asyncio.create_task(kato.service.cache.view(KB, 3))  # as a read given version 3
        await asked.wait()  # it read the cached index (version 2) and waits for MongoDB
        await kato.use.observing.get_predictions(sid, ANYONE)  # another call refreshes (a clone) to 3
        cached.readers -= 1
        await kato.learned(learner.name, ["d"], ["e"])  # version 4
        answer.set()
        await first  # refreshes from the index it read (2) to 4

        warm = await kato.service.cache.view(KB)
        cold = await KbCache(store).view(KB)
        assert warm.version == cold.version == 4
        assert warm.symbols_after(None, 100) == cold.symbols_after(None, 100)
        assert warm.totals() == cold.totals()

    kato.run(main())
