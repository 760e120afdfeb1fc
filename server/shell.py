"""The imperative shell: load state, call the pure core, compare-and-set, apply writes.

Every session-changing call runs the same loop (DESIGN 3): load the SessionState from Redis
(1 round trip), flush any PatternWrites an earlier crashed call left in the outbox, take a
KnowledgeView from the process's KB cache, run the pure processor, save the new state with a
compare-and-set on its version, then apply the new PatternWrites to MongoDB exactly once.
A version conflict means another call won: reload and recompute. No locks.
"""

from __future__ import annotations

import base64
import math
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from kato_grpc.engine import processor
from kato_grpc.engine.config import effective_config, resolve_config
from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.engine.naming import strip_pattern_prefix
from kato_grpc.errors import Aborted, InvalidArgument, NotFound
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.redis_sessions import CasResult, Loaded, RedisSessionStore
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from server import limits
from server.auth import authorize

R = TypeVar("R", bound=Message)
Transition = Callable[[pb.SessionState], Awaitable[tuple[pb.SessionState, R, list[pb.PatternWrite]]]]

_EMPTY_KB = KnowledgeIndex()
DEFAULT_PAGE_SIZE = 100
MAX_REMEMBERED_NODES = 100_000
# (node id, KB version) read together with this task's last session load; per task, so
# concurrent calls never see each other's.
_PUBLISHED: ContextVar[tuple[str, int | None]] = ContextVar("kato_published_kb_version", default=("", None))
MAX_PAGE_SIZE = 1000


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _copy(state: pb.SessionState) -> pb.SessionState:
    new = pb.SessionState()
    new.CopyFrom(state)
    return new


