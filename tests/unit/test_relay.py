"""The outbox relay in process, over the session store's twin (the seam: architecture.md §4)."""

from __future__ import annotations

import asyncio

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import CasResult
from kato_server.relay import OutboxRelay

SID = "s-" + "2" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _outbox(name: str) -> storage.Outbox:
    return storage.Outbox(session_id=SID, node_id="n", writes=[storage.PatternWrite(write_id=name, name=name)])


async def _commit(store: InMemorySessionStore, version: int, name: str) -> None:
    state = storage.SessionState(session_id=SID, node_id="n", version=version)
    expected = None if version == 1 else version - 1
    assert await store.compare_and_set(state, expected, 60_000, outbox=_outbox(name)) == CasResult.OK


def test_the_relay_applies_an_outbox_once_it_is_due_and_clears_it() -> None:
    async def main() -> None:
        clock = Clock()
        store = InMemorySessionStore(clock=clock)
        applied: list[storage.Outbox] = []

        async def apply(outbox: storage.Outbox) -> None:
            applied.append(outbox)

        relay = OutboxRelay(store, apply, after_seconds=1.0, interval_seconds=1.0)
        await _commit(store, 1, "p1")
        assert await relay.run_once() == 0  # its call may still apply it itself
        clock.now += 1.001
        assert await relay.run_once() == 1
        assert applied == [_outbox("p1")]
        assert (await store.read_outbox(SID), await store.due_outboxes(0, 10)) == (None, [])
        assert await relay.run_once() == 0

    asyncio.run(main())


def test_an_outbox_committed_while_the_relay_applies_stays_for_the_next_pass() -> None:
    async def main() -> None:
        clock = Clock()
        store = InMemorySessionStore(clock=clock)
        applied: list[str] = []

        async def apply(outbox: storage.Outbox) -> None:
            applied.append(outbox.writes[0].name)
            if len(applied) == 1:  # a call commits again meanwhile
                clock.now += 0.002
                await _commit(store, 2, "p2")

        relay = OutboxRelay(store, apply, after_seconds=1.0, interval_seconds=1.0)
        await _commit(store, 1, "p1")
        clock.now += 1.001
        assert await relay.run_once() == 1
        assert await store.read_outbox(SID) == (_outbox("p2"), 2)  # not the relay's to drop
        assert [sid for sid, _ in await store.due_outboxes(0, 10)] == [SID]  # still marked
        clock.now += 1.001
        assert await relay.run_once() == 1
        assert applied == ["p1", "p2"]
        assert (await store.read_outbox(SID), await store.due_outboxes(0, 10)) == (None, [])

    asyncio.run(main())
