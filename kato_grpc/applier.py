"""Applying outboxes to the pattern store: exactly once, shielded from callers' cancellation,
one apply per outbox in flight in this process, optionally behind the call's answer.

The transaction runner (``runner.py``) hands it every outbox it commits or finds left over;
the relay calls ``apply`` for outboxes nobody calls for. It keeps what the process knows of
its applies: those in flight (by outbox and by KB, for ``settle``), the writes pending (a
metric) and the KB version each KB's last apply made (so a call predicts from at least it).
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import Applied, PatternStore, SessionStore
from kato_grpc.stores.snapshotter import KbWritten
from kato_grpc.telemetry import Telemetry

Apply = asyncio.Future[list[storage.PatternWrite]]
MAX_REMEMBERED_KBS = 100_000
log = structlog.get_logger("kato.runner")


class OutboxApplier:
    def __init__(
        self, sessions: SessionStore, patterns: PatternStore, telemetry: Telemetry, written: KbWritten | None = None
    ) -> None:
        """``written`` hears each KB version an apply of this process made (the snapshotter:
        a KB only ever learned into still gets its snapshot)."""
        self.sessions = sessions
        self.patterns = patterns
        self.telemetry = telemetry
        self._written = written
        self._in_flight: dict[Apply, str] = {}  # apply -> its KB
        # By (session, outbox version): a call that finds its session's outbox pending joins
        # the apply already running instead of racing it.
        self._by_outbox: dict[tuple[str, int], Apply] = {}
        self._behind: set[asyncio.Task[None]] = set()  # applies after an answer (held: tasks are weak)
        self._versions: dict[str, int] = {}  # KB -> the version its last apply here made
        self.pending_writes = 0  # writes of the applies in flight (a metric reads it)

    def applied_version(self, kb_id: str) -> int | None:
        return self._versions.get(kb_id)

    def apply_behind(self, outbox: storage.Outbox, version: int) -> None:
        async def run() -> None:
            try:
                await self.apply(outbox, version)
                await self.sessions.drop_outbox(outbox.session_id, version)
            except Exception as exc:  # the outbox stays in Redis: the relay applies it later
                log.warning("applying a learn behind its answer failed; the relay retries", error=repr(exc)[:300])

        task = asyncio.ensure_future(run())
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def apply(self, outbox: storage.Outbox, version: int | None = None) -> list[storage.PatternWrite]:
        """Apply an outbox's writes exactly once and publish the KB's new version. Writes that
        the pattern store refuses for good are kept as dead letters and returned (the rest
        still land).

        The store work is shielded from the caller's cancellation: a deadline that passes
        mid-transaction answers the client, but the transaction goes on to its commit. Cut
        off instead, it would stay open in MongoDB, holding its ledger entry, until the server
        reaps it (60 s) — and every other attempt to apply the same writes would wait for that.
        """
        key = (outbox.session_id, version) if version is not None else None
        running = self._by_outbox.get(key) if key is not None else None
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._apply_now(outbox))
        self._in_flight[task] = outbox.node_id
        self.pending_writes += len(outbox.writes)
        task.add_done_callback(partial(self._applied, len(outbox.writes), key))
        task.add_done_callback(_settled)
        if key is not None:
            self._by_outbox[key] = task
        return await asyncio.shield(task)

    def _applied(self, writes: int, key: tuple[str, int] | None, task: Apply) -> None:
        del self._in_flight[task]
        self.pending_writes -= writes
        if key is not None and self._by_outbox.get(key) is task:
            del self._by_outbox[key]

    async def settle(self, node_id: str) -> bool:
        """Wait for this process's applies in flight to the KB ``node_id``; whether there were any."""
        pending = [task for task, node in self._in_flight.items() if node == node_id]
        if pending:
            await asyncio.wait(pending)
        return bool(pending)

    def _note_version(self, node_id: str, applied: Applied) -> None:
        version = applied.version
        if applied.count and self._written is not None:
            self._written(node_id, version)
        if version > self._versions.get(node_id, -1):
            if node_id not in self._versions and len(self._versions) >= MAX_REMEMBERED_KBS:
                self._versions.pop(next(iter(self._versions)))
            self._versions[node_id] = version

    async def drain(self, timeout: float) -> None:
        """Let applies that outlived their calls finish (shutdown), for at most ``timeout``."""
        pending: list[asyncio.Future[None] | Apply] = [*self._in_flight, *self._behind]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _apply_now(self, outbox: storage.Outbox) -> list[storage.PatternWrite]:
        writes = list(outbox.writes)
        try:
            applied = await self.patterns.apply_many(outbox.node_id, writes)
            await self.sessions.publish_kb_version(outbox.node_id, applied.version)
            self._note_version(outbox.node_id, applied)
            self.telemetry.outbox_applied(len(writes), 0)
            return []
        except Exception as exc:
            if not self.patterns.is_permanent(exc):
                raise
        refused: list[storage.PatternWrite] = []
        for write in writes:  # one by one: find the refused ones, land the others
            try:
                applied = await self.patterns.apply_many(outbox.node_id, [write])
                await self.sessions.publish_kb_version(outbox.node_id, applied.version)
                self._note_version(outbox.node_id, applied)
            except Exception as exc:
                if not self.patterns.is_permanent(exc):
                    raise
                await self.patterns.dead_letter(outbox.node_id, write, exc)
                log.warning(
                    "the pattern store refused a write; kept as a dead letter",
                    write_id=write.write_id,
                    node_id=outbox.node_id,
                    pattern=write.name,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                refused.append(write)
        self.telemetry.outbox_applied(len(writes), len(refused))
        return refused


def _settled(task: asyncio.Future[list[storage.PatternWrite]]) -> None:
    """Mark an apply's error as seen: its caller got it, or — the call having ended — the
    outbox is still there and the relay retries it."""
    if not task.cancelled():
        task.exception()
