"""The engine runner's cancellation: a computation whose call gives up stops at its next
check, and is reported as stopped only when it did (signals, no timing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from kato_grpc.engine.budget import Budget
from kato_grpc.stores.index import KnowledgeIndex
from kato_server.engine_threads import EngineThreads

Work = Callable[[Budget, threading.Event, threading.Event], object]


def _stops_when_given_up(work: Work) -> int:
    """``work(budget, started, finish)`` on an engine thread, its call given up once it set
    ``started``, then ``finish`` set: how many stops the runner reported once it released the
    work's KB (which it does when the work's thread has ended)."""
    started, finish = threading.Event(), threading.Event()
    stops: list[None] = []

    async def run() -> None:
        runner, kb = EngineThreads(1, 10**6, lambda: stops.append(None)), KnowledgeIndex()
        call = asyncio.create_task(runner.run(lambda budget: work(budget, started, finish), [kb]))
        await asyncio.to_thread(started.wait)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        finish.set()
        while kb.readers:
            await asyncio.sleep(0.01)
        runner.close()

    asyncio.run(run())
    return len(stops)


def test_a_computation_whose_call_gives_up_stops_at_its_next_check_and_is_reported() -> None:
    def endless(budget: Budget, started: threading.Event, finish: threading.Event) -> None:
        started.set()
        while True:
            budget.check()
            if finish.wait(0.001):
                # The call gave up before ``finish`` was set: this check raises, unless the
                # runner never told the budget (then the work ends here, and is not counted).
                budget.check()
                return

    assert _stops_when_given_up(endless) == 1


def test_a_computation_that_finishes_anyway_is_not_reported_as_stopped() -> None:
    def unchecked(budget: Budget, started: threading.Event, finish: threading.Event) -> int:
        started.set()
        finish.wait()  # returns after its call gave up, without a check
        return 1

    assert _stops_when_given_up(unchecked) == 0
