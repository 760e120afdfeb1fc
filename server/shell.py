"""The use cases of sessions, observing and learning — each a transition for the runner.

Every session-changing call is one ``TransactionRunner.transact`` (``kato_grpc/runner.py``):
load, apply any left-over outbox, run the transition, compare-and-set, apply the new outbox
exactly once. Transitions run the pure processor on an engine thread (``engine_runner.py``)
against a KnowledgeView from the process's KB cache; the runner hands them the session's
state and its node's published KB version.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from kato_grpc import request_ids
from kato_grpc.engine import processor
from kato_grpc.engine.budget import Budget
from kato_grpc.engine.config import effective_config, resolve_config
from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.errors import Aborted, InvalidArgument, NotFound
from kato_grpc.runner import TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.protocols import CasResult
from kato_grpc.stores.redis_sessions import RedisSessionStore, scoped_key
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from server import limits
from server.auth import authorize, principal
from server.engine_runner import EngineRunner

R = TypeVar("R", bound=Message)
Transition = Callable[[pb.SessionState], Awaitable[tuple[pb.SessionState, R]]]

_EMPTY_KB = KnowledgeIndex()
# Observations that run on the event loop when they search no knowledge base (see
# EngineRunner.run): about 30 µs each, so a stream batch stays under ~2 ms.
INLINE_OBSERVATIONS = 64
log = structlog.get_logger("kato.shell")


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _copy(state: pb.SessionState) -> pb.SessionState:
    new = pb.SessionState()
    new.CopyFrom(state)
    return new


def session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")


class KatoShell:
    def __init__(
        self,
        settings: Settings,
        sessions: RedisSessionStore,
        patterns: MongoPatternStore,
        cache: KbCache,
        engine: EngineRunner,
        runner: TransactionRunner,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.patterns = patterns
        self.cache = cache
        self.engine = engine
        self.runner = runner
        self.stm_limits = processor.StmLimits(settings.max_stm_events, settings.max_stm_symbols)

    async def _view(self, node_id: str, published: int | None) -> KnowledgeView:
        if published is None:  # the load did not bring it (first call on the session here)
            published = await self.sessions.kb_version(node_id)
        return await self.cache.view(node_id, published)

    async def _view_for(
        self, state: pb.SessionState, published: int | None, observations: list[pb.Observation]
    ) -> KnowledgeView:
        # Skip the KB round trip when nothing in the call can read the KB.
        if resolve_config(state.config).process_predictions or any(o.vectors for o in observations):
            return await self._view(state.node_id, published)
        return _EMPTY_KB

    async def _read(self, session_id: str) -> pb.SessionState:
        return (await self.runner.read(session_id)).state

    # --- sessions ------------------------------------------------------------------------

    def session_proto(self, state: pb.SessionState) -> svc.Session:
        expire = timestamp_pb2.Timestamp()
        expire.FromSeconds(int(time.time()) + (state.ttl_seconds or self.settings.session_ttl_seconds))
        return svc.Session(
            session_id=state.session_id,
            node_id=state.node_id,
            config=effective_config(state.config),
            ttl_seconds=state.ttl_seconds,
            create_time=state.create_time,
            expire_time=expire,
            metadata=state.metadata,
            etag=str(state.version),
            stm_length=len(state.stm),
            time=state.time,
        )

    async def create_session(self, req: svc.CreateSessionRequest) -> svc.Session:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
        limits.check_request_id(req.request_id)
        ttl = req.ttl_seconds if req.HasField("ttl_seconds") else self.settings.session_ttl_seconds
        limits.check_ttl(ttl, self.settings)
        if len(req.metadata) > self.settings.max_metadata_keys:
            raise InvalidArgument.for_field("metadata", f"has more than {self.settings.max_metadata_keys} keys")
        key, fp = "", b""
        if req.request_id:  # scoped by node and caller: nobody else's id can name this session
            key = scoped_key("create", req.node_id, principal(), req.request_id)
            fp = request_ids.fingerprint("CreateSession", req)
            existing = await self._created(key, fp)
            if existing is not None:
                return existing
        state = processor.new_session("s-" + secrets.token_hex(16), req.node_id, req.config)
        state.ttl_seconds = ttl
        state.metadata.update(req.metadata)
        state.create_time.CopyFrom(_now())
        state.version = 1
        if await self.sessions.compare_and_set(state, None, self.runner.ttl_ms(state)) != CasResult.OK:
            raise Aborted("session id collision; retry", reason="SESSION_ID_COLLISION")
        if key:
            mine = request_ids.record("CreateSession", fp, state.session_id.encode())
            winner = await self.sessions.remember(key, mine, self.runner.ttl_ms(state))
            if winner.response != mine.response:  # a concurrent retry created it first
                await self.sessions.delete(state.session_id)
                request_ids.check_replay(winner, "CreateSession", fp)
                return await self.get_session(winner.response.decode())
        return self.session_proto(state)

    async def _created(self, key: str, fp: bytes) -> svc.Session | None:
        """The session an earlier CreateSession with this (scoped) request id made, if alive."""
        previous = await self.sessions.recorded(key)
        if previous is None:
            return None
        request_ids.check_replay(previous, "CreateSession", fp)
        try:
            return await self.get_session(previous.response.decode())
        except NotFound:  # it expired or was deleted: the id may create a new one
            await self.sessions.forget(key)
            return None

    async def get_session(self, session_id: str) -> svc.Session:
        return self.session_proto(await self._read(session_id))

    async def delete_session(self, session_id: str) -> None:
        # Not found, or not this caller's node: nothing is deleted. The outbox is applied
        # first; one committed after this load outlives the session and the relay applies it.
        await self._read(session_id)
        if not await self.sessions.delete(session_id):
            raise session_not_found(session_id)

    async def extend_session(self, req: svc.ExtendSessionRequest) -> svc.Session:
        limits.check_ttl(req.ttl_seconds, self.settings)

        async def extend(state: pb.SessionState, _kb: int | None) -> tuple[pb.SessionState, svc.Session]:
            new = _copy(state)
            new.ttl_seconds = req.ttl_seconds
            new.version = state.version + 1  # so the returned etag is the saved one
            return new, self.session_proto(new)

        return await self.runner.transact(req.session_id, "ExtendSession", req, "", extend, svc.Session)

    async def update_config(self, req: svc.UpdateSessionConfigRequest) -> svc.Session:
        async def update(state: pb.SessionState, _kb: int | None) -> tuple[pb.SessionState, svc.Session]:
            merged = pb.SessionConfig()
            merged.CopyFrom(state.config)
            merged.MergeFrom(req.config)
            new = processor.update_config(state, merged)
            new.version = state.version + 1
            return new, self.session_proto(new)

        return await self.runner.transact(
            req.session_id, "UpdateSessionConfig", req, req.request_id, update, svc.Session
        )

    # --- observing and learning ----------------------------------------------------------

    async def observe(self, req: svc.ObserveRequest) -> svc.ObserveResponse:
        limits.check_observe(req, self.settings)
        unique_id = req.observation.unique_id or "obs-" + uuid.uuid4().hex

        async def run(state: pb.SessionState, published: int | None) -> tuple[pb.SessionState, svc.ObserveResponse]:
            kb = await self._view_for(state, published, [req.observation])
            r = await self.engine.run(
                lambda budget: processor.observe(
                    state, req.observation, kb, unique_id=unique_id, limits=self.stm_limits, budget=budget
                ),
                [kb],
                inline=_tiny(kb, 1),
            )
            return r.state, _observe_response(r, req.return_predictions)

        return await self.runner.transact(req.session_id, "Observe", req, req.request_id, run, svc.ObserveResponse)

    async def observe_batch(self, reqs: list[svc.ObserveRequest]) -> list[svc.ObserveResponse]:
        """Several observations of one session (no request_ids) in one load / compare-and-set.

        The responses are exactly those of sequential Observe calls; the batch commits as one
        (used by ObserveStream to absorb high-rate clients).
        """
        if len(reqs) == 1:
            return [await self.observe(reqs[0])]
        for req in reqs:
            limits.check_observe(req, self.settings)
        ids = [r.observation.unique_id or "obs-" + uuid.uuid4().hex for r in reqs]
        observations = [r.observation for r in reqs]

        async def run(
            state: pb.SessionState, published: int | None
        ) -> tuple[pb.SessionState, svc.ObserveSequenceResponse]:
            kb = await self._view_for(state, published, observations)
            r = await self.engine.run(
                lambda budget: processor.observe_sequence(
                    state, observations, kb, unique_ids=ids, limits=self.stm_limits, budget=budget
                ),
                [kb],
                inline=_tiny(kb, len(observations)),
            )
            out = svc.ObserveSequenceResponse()
            for req, step in zip(reqs, r.steps, strict=True):
                out.results.append(_observe_response(step.observed, req.return_predictions))
            return r.state, out

        batch = svc.ObserveSequenceRequest(session_id=reqs[0].session_id, observations=observations)
        result = await self.runner.transact(
            reqs[0].session_id, "ObserveStream", batch, "", run, svc.ObserveSequenceResponse
        )
        return list(result.results)

    async def observe_sequence(self, req: svc.ObserveSequenceRequest) -> svc.ObserveSequenceResponse:
        limits.check_sequence(req, self.settings)
        prefix = "seq-obs-" + uuid.uuid4().hex  # one random draw per call, not per observation
        ids = [o.unique_id or f"{prefix}-{i}" for i, o in enumerate(req.observations)]

        def compute(
            state: pb.SessionState, kb: KnowledgeView, budget: Budget
        ) -> tuple[pb.SessionState, svc.ObserveSequenceResponse]:
            out = svc.ObserveSequenceResponse(initial_stm_length=len(state.stm))
            r = processor.observe_sequence(
                state,
                req.observations,
                kb,
                unique_ids=ids,
                limits=self.stm_limits,
                clear_stm_between=req.clear_stm_between,
                learn_after_each=req.learn_after_each,
                budget=budget,
            )
            state = r.state
            for step in r.steps:
                out.results.append(_observe_response(step.observed, req.return_predictions))
                if step.observed.auto_learned_pattern:
                    out.auto_learned_patterns.append(step.observed.auto_learned_pattern)
                if step.learned_after is not None:
                    out.auto_learned_patterns.append(step.learned_after)
            if req.learn_at_end and state.stm:
                learned = processor.learn(state)
                state = learned.state
                out.auto_learned_patterns.append(learned.pattern_name)
                if learned.pattern_name:
                    out.final_learned_pattern = learned.pattern_name
            out.final_stm_length = len(state.stm)
            return state, out

        async def run(
            state: pb.SessionState, published: int | None
        ) -> tuple[pb.SessionState, svc.ObserveSequenceResponse]:
            kb = await self._view_for(state, published, list(req.observations))
            inline = _tiny(kb, len(req.observations))
            return await self.engine.run(lambda budget: compute(state, kb, budget), [kb], inline=inline)

        return await self.runner.transact(
            req.session_id, "ObserveSequence", req, req.request_id, run, svc.ObserveSequenceResponse
        )

    async def learn(self, req: svc.LearnRequest) -> svc.LearnResponse:
        async def run(state: pb.SessionState, _kb: int | None) -> tuple[pb.SessionState, svc.LearnResponse]:
            # A learn reads no KB and is linear in the (bounded) STM: inline.
            r = await self.engine.run(lambda _budget: processor.learn(state), inline=True)
            status = svc.LEARN_STATUS_LEARNED if r.pattern_name else svc.LEARN_STATUS_INSUFFICIENT_DATA
            return r.state, svc.LearnResponse(status=status, pattern_name=r.pattern_name)

        return await self.runner.transact(req.session_id, "Learn", req, req.request_id, run, svc.LearnResponse)

    # --- reading a session ---------------------------------------------------------------

    async def get_predictions(self, session_id: str) -> svc.GetPredictionsResponse:
        loaded = await self.runner.read(session_id)
        state = loaded.state
        kb = await self._view(state.node_id, loaded.kb_version)
        out = svc.GetPredictionsResponse()
        await self.engine.run(
            lambda budget: processor.predictions_into(state, kb, out.predictions, out.future_potentials, budget),
            [kb],
        )
        return out

    async def get_stm(self, session_id: str) -> svc.ShortTermMemory:
        return svc.ShortTermMemory(events=(await self._read(session_id)).stm)

    async def clear_stm(self, req: svc.ClearShortTermMemoryRequest) -> None:
        async def run(state: pb.SessionState, _kb: int | None) -> tuple[pb.SessionState, svc.ShortTermMemory]:
            return processor.clear_stm(state), svc.ShortTermMemory()

        await self.runner.transact(
            req.session_id, "ClearShortTermMemory", req, req.request_id, run, svc.ShortTermMemory
        )

    async def percept_data(self, session_id: str) -> pb.PerceptData:
        return (await self._read(session_id)).percept

    async def cognition_data(self, session_id: str) -> pb.CognitionData:
        return processor.cognition_data(await self._read(session_id))

    # --- wiping a knowledge base ---------------------------------------------------------

    async def clear_knowledge_base(self, req: svc.ClearKnowledgeBaseRequest) -> None:
        """KATO's clear-all: wipe the KB (of the session's node, or of ``node_id``) and, with a
        session, clear its STM. Both given must agree."""
        limits.check_request_id(req.request_id)
        if not req.session_id:
            await self._clear_node(req)
            return
        fp = request_ids.fingerprint("ClearKnowledgeBase", req) if req.request_id else b""
        loaded = await self.runner.load(req.session_id, req.request_id)
        node = loaded.state.node_id
        if req.node_id and req.node_id != node:
            raise InvalidArgument.for_field(
                "node_id", "names another node than the session's; give one of them", reason="NODE_MISMATCH"
            )
        if loaded.record is not None:  # a retry: answered by the transaction below, no second wipe
            request_ids.check_replay(loaded.record, "ClearKnowledgeBase", fp)
        else:
            # Apply the outbox first: writes learned before the wipe must land before it, never
            # after (the ledger then keeps them from being applied again).
            await self._read(req.session_id)
            await self.sessions.publish_kb_version(node, await self.patterns.clear(node))

        async def run(state: pb.SessionState, _kb: int | None) -> tuple[pb.SessionState, svc.ShortTermMemory]:
            return processor.clear_stm(state), svc.ShortTermMemory()

        await self.runner.transact(req.session_id, "ClearKnowledgeBase", req, req.request_id, run, svc.ShortTermMemory)

    async def _clear_node(self, req: svc.ClearKnowledgeBaseRequest) -> None:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
        key = ""
        if req.request_id:
            key = scoped_key("kbreq", req.node_id, principal(), req.request_id)
            fp = request_ids.fingerprint("ClearKnowledgeBase", req)
            previous = await self.sessions.recorded(key)
            if previous is not None:
                request_ids.check_replay(previous, "ClearKnowledgeBase", fp)
                return
        await self.sessions.publish_kb_version(req.node_id, await self.patterns.clear(req.node_id))
        if key:
            done = request_ids.record("ClearKnowledgeBase", fp, b"")
            await self.sessions.remember(key, done, self.settings.max_ttl_seconds * 1000)


def _tiny(kb: KnowledgeView, observations: int) -> bool:
    """Work too small for an engine thread: no pattern or vector to search, few observations."""
    return observations <= INLINE_OBSERVATIONS and kb.pattern_count() == 0 and kb.vector_dimension() is None


def _observe_response(r: processor.ObserveStep, with_predictions: bool) -> svc.ObserveResponse:
    out = svc.ObserveResponse(
        stm_length=r.stm_length, time=r.time, unique_id=r.unique_id, dropped_events=r.dropped_events
    )
    if r.auto_learned_pattern:
        out.auto_learned_pattern = r.auto_learned_pattern
    if with_predictions:
        out.predictions.extend(r.predictions)
        out.future_potentials.extend(r.future_potentials)
    return out