class KatoShell:
    def __init__(
        self, settings: Settings, sessions: RedisSessionStore, patterns: MongoPatternStore, cache: KbCache
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.patterns = patterns
        self.cache = cache
        self._nodes: dict[str, str] = {}  # session id -> node id

    # --- the transaction loop ------------------------------------------------------------

    async def _load(self, session_id: str, request_id: str = "") -> Loaded:
        limits.require_session_id(session_id)
        limits.check_request_id(request_id)
        # A session's node never changes: once seen, its KB version rides along with the load.
        loaded = await self.sessions.load(session_id, request_id, self._nodes.get(session_id))
        if loaded is None:
            self._nodes.pop(session_id, None)
            raise NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")
        authorize(loaded.state.node_id)
        if session_id not in self._nodes:
            if len(self._nodes) >= MAX_REMEMBERED_NODES:
                self._nodes.pop(next(iter(self._nodes)))
            self._nodes[session_id] = loaded.state.node_id
        _PUBLISHED.set((loaded.state.node_id, loaded.kb_version))
        return loaded

    async def _flushed(self, state: pb.SessionState) -> pb.SessionState:
        """Apply writes left in the outbox by an earlier call (idempotent through the ledger)."""
        if not state.pending_writes:
            return state
        await self._apply(state.node_id, list(state.pending_writes))
        new = _copy(state)
        new.ClearField("pending_writes")
        return new

    async def _transact(self, session_id: str, request_id: str, transition: Transition[R], response_type: type[R]) -> R:
        for _ in range(self.settings.cas_retries):
            loaded = await self._load(session_id, request_id)
            if loaded.response is not None:
                return response_type.FromString(loaded.response)
            state = await self._flushed(loaded.state)
            new_state, response, _ = await transition(state)
            new_state.version = loaded.version + 1
            writes = _identify_writes(new_state, request_id)
            result = await self.sessions.compare_and_set(
                new_state,
                loaded.version,
                self._ttl_ms(new_state),
                request_id=request_id,
                # Remembered for a retry of the same request_id only; none, nothing to keep.
                response=response.SerializeToString() if request_id else b"",
            )
            if result == CasResult.GONE:
                raise NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")
            if result == CasResult.CONFLICT:
                continue
            if writes:
                if self.settings.fault_crash_after_commit:
                    os._exit(86)  # test hook: die between the Redis commit and the MongoDB write
                await self._apply(new_state.node_id, writes)
                await self._drop_outbox(new_state)
            return response
        raise Aborted(
            f"session {session_id} changed concurrently {self.settings.cas_retries} times; retry",
            reason="CAS_RETRIES_EXHAUSTED",
        )

    async def _drop_outbox(self, state: pb.SessionState) -> None:
        """Best effort: remove applied writes from the saved state (the next call would too)."""
        if not state.pending_writes:
            return
        clean = _copy(state)
        clean.ClearField("pending_writes")
        clean.version = state.version + 1
        await self.sessions.compare_and_set(clean, state.version, self._ttl_ms(clean))

    async def _read(self, session_id: str) -> pb.SessionState:
        """A session for reading: outbox flushed, so its learns are visible in the KB."""
        loaded = await self._load(session_id)
        if loaded.state.pending_writes:
            await self._flushed(loaded.state)
            await self._drop_outbox(loaded.state)
        return loaded.state

    def _ttl_ms(self, state: pb.SessionState) -> int:
        return int((state.ttl_seconds or self.settings.session_ttl_seconds) * 1000)

    async def _view(self, node_id: str) -> KnowledgeView:
        seen_node, published = _PUBLISHED.get()
        if seen_node != node_id or published is None:
            published = await self.sessions.kb_version(node_id)
        return await self.cache.view(node_id, published)

    async def _apply(self, node_id: str, writes: list[pb.PatternWrite]) -> None:
        """Apply writes to MongoDB (exactly once) and publish the KB's new version in Redis."""
        applied = await self.patterns.apply_many(node_id, writes)
        await self.sessions.publish_kb_version(node_id, applied.version)

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
        if req.request_id:
            existing = await self.sessions.created_by(req.request_id)
            if existing is not None:
                return await self.get_session(existing)
        state = processor.new_session("s-" + secrets.token_hex(16), req.node_id, req.config)
        state.ttl_seconds = ttl
        state.metadata.update(req.metadata)
        state.create_time.CopyFrom(_now())
        state.version = 1
        if await self.sessions.compare_and_set(state, None, self._ttl_ms(state)) != CasResult.OK:
            raise Aborted("session id collision; retry", reason="SESSION_ID_COLLISION")
        if req.request_id:
            winner = await self.sessions.remember_creation(req.request_id, state.session_id, self._ttl_ms(state))
            if winner != state.session_id:
                await self.sessions.delete(state.session_id)
                return await self.get_session(winner)
        return self.session_proto(state)

    async def get_session(self, session_id: str) -> svc.Session:
        return self.session_proto(await self._read(session_id))

    async def delete_session(self, session_id: str) -> None:
        await self._load(session_id)  # not found, or not this caller's node: nothing is deleted
        if not await self.sessions.delete(session_id):
            raise NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")

    async def extend_session(self, req: svc.ExtendSessionRequest) -> svc.Session:
        limits.check_ttl(req.ttl_seconds, self.settings)

        async def extend(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.Session, list[pb.PatternWrite]]:
            new = _copy(state)
            new.ttl_seconds = req.ttl_seconds
            new.version = state.version + 1  # so the returned etag is the saved one
            return new, self.session_proto(new), []

        return await self._transact(req.session_id, "", extend, svc.Session)

    async def update_config(self, req: svc.UpdateSessionConfigRequest) -> svc.Session:
        async def update(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.Session, list[pb.PatternWrite]]:
            merged = pb.SessionConfig()
            merged.CopyFrom(state.config)
            merged.MergeFrom(req.config)
            new = processor.update_config(state, merged)
            new.version = state.version + 1
            return new, self.session_proto(new), []

        return await self._transact(req.session_id, req.request_id, update, svc.Session)

    # --- observing and learning ----------------------------------------------------------

    async def observe(self, req: svc.ObserveRequest) -> svc.ObserveResponse:
        limits.check_observation(req.observation, self.settings)
        unique_id = req.observation.unique_id or "obs-" + uuid.uuid4().hex

        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.ObserveResponse, list[pb.PatternWrite]]:
            kb = await self._view_for(state, [req.observation])
            r = processor.observe(
                state, req.observation, kb, unique_id=unique_id, max_stm_events=self.settings.max_stm_events
            )
            return r.state, _observe_response(r, req.return_predictions), r.writes

        return await self._transact(req.session_id, req.request_id, run, svc.ObserveResponse)

    async def observe_batch(self, reqs: list[svc.ObserveRequest]) -> list[svc.ObserveResponse]:
        """Several observations of one session (no request_ids) in one load / compare-and-set.

        The responses are exactly those of sequential Observe calls; the batch commits as one
        (used by ObserveStream to absorb high-rate clients).
        """
        if len(reqs) == 1:
            return [await self.observe(reqs[0])]
        for req in reqs:
            limits.check_observation(req.observation, self.settings)
        ids = [r.observation.unique_id or "obs-" + uuid.uuid4().hex for r in reqs]

        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.ObserveSequenceResponse, list[pb.PatternWrite]]:
            observations = [r.observation for r in reqs]
            kb = await self._view_for(state, observations)
            r = processor.observe_sequence(
                state, observations, kb, unique_ids=ids, max_stm_events=self.settings.max_stm_events
            )
            out = svc.ObserveSequenceResponse()
            for req, step in zip(reqs, r.steps, strict=True):
                out.results.append(_observe_response(step.observed, req.return_predictions))
            return r.state, out, r.writes

        result = await self._transact(reqs[0].session_id, "", run, svc.ObserveSequenceResponse)
        return list(result.results)

    async def _view_for(self, state: pb.SessionState, observations: list[pb.Observation]) -> KnowledgeView:
        # Skip the KB round trip when nothing in the call can read the KB.
        if resolve_config(state.config).process_predictions or any(o.vectors for o in observations):
            return await self._view(state.node_id)
        return _EMPTY_KB

    async def observe_sequence(self, req: svc.ObserveSequenceRequest) -> svc.ObserveSequenceResponse:
        if len(req.observations) > self.settings.max_observations_per_sequence:
            raise InvalidArgument.for_field(
                "observations",
                f"has more than {self.settings.max_observations_per_sequence} observations",
                reason="TOO_MANY_OBSERVATIONS",
            )
        for i, obs in enumerate(req.observations):
            limits.check_observation(obs, self.settings, f"observations[{i}]")
        prefix = "seq-obs-" + uuid.uuid4().hex  # one random draw per call, not per observation
        ids = [o.unique_id or f"{prefix}-{i}" for i, o in enumerate(req.observations)]

        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.ObserveSequenceResponse, list[pb.PatternWrite]]:
            kb = await self._view_for(state, list(req.observations))
            out = svc.ObserveSequenceResponse(initial_stm_length=len(state.stm))
            r = processor.observe_sequence(
                state,
                req.observations,
                kb,
                unique_ids=ids,
                max_stm_events=self.settings.max_stm_events,
                clear_stm_between=req.clear_stm_between,
                learn_after_each=req.learn_after_each,
            )
            state, writes = r.state, r.writes
            for step in r.steps:
                out.results.append(_observe_response(step.observed, req.return_predictions))
                if step.observed.auto_learned_pattern:
                    out.auto_learned_patterns.append(step.observed.auto_learned_pattern)
                if step.learned_after is not None:
                    out.auto_learned_patterns.append(step.learned_after)
            if req.learn_at_end and state.stm:
                learned = processor.learn(state)
                state, writes = learned.state, writes + learned.writes
                out.auto_learned_patterns.append(learned.pattern_name)
                if learned.pattern_name:
                    out.final_learned_pattern = learned.pattern_name
            out.final_stm_length = len(state.stm)
            return state, out, writes

        return await self._transact(req.session_id, req.request_id, run, svc.ObserveSequenceResponse)

    async def learn(self, req: svc.LearnRequest) -> svc.LearnResponse:
        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.LearnResponse, list[pb.PatternWrite]]:
            r = processor.learn(state)
            status = svc.LEARN_STATUS_LEARNED if r.pattern_name else svc.LEARN_STATUS_INSUFFICIENT_DATA
            return r.state, svc.LearnResponse(status=status, pattern_name=r.pattern_name), r.writes

        return await self._transact(req.session_id, req.request_id, run, svc.LearnResponse)

    # --- reading a session ---------------------------------------------------------------

    async def get_predictions(self, session_id: str) -> svc.GetPredictionsResponse:
        state = await self._read(session_id)
        out = svc.GetPredictionsResponse()
        processor.predictions_into(state, await self._view(state.node_id), out.predictions, out.future_potentials)
        return out

    async def get_stm(self, session_id: str) -> svc.ShortTermMemory:
        return svc.ShortTermMemory(events=(await self._read(session_id)).stm)

    async def clear_stm(self, req: svc.ClearShortTermMemoryRequest) -> None:
        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.ShortTermMemory, list[pb.PatternWrite]]:
            return processor.clear_stm(state), svc.ShortTermMemory(), []

        await self._transact(req.session_id, req.request_id, run, svc.ShortTermMemory)

    async def percept_data(self, session_id: str) -> pb.PerceptData:
        return (await self._read(session_id)).percept

    async def cognition_data(self, session_id: str) -> pb.CognitionData:
        return processor.cognition_data(await self._read(session_id))

    # --- knowledge bases -----------------------------------------------------------------

    async def get_pattern(self, node_id: str, name: str) -> pb.Pattern:
        limits.require_node_id(node_id)
        authorize(node_id)
        bare = self._pattern_name(name)
        record = await self.patterns.get_pattern(node_id, bare)
        if record is None:
            raise NotFound(f"pattern {name} not found in node {node_id}", reason="PATTERN_NOT_FOUND")
        return processor.pattern_proto(record)

    def _pattern_name(self, name: str) -> str:
        if not name:
            raise InvalidArgument.for_field("name", "is required", reason="MISSING_FIELD")
        if len(name) > MAX_PAGE_SIZE:
            raise InvalidArgument.for_field("name", "is too long")
        return strip_pattern_prefix(name)

    async def list_patterns(self, req: svc.ListPatternsRequest) -> svc.ListPatternsResponse:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
        if req.page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(req.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            after = (
                base64.b64decode(req.page_token.encode(), altchars=b"-_", validate=True).decode()
                if req.page_token
                else ""
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument.for_field("page_token", "is not a token this service issued") from exc
        records = await self.patterns.list_patterns(req.node_id, after, size + 1)
        out = svc.ListPatternsResponse(patterns=[processor.pattern_proto(r) for r in records[:size]])
        if len(records) > size:
            out.next_page_token = base64.urlsafe_b64encode(records[size - 1].name.encode()).decode()
        return out

    async def update_pattern(self, req: svc.UpdatePatternRequest) -> pb.Pattern:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
        bare = self._pattern_name(req.pattern.name)
        mask = set(req.update_mask) or {"frequency", "emotives", "metadata"}
        unknown = mask - {"frequency", "emotives", "metadata"}
        if unknown:
            raise InvalidArgument.for_field("update_mask", f"unknown fields: {', '.join(sorted(unknown))}")
        if "frequency" in mask and req.pattern.frequency < 1:
            raise InvalidArgument.for_field("pattern.frequency", "must be >= 1")
        emotives = [dict(r.values) for r in req.pattern.emotives]
        for i, values in enumerate(emotives):
            for key, value in values.items():
                if not math.isfinite(value):
                    raise InvalidArgument.for_field(f"pattern.emotives[{i}].{key}", "must be a finite number")
        record = await self.patterns.update_pattern(
            req.node_id,
            bare,
            frequency=req.pattern.frequency if "frequency" in mask else None,
            emotives=emotives if "emotives" in mask else None,
            metadata={k: list(v.values) for k, v in req.pattern.metadata.items()} if "metadata" in mask else None,
        )
        if record is None:
            raise NotFound(f"pattern {req.pattern.name} not found in node {req.node_id}", reason="PATTERN_NOT_FOUND")
        return processor.pattern_proto(record)

    async def delete_pattern(self, req: svc.DeletePatternRequest) -> None:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
        version = await self.patterns.delete_pattern(req.node_id, self._pattern_name(req.name))
        if version is not None:
            await self.sessions.publish_kb_version(req.node_id, version)
        else:
            raise NotFound(f"pattern {req.name} not found in node {req.node_id}", reason="PATTERN_NOT_FOUND")

    async def clear_knowledge_base(self, req: svc.ClearKnowledgeBaseRequest) -> None:
        if not req.session_id:
            limits.require_node_id(req.node_id, "node_id")
            authorize(req.node_id)
            await self.sessions.publish_kb_version(req.node_id, await self.patterns.clear(req.node_id))
            return
        loaded = await self._load(req.session_id, req.request_id)
        if loaded.response is not None:
            return  # this request_id already cleared the KB
        # Flush the outbox first: writes learned before the wipe must land before it, never after
        # (the ledger then keeps the transaction loop from applying them again).
        state = await self._read(req.session_id)
        await self.sessions.publish_kb_version(state.node_id, await self.patterns.clear(state.node_id))

        async def run(
            state: pb.SessionState,
        ) -> tuple[pb.SessionState, svc.ShortTermMemory, list[pb.PatternWrite]]:
            return processor.clear_stm(state), svc.ShortTermMemory(), []

        await self._transact(req.session_id, req.request_id, run, svc.ShortTermMemory)


def _identify_writes(state: pb.SessionState, request_id: str) -> list[pb.PatternWrite]:
    """Give this call's pattern writes (the whole outbox: it was flushed before the call) their
    ledger ids, and return them.

    With a request_id the id is derived from it, so a retry that re-executes the request
    (because Redis lost the first commit's record, e.g. in a crash inside its fsync window)
    is recognised by the MongoDB ledger and not applied twice. Without one it is random: ids
    from the session version alone could repeat after such a rollback and make the ledger drop
    a different learn.
    """
    call = f"req:{request_id}" if request_id else f"rnd:{secrets.token_hex(12)}"
    for n, write in enumerate(state.pending_writes):
        write.write_id = f"{state.session_id}:{call}:{n}"
    return list(state.pending_writes)


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
