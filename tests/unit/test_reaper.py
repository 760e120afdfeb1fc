"""The transaction reaper in process, over the twins (the seams: architecture.md §4): the
leases on an ``InMemoryKeyspace`` whose clock the test moves, the pattern side's
``TransactionSessions`` a recording double."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kato_grpc.stores.keys import Keys
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemoryKeyspace, InMemoryTransactionLeases
from kato_grpc.stores.protocols import TransactionLeases, TransactionSessions
from kato_server.reaper import TransactionReaper

LEASE = 3.0
KEYS = Keys("reaper-test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class EndedSessions:
    """Records which sessions the reaper ended, as MongoDB's killSessions would end them."""

    def __init__(self) -> None:
        self.ended: list[list[bytes]] = []

    async def end_sessions(self, session_ids: Sequence[bytes]) -> None:
        self.ended.append(list(session_ids))


def _lsid(n: int) -> bytes:
    return bytes([n]) * 16


def test_a_lapsed_process_has_its_sessions_ended_and_a_live_one_keeps_them() -> None:
    async def main() -> None:
        clock = Clock()
        space = InMemoryKeyspace(clock)

        def process(name: str) -> TransactionLeases:
            return InMemoryTransactionLeases(space, KEYS, LEASE, name)

        dead, live, survivor = process("dead"), process("live"), process("survivor")
        patterns = EndedSessions()
        sessions: TransactionSessions = patterns
        reaper = TransactionReaper(survivor, sessions, LEASE / 3)
        await dead.register(_lsid(1))
        await dead.register(_lsid(2))
        await live.register(_lsid(3))
        await survivor.register(_lsid(4))
        assert await reaper.run_once() == 0  # everyone's lease holds
        clock.now += LEASE / 2
        await live.renew()  # the live process renews; the dead one never does again
        clock.now += LEASE / 2 + 0.001  # past the dead one's lease, within the live one's
        assert await reaper.run_once() == 1
        assert patterns.ended == [[_lsid(1), _lsid(2)]]  # the survivor's own and the live one's stay
        assert await reaper.run_once() == 0  # forgotten: ended once
        assert patterns.ended == [[_lsid(1), _lsid(2)]]

    asyncio.run(main())


def test_a_process_that_stalled_past_its_lease_registers_again_with_its_sessions() -> None:
    async def main() -> None:
        clock = Clock()
        space = InMemoryKeyspace(clock)
        stalled = InMemoryTransactionLeases(space, KEYS, LEASE, "stalled")
        survivor = InMemoryTransactionLeases(space, KEYS, LEASE, "survivor")
        patterns = EndedSessions()
        reaper = TransactionReaper(survivor, patterns, LEASE / 3)
        await stalled.register(_lsid(1))
        clock.now += LEASE + 0.001
        assert await reaper.run_once() == 1  # taken for dead: its transactions in flight end
        await stalled.renew()  # its own reaper's next pass: back, with the sessions it still holds
        assert await reaper.run_once() == 0
        clock.now += LEASE + 0.001
        assert await reaper.run_once() == 1
        assert patterns.ended == [[_lsid(1)], [_lsid(1)]]

    asyncio.run(main())


def test_the_reaper_runs_over_the_pattern_stores_twin() -> None:
    """``InMemoryPatternStore`` is a ``TransactionSessions`` too (nothing is ever left open in
    it): the reaper forgets a lapsed process through it all the same."""

    async def main() -> None:
        clock = Clock()
        space = InMemoryKeyspace(clock)
        await InMemoryTransactionLeases(space, KEYS, LEASE, "dead").register(_lsid(1))
        survivor = InMemoryTransactionLeases(space, KEYS, LEASE, "survivor")
        reaper = TransactionReaper(survivor, InMemoryPatternStore(), LEASE / 3)
        clock.now += LEASE + 0.001
        assert await reaper.run_once() == 1
        assert await survivor.dead() == {}

    asyncio.run(main())
