"""The session store's in-memory twin: what ``redis_sessions.py`` does, in dicts.

Same contract: states are stored serialized (so a transition never shares objects with the
store), versions are compared and set together with the outbox and the request record, loads
slide the TTL, outboxes have none and outlive their sessions, request records live in the
session and the oldest go beyond the limits. ``clock`` (seconds) is injectable for TTL tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import CasResult, Loaded
from kato_grpc.stores.redis_sessions import RecordLimits


@dataclass
class _Session:
    version: int
    blob: bytes
    ttl_ms: int
    expires: float
    records: OrderedDict[str, bytes] = field(default_factory=OrderedDict)


class InMemorySessionStore:
    def __init__(self, records: RecordLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = records or RecordLimits()
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._outboxes: dict[str, tuple[int, bytes]] = {}
        self.kb_versions: dict[str, int] = {}

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        session = self._live(session_id)
        if session is None:
            return None
        session.expires = self._clock() + session.ttl_ms / 1000
        record = session.records.get(request_id) if request_id else None
        outbox = self._outboxes.get(session_id)
        return Loaded(
            state=storage.SessionState.FromString(session.blob),
            version=session.version,
            record=storage.RequestRecord.FromString(record) if record else None,
            outbox=storage.Outbox.FromString(outbox[1]) if outbox else None,
            outbox_version=outbox[0] if outbox else 0,
            kb_version=self.kb_versions.get(kb_id) if kb_id is not None else None,
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
        session = self._live(state.session_id)
        if expected_version is None:
            if session is not None:
                return CasResult.CONFLICT
            session = self._sessions[state.session_id] = _Session(0, b"", ttl_ms, 0.0)
        elif session is None:
            return CasResult.GONE
        elif session.version != expected_version:
            return CasResult.CONFLICT
        session.version, session.blob, session.ttl_ms = state.version, state.SerializeToString(), ttl_ms
        session.expires = self._clock() + ttl_ms / 1000
        if outbox is not None and outbox.writes:
            self._outboxes[state.session_id] = (state.version, outbox.SerializeToString())
        elif clear_outbox:
            self._outboxes.pop(state.session_id, None)
        if request_id and record is not None:
            session.records[request_id] = record.SerializeToString()
            while len(session.records) > self._limits.count or (
                sum(map(len, session.records.values())) > self._limits.bytes and len(session.records) > 1
            ):
                session.records.popitem(last=False)
        return CasResult.OK

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        if self._outboxes.get(session_id, (None,))[0] == version:
            del self._outboxes[session_id]
            return True
        return False

    def outbox(self, session_id: str) -> storage.Outbox | None:
        found = self._outboxes.get(session_id)
        return storage.Outbox.FromString(found[1]) if found else None

    async def kb_version(self, kb_id: str) -> int | None:
        return self.kb_versions.get(kb_id)

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        self.kb_versions[kb_id] = max(version, self.kb_versions.get(kb_id, 0))

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None
