"""Which MongoDB sessions each serving process may leave a transaction open in, so that a
dead process's open transactions are ended within seconds instead of blocking its knowledge
bases until MongoDB reaps them (``transactionLifetimeLimitSeconds``: 60 s by default).

Why: a write transaction holds what it wrote until it commits or aborts, and every write to
a KB first bumps the KB's document. A process killed mid-transaction (SIGKILL, OOM, a lost
node) leaves its transaction open, and every later write to that KB — the relay applying the
very learns the dead process acknowledged included — waits on it. MongoDB ties a transaction
to a logical session, not to a connection, so the dead process's connections closing ends
nothing.

So each process registers every logical session id before its first transaction in it (an
awaited Redis write, only when the driver's pool hands out a session new to this process),
under a lease it renews every second. Any process that finds another's lease expired ends
that process's sessions (``killSessions``, which aborts their transactions) and forgets it.
A process only stalled past its lease loses its transactions in flight, which the driver
retries (the ledger keeps every write exactly once), and registers itself again.

Redis keys (in the deployment's namespace, ``Keys``): ``txn:owners`` (hash: process id ->
its session ids, 16 bytes each) and ``txn:lease:<process>`` (expires with the lease). Like the
session store, it raises StoreUnavailable / StoreError, never redis-py's exceptions. It implements
``protocols.TransactionLeases``; its in-memory twin is ``memory_sessions.InMemoryTransactionLeases``,
and tests/contract/test_session_stores.py holds both to one contract.
"""

from __future__ import annotations

import uuid

from kato_grpc.stores.keys import Keys
from kato_grpc.stores.protocols import LSID_BYTES
from kato_grpc.stores.redis_client import RedisClient, driver_errors, execute


class TransactionOwners:
    def __init__(self, client: RedisClient, keys: Keys, lease_seconds: float, process: str | None = None) -> None:
        self._redis = client
        self._keys = keys
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self.process = process or uuid.uuid4().hex
        self._sessions: list[bytes] = []
        self._known: set[bytes] = set()

    @driver_errors
    async def register(self, session_id: bytes) -> None:
        """Before a transaction in ``session_id``: recorded as this process's (once)."""
        if session_id in self._known:
            return
        self._sessions.append(session_id)
        self._known.add(session_id)
        try:
            await self.renew()
        except BaseException:  # not recorded: try again before the next transaction in it
            self._sessions.remove(session_id)
            self._known.discard(session_id)
            raise

    @driver_errors
    async def renew(self) -> None:
        """Renew this process's lease, with the sessions it holds (re-registering a process
        that was taken for dead while it stalled)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._keys.transaction_owners, self.process, b"".join(self._sessions))
        pipe.set(self._keys.transaction_lease(self.process), b"1", px=self._lease_ms)
        for reply in await execute(pipe):
            if isinstance(reply, Exception):
                raise reply

    @driver_errors
    async def dead(self) -> dict[str, list[bytes]]:
        """The other processes whose lease expired, with the sessions they registered."""
        owners = await self._redis.hgetall(self._keys.transaction_owners)
        others = {_text(p): _bytes(v) for p, v in owners.items() if _text(p) != self.process}
        if not others:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for process in others:
            pipe.exists(self._keys.transaction_lease(process))
        alive = await execute(pipe)
        for reply in alive:
            if isinstance(reply, Exception):
                raise reply
        return {
            process: [blob[i : i + LSID_BYTES] for i in range(0, len(blob), LSID_BYTES)]
            for (process, blob), live in zip(others.items(), alive, strict=True)
            if not int(live)
        }

    @driver_errors
    async def forget(self, process: str) -> None:
        """A dead process whose sessions were ended."""
        await self._redis.hdel(self._keys.transaction_owners, process)

    @driver_errors
    async def leave(self) -> None:
        """At a graceful stop, once no transaction of this process is left."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self._keys.transaction_owners, self.process)
        pipe.delete(self._keys.transaction_lease(self.process))
        await execute(pipe)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
