"""The outbox relay: learns committed to a session reach the knowledge base even when
nobody calls that session again.

A call that commits pattern writes marks its session in Redis first, then applies the
writes itself right after the commit. If it is cut off in between (deadline, MongoDB
stalled, the process killed), the writes wait in the session's outbox, which has no TTL.
Every serving process runs this relay: once a second it takes the marks older than the
grace period (by Redis's clock), applies each outbox through the same exactly-once path as
the calls (the MongoDB ledger makes a double application a no-op, so several relays and a
returning call may race harmlessly), and removes outbox and mark unless a newer commit
replaced them meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import OutboxQueue

log = structlog.get_logger("kato.relay")
BATCH = 100


class OutboxRelay:
    def __init__(
        self,
        outboxes: OutboxQueue,
        apply: Callable[[storage.Outbox], Awaitable[object]],
        *,
        after_seconds: float,
        interval_seconds: float,
    ) -> None:
        self._outboxes = outboxes
        self._apply = apply
        self._after_ms = int(after_seconds * 1000)
        self._interval = interval_seconds

    async def run_once(self) -> int:
        """Apply the outboxes that are due; returns how many were applied."""
        applied = 0
        for session_id, score in await self._outboxes.due_outboxes(self._after_ms, BATCH):
            found = await self._outboxes.read_outbox(session_id)
            version = None
            if found is not None:
                outbox, version = found
                await self._apply(outbox)
                applied += 1
                log.info("relayed an outbox", writes=len(outbox.writes), node_id=outbox.node_id)
            await self._outboxes.release_outbox(session_id, version, score)
        return applied

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: a pass every interval; a failing pass (a store down) is retried."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # a store outage: health reports it; try again next time
                log.warning("outbox relay pass failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
