"""Ending the MongoDB transactions that dead processes left open (``stores/transaction_owners.py``
says why): every second, this process renews its own lease and ends the sessions of every
process whose lease expired. A pass that fails (a store down) is retried at the next one.

It takes the two seams it uses (architecture.md §4): ``TransactionLeases`` (Redis's
``TransactionOwners``, or the twin) and the pattern side's ``TransactionSessions``."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from kato_grpc.stores.protocols import TransactionLeases, TransactionSessions

log = structlog.get_logger("kato.reaper")


class TransactionReaper:
    def __init__(self, owners: TransactionLeases, patterns: TransactionSessions, interval_seconds: float) -> None:
        self._owners = owners
        self._patterns = patterns
        self._interval = interval_seconds

    async def run_once(self) -> int:
        """Renew this process's lease, end the dead ones' sessions; how many processes ended."""
        await self._owners.renew()
        dead = await self._owners.dead()
        for process, sessions in dead.items():
            await self._patterns.end_sessions(sessions)
            await self._owners.forget(process)
            log.warning(
                "ended the MongoDB sessions of a process whose lease expired", process=process, sessions=len(sessions)
            )
        return len(dead)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("transaction reaper pass failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
