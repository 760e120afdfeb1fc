"""The session store's in-memory twin: what ``redis_sessions.py`` does, in dicts.

Same contract, held to it by the same tests (tests/contract/test_session_stores.py): states
are stored serialized (so a transition never shares objects with the store), versions are
compared and set together with the outbox and the request record, loads slide the TTL,
outboxes have none and outlive their sessions, request records live in the session and the
oldest go beyond the limits, the due queue is ordered by mark time then session id, KB
versions only move forward, and the first namespace claim wins.

Keys work as on Redis: every store keeps its data in an ``InMemoryKeyspace`` under its
deployment's namespace (``Keys``), so twins that share one keyspace with different namespaces
never see each other's keys — two deployments on one Redis — and twins with one namespace
share sessions — two processes of one deployment. The keyspace's ``clock`` (seconds, by
default ``time.monotonic``) is injectable: TTL and due-queue tests advance it instead of
sleeping. Time is counted in whole milliseconds where Redis counts so (mark scores).

``InMemoryTransactionLeases`` is the twin of ``transaction_owners.py`` (``TransactionLeases``)
on the same keyspace and keys: a lease lapses when the keyspace's clock passes it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.keys import Keys
from kato_grpc.stores.protocols import LSID_BYTES, CasResult, Loaded, RecordKey, RecordLimits


class InMemoryKeyspace:
    """What one Redis server holds for the stores that share it: values by key, each with an
    optional expiry, and the server's clock. A key past its expiry is gone (Redis's rule: it
    lives until the clock passes its expiry time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[str, object] = {}
        self._expires: dict[str, float] = {}  # key -> expiry, in ms of ``clock``

    def now_ms(self) -> float:
        return self.clock() * 1000

    def get(self, key: str) -> object | None:
        expires = self._expires.get(key)
        if expires is not None and self.now_ms() > expires:
            self.delete(key)
        return self._values.get(key)

    def set(self, key: str, value: object, ttl_ms: int | None = None) -> None:
        self._values[key] = value
        self._expires.pop(key, None)
        if ttl_ms is not None:
            self.expire(key, ttl_ms)

    def expire(self, key: str, ttl_ms: int) -> None:
        self._expires[key] = self.now_ms() + ttl_ms

    def expires_at_ms(self, key: str) -> float | None:
        """When ``key`` expires (ms of ``clock``); None when it is gone or has no expiry."""
        if self.get(key) is None:
            return None
        return self._expires.get(key)

    def delete(self, key: str) -> bool:
        self._expires.pop(key, None)
        return self._values.pop(key, None) is not None


@dataclass
class _Session:
    """A session's one key: state, version, TTL and its request records (as Redis's hash)."""

    version: int
    blob: bytes
    ttl_ms: int
    records: OrderedDict[str, bytes] = field(default_factory=OrderedDict)


