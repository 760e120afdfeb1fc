"""Runs the pure engine off the event loop.

The event loop only moves bytes (gRPC, Redis, MongoDB); every engine computation runs on a
small pool of threads, so one expensive call cannot hold up health checks, other sessions or
shutdown. Threads share the GIL, so a heavy call slows the others by time-slicing instead of
blocking them until it is done.

Each computation gets a ``Budget``: its work is bounded before it starts (the prediction work
limit), and when the awaiting call gives up — its deadline passed, the client went away, the
server is stopping — the budget is cancelled and the thread stops at its next check (reported to ``stopped``:
``Events.engine_stopped``, so a stop is seen, not inferred from how long a call took).

The KB indexes a computation reads are leased for as long as its thread runs (not just until
the awaiting call gives up), so the KB cache never changes an index under a reader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from kato_grpc.engine.budget import Budget
from kato_grpc.errors import DeadlineExceeded
from kato_grpc.stores.index import KnowledgeIndex

T = TypeVar("T")


class EngineThreads:
    def __init__(self, threads: int, max_prediction_work: int, stopped: Callable[[], None] = lambda: None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kato-engine")
        self._max_work = max_prediction_work
        self._stopped = stopped
        self._running: set[Budget] = set()

    async def run(self, work: Callable[[Budget], T], reads: Sequence[object] = (), *, inline: bool = False) -> T:
        """``work(budget)`` on an engine thread; ``reads`` are the KB views it reads.

        ``inline``: the caller knows the work is tiny and bounded (no knowledge base to
        search, a few observations): it runs right here. A thread handoff would cost more
        than the work and, between a session's load and its compare-and-set, widen the
        window in which concurrent calls on the session conflict.
        """
        budget = Budget(self._max_work)
        if inline:
            return work(budget)
        leased = [kb for kb in reads if isinstance(kb, KnowledgeIndex)]
        for kb in leased:  # synchronously, before any await: nothing can change them first
            kb.readers += 1
        loop = asyncio.get_running_loop()
        self._running.add(budget)

        def release(f: concurrent.futures.Future[T]) -> None:
            for kb in leased:
                kb.readers -= 1
            self._running.discard(budget)
            # Stopped at a check (Budget.check raised), not finished after its call gave up.
            if budget.cancelled and not f.cancelled() and isinstance(f.exception(), DeadlineExceeded):
                self._stopped()

        future = self._pool.submit(work, budget)

        def done(f: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first (process exit)
                loop.call_soon_threadsafe(release, f)

        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            budget.cancelled = True  # the thread stops at its next check
            raise

    def cancel_all(self) -> None:
        """Call off every computation in flight (shutdown)."""
        for budget in list(self._running):
            budget.cancelled = True

    def close(self) -> None:
        self.cancel_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
