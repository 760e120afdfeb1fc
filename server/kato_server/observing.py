"""Observing and learning, and reading what a session holds.

Each change is one transition for the transaction runner (``kato_grpc/runner.py``). The pure
processor runs on an engine thread (``engine_threads.py``) — inline only when there is no
knowledge base to search — against a KnowledgeView from the process's KB cache, given the
node's KB version that the session load brought.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from kato_grpc import encoding, names, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.engine.budget import Budget
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.protocols import KbVersionBoard
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation
from kato_server.engine_threads import EngineThreads

_EMPTY_KB = KnowledgeIndex()
# Observations that run on the event loop when they search no knowledge base (see
# EngineThreads.run): about 30 µs each, so a stream batch stays under ~2 ms.
INLINE_OBSERVATIONS = 64
# Predictions that run on the event loop too: those whose alignments are bounded by this much
# work (the KB's stored symbols × the STM's symbols, per observation: budget.py's cheap
# bound). 2,048 took ≤ 0.5 ms here, the time a thread hand-off adds to a call
# (architecture.md §3, "Small predictions inline").
INLINE_WORK = 2048


class Observing:
    def __init__(
        self,
        settings: Settings,
        versions: KbVersionBoard,
        cache: KbCache,
        engine: EngineThreads,
        runner: TransactionRunner,
    ) -> None:
        self.settings = settings
        self.versions = versions
        self.cache = cache
        self.engine = engine
        self.runner = runner
        self.stm_limits = processor.StmLimits(settings.max_stm_events, settings.max_stm_symbols)
        # Encoded events, shared by this process's calls (bounded; see encoding.EventMemo).
        self.memo = encoding.EventMemo(encoding.DEFAULT_MEMO_BYTES)

    async def _view(self, node_id: str, published: int | None) -> KnowledgeIndex:
        if published is None:  # the load did not bring it (first call on the session here)
            published = await self.versions.kb_version(node_id)
        return await self.cache.view(node_id, published)

    async def _view_for(
        self, state: storage.SessionState, published: int | None, observations: list[pb.Observation]
    ) -> KnowledgeIndex:
        if processor.reads_knowledge(state, observations):
            return await self._view(state.node_id, published)
        return _EMPTY_KB  # no KB round trip when nothing in the call can read the KB

    async def _read(self, session_id: str, caller: Caller) -> storage.SessionState:
        return (await self.runner.read(session_id, caller)).state

    # --- sessions ------------------------------------------------------------------------

    async def observe(self, req: svc.ObserveRequest, caller: Caller) -> svc.ObserveResponse:
        sid = validation.check_observe(req, self.settings)
        unique_id = req.observation.unique_id or "obs-" + uuid.uuid4().hex

        def compute(
            state: storage.SessionState, kb: KnowledgeIndex, budget: Budget
        ) -> tuple[storage.SessionState, svc.ObserveResponse]:
            r = processor.observe(
                state, req.observation, kb, unique_id=unique_id, limits=self.stm_limits, budget=budget
            )
            encoded = encoding.record_predictions(
                r.state, r.predictions, self.memo, basis=r.basis, kb_version=kb.version
            )
            out = svc.ObserveResponse()
            _fill_observe(out, r, req.return_predictions, self.memo, state.node_id, encoded)
            return r.state, out

        async def run(
            state: storage.SessionState, published: int | None
        ) -> tuple[storage.SessionState, svc.ObserveResponse]:
            kb = await self._view_for(state, published, [req.observation])
            inline = _light(kb, state, [req.observation], 1)
            return await self.engine.run(lambda budget: compute(state, kb, budget), [kb], inline=inline)

        call = request_ids.Call("Observe", req, req.request_id, svc.ObserveResponse)
        return await self.runner.transact(sid, call, run, caller=caller)

    async def observe_batch(self, reqs: list[svc.ObserveRequest], caller: Caller) -> list[svc.ObserveResponse]:
        """Several observations of one session (no request_ids) in one load / compare-and-set.

        The responses are exactly those of sequential Observe calls; the batch commits as one
        (used by ObserveStream to absorb high-rate clients).
        """
        if len(reqs) == 1:
            return [await self.observe(reqs[0], caller)]
        sid = validation.check_observe(reqs[0], self.settings)
        for req in reqs[1:]:
            validation.check_observe(req, self.settings)
        ids = [r.observation.unique_id or "obs-" + uuid.uuid4().hex for r in reqs]
        observations = [r.observation for r in reqs]

        def compute(
            state: storage.SessionState, kb: KnowledgeIndex, budget: Budget
        ) -> tuple[storage.SessionState, svc.ObserveSequenceResponse]:
            r = processor.observe_sequence(
                state, observations, kb, unique_ids=ids, limits=self.stm_limits, budget=budget
            )
            last = r.steps[-1].observed
            encoded = encoding.record_predictions(
                r.state, last.predictions, self.memo, basis=last.basis, kb_version=kb.version
            )
            out = svc.ObserveSequenceResponse()
            for i, (req, step) in enumerate(zip(reqs, r.steps, strict=True)):
                mine = encoded if i == len(reqs) - 1 else None  # the recorded ones are the last step's
                _fill_observe(out.results.add(), step.observed, req.return_predictions, self.memo, state.node_id, mine)
            return r.state, out

        async def run(
            state: storage.SessionState, published: int | None
        ) -> tuple[storage.SessionState, svc.ObserveSequenceResponse]:
            kb = await self._view_for(state, published, observations)
            inline = _light(kb, state, observations, len(observations))
            return await self.engine.run(lambda budget: compute(state, kb, budget), [kb], inline=inline)

        batch = svc.ObserveSequenceRequest(name=reqs[0].name, observations=observations)
        call = request_ids.Call("ObserveStream", batch, "", svc.ObserveSequenceResponse)
        result = await self.runner.transact(sid, call, run, caller=caller)
        return list(result.results)

    async def observe_sequence(self, req: svc.ObserveSequenceRequest, caller: Caller) -> svc.ObserveSequenceResponse:
        sid = validation.check_sequence(req, self.settings)
        prefix = "seq-obs-" + uuid.uuid4().hex  # one random draw per call, not per observation
        ids = [o.unique_id or f"{prefix}-{i}" for i, o in enumerate(req.observations)]

        def compute(
            state: storage.SessionState, kb: KnowledgeIndex, budget: Budget
        ) -> tuple[storage.SessionState, svc.ObserveSequenceResponse]:
            out = svc.ObserveSequenceResponse(initial_stm_length=len(state.stm))
            r = processor.observe_sequence(
                state,
                req.observations,
                kb,
                unique_ids=ids,
                limits=self.stm_limits,
                clear_stm_between=req.clear_stm_between,
                learn_after_each=req.learn_after_each,
                learn_after=frozenset(req.learn_after),
                budget=budget,
            )
            encoded = None
            if r.steps:  # the last observation's predictions, encoded once (not per step)
                last = r.steps[-1].observed
                encoded = encoding.record_predictions(
                    r.state, last.predictions, self.memo, basis=last.basis, kb_version=kb.version
                )
            node, state = state.node_id, r.state
            for i, step in enumerate(r.steps):
                mine = encoded if i == len(r.steps) - 1 else None
                _fill_observe(out.results.add(), step.observed, req.return_predictions, self.memo, node, mine)
                if step.observed.auto_learned_pattern:
                    out.auto_learned_patterns.append(names.pattern(node, step.observed.auto_learned_pattern))
                if step.learned_after is not None:
                    out.auto_learned_patterns.append(names.pattern(node, step.learned_after))
            if req.learn_at_end and state.stm:
                learned = processor.learn(state)
                state = learned.state
                out.auto_learned_patterns.append(names.pattern(node, learned.pattern_name))
                if learned.pattern_name:
                    out.final_learned_pattern = names.pattern(node, learned.pattern_name)
            out.final_stm_length = len(state.stm)
            return state, out

        async def run(
            state: storage.SessionState, published: int | None
        ) -> tuple[storage.SessionState, svc.ObserveSequenceResponse]:
            kb = await self._view_for(state, published, list(req.observations))
            inline = _light(kb, state, req.observations, len(req.observations))
            return await self.engine.run(lambda budget: compute(state, kb, budget), [kb], inline=inline)

        call = request_ids.Call("ObserveSequence", req, req.request_id, svc.ObserveSequenceResponse)
        return await self.runner.transact(sid, call, run, caller=caller)

    async def learn(self, req: svc.LearnRequest, caller: Caller) -> svc.LearnResponse:
        sid = validation.session_call(req.name, req.request_id)

        async def run(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, svc.LearnResponse]:
            # A learn reads no KB and is linear in the (bounded) STM: inline.
            r = await self.engine.run(lambda _budget: processor.learn(state), inline=True)
            status = svc.LEARN_STATUS_LEARNED if r.pattern_name else svc.LEARN_STATUS_INSUFFICIENT_DATA
            return r.state, svc.LearnResponse(status=status, pattern=names.pattern(state.node_id, r.pattern_name))

        call = request_ids.Call("Learn", req, req.request_id, svc.LearnResponse)
        return await self.runner.transact(sid, call, run, caller=caller)

    # --- reading a session ---------------------------------------------------------------

    async def get_predictions(self, session_id: str, caller: Caller) -> svc.GetPredictionsResponse:
        loaded = await self.runner.read(session_id, caller)
        state = loaded.state
        published = loaded.kb_version
        if published is None:  # the load did not bring it (first call on the session here)
            published = await self.versions.kb_version(state.node_id)
        # Computed once (architecture.md §3): the last observation's, while its STM, config and
        # KB version are the session's now — exactly what computing them again would give. The
        # KB's version "now" is the cache's (no IO when it holds the KB as it is); a process that
        # does not cache the KB asks MongoDB for it instead of loading the KB.
        if state.HasField("predictions_basis"):
            now = await self.cache.version(state.node_id, published)
            if processor.stored_predictions_current(state, now):
                self.runner.telemetry.predictions_served("stored")
                return encoding.stored_predictions(state)
            published = max(published or 0, now)  # what it just learned of the KB is its floor
        self.runner.telemetry.predictions_served("computed")
        kb = await self.cache.view(state.node_id, published)

        def compute(budget: Budget) -> svc.GetPredictionsResponse:
            out = svc.GetPredictionsResponse()  # built on the engine thread too: it can be large
            result = processor.predictions(state, kb, budget)
            prefix = names.pattern_prefix(state.node_id)
            encoding.add_predictions(result, prefix, out.predictions, out.future_potentials, self.memo)
            return out

        return await self.engine.run(compute, [kb], inline=_light(kb, state, (), 1))

    async def get_stm(self, session_id: str, caller: Caller) -> svc.GetShortTermMemoryResponse:
        return svc.GetShortTermMemoryResponse(events=(await self._read(session_id, caller)).stm)

    async def clear_stm(self, req: svc.ClearShortTermMemoryRequest, caller: Caller) -> svc.ClearShortTermMemoryResponse:
        sid = validation.session_call(req.name, req.request_id)

        async def run(
            state: storage.SessionState, _kb: int | None
        ) -> tuple[storage.SessionState, svc.ClearShortTermMemoryResponse]:
            return processor.clear_stm(state), svc.ClearShortTermMemoryResponse()

        call = request_ids.Call("ClearShortTermMemory", req, req.request_id, svc.ClearShortTermMemoryResponse)
        return await self.runner.transact(sid, call, run, caller=caller)

    async def percept_data(self, session_id: str, caller: Caller) -> svc.GetPerceptDataResponse:
        return svc.GetPerceptDataResponse(percept=(await self._read(session_id, caller)).percept)

    async def cognition_data(self, session_id: str, caller: Caller) -> svc.GetCognitionDataResponse:
        return encoding.cognition_data(await self._read(session_id, caller))


def _light(
    kb: KnowledgeIndex, state: storage.SessionState, observations: Sequence[pb.Observation], predictions: int
) -> bool:
    """Work too small for an engine thread: few observations, no vector to search, and either
    no pattern or ``predictions`` computations bounded by INLINE_WORK each."""
    if len(observations) > INLINE_OBSERVATIONS or kb.vector_dimension() is not None:
        return False
    if kb.pattern_count() == 0:
        return True
    if kb.stored_symbols * predictions > INLINE_WORK:  # before counting the STM
        return False
    symbols = sum(len(e.symbols) for e in state.stm) + sum(len(o.strings) for o in observations)
    return kb.stored_symbols * symbols * predictions <= INLINE_WORK


def _fill_observe(
    out: svc.ObserveResponse,
    r: processor.ObserveStep,
    with_predictions: bool,
    memo: encoding.EventMemo,
    node_id: str,
    encoded: bytes | None = None,
) -> None:
    """``encoded``: this step's predictions as ``record_predictions`` encoded them, if it did."""
    out.stm_length, out.time, out.unique_id, out.dropped_events = r.stm_length, r.time, r.unique_id, r.dropped_events
    if r.auto_learned_pattern:
        out.auto_learned_pattern = names.pattern(node_id, r.auto_learned_pattern)
    if with_predictions and encoded is not None:
        out.MergeFromString(encoding.observe_predictions(encoded))
    elif with_predictions:
        prefix = names.pattern_prefix(node_id)
        encoding.add_predictions(r.predictions, prefix, out.predictions, out.future_potentials, memo)