class InMemorySessionStore:
    # ``commit_or_load`` checks the KB's published version in the same atomic step, as one
    # Redis server's script does (every method here is atomic: none awaits anything that yields).
    checks_kb_version = True

    def __init__(
        self,
        records: RecordLimits | None = None,
        clock: Callable[[], float] | None = None,
        *,
        keyspace: InMemoryKeyspace | None = None,
        keys: Keys | None = None,
    ) -> None:
        """``clock`` makes a keyspace of its own; ``keyspace`` shares one (and its clock)."""
        if keyspace is not None and clock is not None:
            raise ValueError("a shared keyspace has its own clock: give one or the other")
        self._limits = records or RecordLimits()
        self._space = keyspace or InMemoryKeyspace(clock or time.monotonic)
        self.keys = keys or Keys()

    # --- SessionStore ---------------------------------------------------------------------

    def _session(self, session_id: str) -> _Session | None:
        found = self._space.get(self.keys.state(session_id))
        assert found is None or isinstance(found, _Session)
        return found

    def _outbox(self, session_id: str) -> tuple[int, bytes] | None:
        found = self._space.get(self.keys.outbox(session_id))
        assert found is None or isinstance(found, tuple)
        return found

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        session = self._session(session_id)
        if session is None:
            return None
        self._space.expire(self.keys.state(session_id), session.ttl_ms)
        record = session.records.get(request_id) if request_id else None
        outbox = self._outbox(session_id)
        return Loaded(
            state=storage.SessionState.FromString(session.blob),
            version=session.version,
            record=storage.RequestRecord.FromString(record) if record else None,
            outbox=storage.Outbox.FromString(outbox[1]) if outbox else None,
            outbox_version=outbox[0] if outbox else 0,
            kb_version=(await self.kb_version(kb_id) or 0) if kb_id is not None else None,
        )

    async def compare_and_set(
        self,
        state: storage.SessionState,
        expected_version: int | None,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        clear_outbox: bool = False,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
    ) -> int:
        assert not state.pending_writes, "pending writes travel as the outbox, never in the state"
        sid = state.session_id
        if outbox is not None and outbox.writes:
            self._mark(sid)  # before the commit, as on Redis: a failed commit leaves a mark, never an unmarked outbox
        session = self._session(sid)
        if expected_version is None:
            if session is not None:
                return CasResult.CONFLICT
            session = _Session(0, b"", ttl_ms)
            self._space.set(self.keys.state(sid), session)
        elif session is None:
            return CasResult.GONE
        elif session.version != expected_version:
            return CasResult.CONFLICT
        self._write(session, state, ttl_ms, outbox, clear_outbox, request_id, record)
        return CasResult.OK

    async def commit_or_load(
        self,
        state: storage.SessionState,
        expected_version: int,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
        kb_id: str | None = None,
        kb_version: int = 0,
    ) -> Loaded | int:
        assert not state.pending_writes, "pending writes travel as the outbox, never in the state"
        sid = state.session_id
        if outbox is not None and outbox.writes:
            self._mark(sid)  # as compare_and_set: before the commit
        session = self._session(sid)
        if session is None:
            return CasResult.GONE
        if (
            session.version != expected_version
            or self._outbox(sid) is not None
            or (request_id and request_id in session.records)
            or (kb_id is not None and (await self.kb_version(kb_id) or 0) > kb_version)
        ):
            loaded = await self.load(sid, request_id, kb_id)
            assert loaded is not None
            return loaded
        self._write(session, state, ttl_ms, outbox, False, request_id, record)
        return CasResult.OK

    def _write(
        self,
        session: _Session,
        state: storage.SessionState,
        ttl_ms: int,
        outbox: storage.Outbox | None,
        clear_outbox: bool,
        request_id: str,
        record: storage.RequestRecord | None,
    ) -> None:
        """A commit whose preconditions held: state, TTL, outbox, request record."""
        sid = state.session_id
        session.version, session.blob, session.ttl_ms = state.version, state.SerializeToString(), ttl_ms
        self._space.expire(self.keys.state(sid), ttl_ms)
        if outbox is not None and outbox.writes:
            self._space.set(self.keys.outbox(sid), (state.version, outbox.SerializeToString()))  # no TTL
        elif clear_outbox:
            self._space.delete(self.keys.outbox(sid))
        if request_id and record is not None:
            session.records[request_id] = record.SerializeToString()
            while len(session.records) > self._limits.count or (
                sum(map(len, session.records.values())) > self._limits.bytes and len(session.records) > 1
            ):
                session.records.popitem(last=False)

    def outbox(self, session_id: str) -> storage.Outbox | None:
        """The session's outbox as stored (for tests)."""
        found = self._outbox(session_id)
        return storage.Outbox.FromString(found[1]) if found else None

    # --- SessionDeletion, RequestRecords --------------------------------------------------

    async def delete(self, session_id: str) -> bool:
        return self._space.delete(self.keys.state(session_id))

    def _record_key(self, key: RecordKey) -> str:
        return self.keys.scoped(key.kind, key.node_id, key.principal, key.request_id)

    async def remember(self, key: RecordKey, record: storage.RequestRecord, ttl_ms: int) -> storage.RequestRecord:
        existing = await self.recorded(key)
        if existing is not None:
            return existing
        self._space.set(self._record_key(key), record.SerializeToString(), ttl_ms)
        return record

    async def recorded(self, key: RecordKey) -> storage.RequestRecord | None:
        found = self._space.get(self._record_key(key))
        assert found is None or isinstance(found, bytes)
        return storage.RequestRecord.FromString(found) if found else None

    async def forget(self, key: RecordKey) -> None:
        self._space.delete(self._record_key(key))

    # --- KbVersionBoard -------------------------------------------------------------------

    async def kb_version(self, kb_id: str) -> int | None:
        found = self._space.get(self.keys.kb_version(kb_id))
        assert found is None or isinstance(found, int)
        return found

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        if version > (await self.kb_version(kb_id) or 0):
            self._space.set(self.keys.kb_version(kb_id), version)

    # --- OutboxQueue ----------------------------------------------------------------------

    def _marks(self) -> dict[str, float]:
        found = self._space.get(self.keys.due)
        assert found is None or isinstance(found, dict)
        return found or {}

    def _mark(self, session_id: str) -> None:
        marks = self._marks()
        marks[session_id] = float(math.floor(self._space.now_ms()))  # whole ms, as Redis's TIME gives
        self._space.set(self.keys.due, marks)

    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        cutoff = math.floor(self._space.now_ms()) - older_than_ms
        due = [(score, sid.encode(), sid) for sid, score in self._marks().items() if score <= cutoff]
        return [(sid, score) for score, _, sid in sorted(due)[:limit]]  # a sorted set's order: score, then bytes

    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        found = self._outbox(session_id)
        return (storage.Outbox.FromString(found[1]), found[0]) if found else None

    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        found = self._outbox(session_id)
        if version is not None and found is not None and found[0] == version:
            self._space.delete(self.keys.outbox(session_id))
            found = None
        marks = self._marks()
        if found is None and marks.get(session_id) == score:
            del marks[session_id]
            if not marks:  # an empty sorted set is no key on Redis either
                self._space.delete(self.keys.due)

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        found = self._outbox(session_id)
        if found is not None and found[0] == version:
            self._space.delete(self.keys.outbox(session_id))
            return True
        return False

    # --- NamespaceClaim, StoreConnection --------------------------------------------------

    async def claim_namespace(self, deployment: str) -> str:
        recorded = self._space.get(self.keys.deployment)
        if recorded is None:
            self._space.set(self.keys.deployment, deployment)
            return deployment
        assert isinstance(recorded, str)
        return recorded

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release: the keyspace is the caller's (and outlives its stores, as a
        Redis server outlives its clients)."""


class InMemoryTransactionLeases:
    """``TransactionLeases`` over an ``InMemoryKeyspace``, under the keys ``TransactionOwners``
    uses on Redis: the owners hash (a dict: process -> its session ids, joined) and one lease
    key per process, which expires with the keyspace's clock. Twins on one keyspace and
    namespace are processes of one deployment; another namespace sees none of their leases."""

    def __init__(
        self, keyspace: InMemoryKeyspace, keys: Keys, lease_seconds: float, process: str | None = None
    ) -> None:
        self._space = keyspace
        self._keys = keys
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self.process = process or uuid.uuid4().hex
        self._sessions: list[bytes] = []
        self._known: set[bytes] = set()

    def _owners(self) -> dict[str, bytes]:
        found = self._space.get(self._keys.transaction_owners)
        assert found is None or isinstance(found, dict)
        return found if found is not None else {}

    def _store_owners(self, owners: dict[str, bytes]) -> None:
        if owners:
            self._space.set(self._keys.transaction_owners, owners)
        else:  # an empty hash is no key on Redis either
            self._space.delete(self._keys.transaction_owners)

    async def register(self, session_id: bytes) -> None:
        if session_id in self._known:
            return
        self._sessions.append(session_id)
        self._known.add(session_id)
        await self.renew()

    async def renew(self) -> None:
        owners = self._owners()
        owners[self.process] = b"".join(self._sessions)
        self._store_owners(owners)
        self._space.set(self._keys.transaction_lease(self.process), b"1", self._lease_ms)

    async def dead(self) -> dict[str, list[bytes]]:
        return {
            process: [blob[i : i + LSID_BYTES] for i in range(0, len(blob), LSID_BYTES)]
            for process, blob in self._owners().items()
            if process != self.process and self._space.get(self._keys.transaction_lease(process)) is None
        }

    async def forget(self, process: str) -> None:
        owners = self._owners()
        owners.pop(process, None)
        self._store_owners(owners)

    async def leave(self) -> None:
        await self.forget(self.process)
        self._space.delete(self._keys.transaction_lease(self.process))
