"""Session use cases: create, get, delete, extend, reconfigure.

Changes go through the transaction runner (``kato_grpc/runner.py``); CreateSession makes a
new session with a compare-and-set on no previous version, its request id scoped by node and
caller (``kato_grpc/request_ids.py`` decides what a retry gets).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from kato_grpc import names, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.engine.config import effective_config
from kato_grpc.errors import Aborted, InvalidArgument, NotFound
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Respond, TransactionRunner, session_not_found
from kato_grpc.settings import Settings
from kato_grpc.stores.protocols import CasResult, RecordKey, RequestRecords, SessionDeletion, SessionStore
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation


def new_session_id() -> str:
    """A session's id: 128 random bits, so that nobody can guess another's."""
    return "s-" + secrets.token_hex(16)


def _now(plus_seconds: int = 0) -> timestamp_pb2.Timestamp:
    """Now (plus some seconds), in microseconds: every timestamp of the API has one precision."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(time.time_ns() // 1000 + plus_seconds * 1_000_000)
    return ts


class Sessions:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionStore,
        deletion: SessionDeletion,
        records: RequestRecords,
        runner: TransactionRunner,
        telemetry: Telemetry = NO_TELEMETRY,
        session_ids: Callable[[], str] = new_session_id,
    ) -> None:
        """``sessions`` creates (a compare-and-set on no version); ``deletion`` deletes;
        ``records`` keeps the request records of CreateSession, which has no session yet;
        ``session_ids`` draws a new session's id (a test's may be seeded)."""
        self.settings = settings
        self.sessions = sessions
        self.deletion = deletion
        self.records = records
        self.runner = runner
        self.telemetry = telemetry
        self.session_ids = session_ids

    async def _read(self, session_id: str, caller: Caller) -> storage.SessionState:
        return (await self.runner.read(session_id, caller)).state

    def session_proto(self, state: storage.SessionState) -> svc.Session:
        expire = _now(state.ttl_seconds or self.settings.session_ttl_seconds)
        return svc.Session(
            name=names.session(state.session_id),
            knowledge_base=names.knowledge_base(state.node_id),
            config=effective_config(state.config),
            ttl_seconds=state.ttl_seconds,
            create_time=state.create_time,
            expire_time=expire,
            metadata=state.metadata,
            etag=str(state.version),
            stm_length=len(state.stm),
            time=state.time,
        )

    async def create_session(self, req: svc.CreateSessionRequest, caller: Caller) -> svc.Session:
        given = req.session
        node = validation.node_id(given.knowledge_base, "session.knowledge_base")
        caller.authorize(node)
        validation.check_request_id(req.request_id)
        ttl = given.ttl_seconds or self.settings.session_ttl_seconds
        validation.check_ttl(ttl, self.settings, "session.ttl_seconds")
        if len(given.metadata) > self.settings.max_metadata_keys:
            raise InvalidArgument.for_field("session.metadata", f"has more than {self.settings.max_metadata_keys} keys")
        key, fp = None, b""
        if req.request_id:  # scoped by node and caller: nobody else's id can name this session
            key = RecordKey("create", node, caller.principal, req.request_id)
            fp = request_ids.fingerprint("CreateSession", req)
            existing = await self._created(key, fp, caller)
            if existing is not None:
                return existing
        state = processor.new_session(self.session_ids(), node, given.config, field="session.config")
        state.ttl_seconds = ttl
        state.metadata.update(given.metadata)
        state.create_time.CopyFrom(_now())
        state.version = 1
        if await self.sessions.compare_and_set(state, None, self.runner.ttl_ms(state)) != CasResult.OK:
            raise Aborted("session id collision; retry", reason="SESSION_ID_COLLISION")
        self.runner.remember(state)
        if key is not None:
            mine = request_ids.record("CreateSession", fp, state.session_id.encode())
            winner = await self.records.remember(key, mine, self.runner.ttl_ms(state))
            if winner.response != mine.response:  # a concurrent retry created it first
                await self.deletion.delete(state.session_id)
                self.runner.forget(state.session_id)
                request_ids.check_replay(winner, "CreateSession", fp)
                return await self.get_session(winner.response.decode(), caller)
        self.telemetry.session_created()  # (the one a concurrent retry made instead is not counted twice)
        return self.session_proto(state)

    async def _created(self, key: RecordKey, fp: bytes, caller: Caller) -> svc.Session | None:
        """The session an earlier CreateSession with this (scoped) request id made, if alive."""
        previous = await self.records.recorded(key)
        if previous is None:
            return None
        request_ids.check_replay(previous, "CreateSession", fp)
        try:
            return await self.get_session(previous.response.decode(), caller)
        except NotFound:  # it expired or was deleted: the id may create a new one
            await self.records.forget(key)
            return None

    async def get_session(self, session_id: str, caller: Caller) -> svc.Session:
        return self.session_proto(await self._read(session_id, caller))

    async def delete_session(self, req: svc.DeleteSessionRequest, caller: Caller) -> None:
        session_id = validation.session_id(req.name)
        # Not found, or not this caller's node: nothing is deleted. The outbox is applied
        # first; one committed after this load outlives the session and the relay applies it.
        _check_etag(req.etag, await self._read(session_id, caller))
        deleted = await self.deletion.delete(session_id)
        self.runner.forget(session_id)
        if not deleted:
            raise session_not_found(session_id)
        self.telemetry.session_deleted()

    async def update_session(self, req: svc.UpdateSessionRequest, caller: Caller) -> svc.Session:
        sid, paths = validation.check_session_update(req, self.settings)
        given = req.session

        async def update(
            state: storage.SessionState, _kb: int | None
        ) -> tuple[storage.SessionState, Respond[svc.Session]]:
            _check_etag(given.etag, state)
            config = pb.SessionConfig()
            config.CopyFrom(given.config if "config" in paths else state.config)
            for path in paths:
                if path.startswith("config."):  # one parameter: the request's value, or its default
                    name = path[len("config.") :]
                    config.ClearField(name)  # type: ignore[arg-type]
                    if given.config.HasField(name):  # type: ignore[arg-type]
                        setattr(config, name, getattr(given.config, name))
            new = processor.update_config(state, config, field="session.config")  # nothing applied if invalid
            if "ttl_seconds" in paths:
                new.ttl_seconds = given.ttl_seconds
            if "metadata" in paths:
                new.ClearField("metadata")
                new.metadata.update(given.metadata)
            return new, self.session_proto  # built from the saved state: its etag is the new version

        call = request_ids.Call("UpdateSession", req, req.request_id, svc.Session)
        return await self.runner.transact(sid, call, update, caller=caller)


def _check_etag(etag: str, state: storage.SessionState) -> None:
    """A conditional change (AIP-154): refused when the session moved past the client's etag."""
    if etag and etag != str(state.version):
        raise Aborted(
            "the session changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(state.version)},
        )
