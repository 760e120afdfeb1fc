"""The session transitions: observe, learn, predictions, clears, config, introspection.

Each function takes a SessionState (and, where needed, a read-only KnowledgeView) and
returns a new SessionState plus outputs and PatternWrites. Inputs are never mutated: the
new state is a copy. This is KATO's stateless processor (architecture.md §2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kato_grpc.engine.budget import Budget
from kato_grpc.engine.config import EngineConfig, resolve_config, validate_config
from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.engine.learning import LearnResult, consume_stm, copy_state, forget_predictions, learn, stm_lists
from kato_grpc.engine.observation import build_percept
from kato_grpc.engine.predict import PredictionSet, predict
from kato_grpc.engine.records import average_emotives, canonical_metadata
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb

# Every transition, in one namespace (learning lives in its own module).
__all__ = [
    "LearnResult",
    "ObserveResult",
    "ObserveStep",
    "SequenceResult",
    "StmLimits",
    "clear_stm",
    "copy_state",
    "learn",
    "new_session",
    "observe",
    "observe_sequence",
    "prediction_basis",
    "predictions",
    "reads_knowledge",
    "stored_predictions_current",
    "update_config",
]

DEFAULT_MAX_STM_EVENTS = 1000
DEFAULT_MAX_STM_SYMBOLS = 10_000
MAX_ACCUMULATOR_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class StmLimits:
    """How much the STM holds: beyond either bound the oldest events are dropped (and
    reported as ``dropped_events``). Patterns are learned from the STM, so these bound a
    pattern too."""

    max_events: int = DEFAULT_MAX_STM_EVENTS
    max_symbols: int = DEFAULT_MAX_STM_SYMBOLS


@dataclass(frozen=True, slots=True)
class ObserveStep:
    """The outputs of one observation."""

    unique_id: str
    stm_length: int
    time: int
    auto_learned_pattern: str | None
    predictions: PredictionSet  # values: the use case records them (encoding.record_predictions)
    dropped_events: int
    writes: list[storage.PatternWrite]
    # ``prediction_basis`` of the STM and config ``predictions`` were computed for; None when
    # the observation computed none (empty, predictions off, an empty KB).
    basis: bytes | None


@dataclass(frozen=True, slots=True)
class ObserveResult(ObserveStep):
    state: storage.SessionState


@dataclass(frozen=True, slots=True)
class SequenceStep:
    observed: ObserveStep
    learned_after: str | None  # learn_after_each: the learned name ("" when not learnable), or None


@dataclass(frozen=True, slots=True)
class SequenceResult:
    state: storage.SessionState
    steps: list[SequenceStep]
    writes: list[storage.PatternWrite]


def new_session(
    session_id: str, node_id: str, config: pb.SessionConfig, *, field: str = "config"
) -> storage.SessionState:
    """A fresh session; the config is validated (D-1: invalid config is an error, not ignored);
    ``field`` is what errors call it."""
    validate_config(config, prefix=field)
    state = storage.SessionState(session_id=session_id, node_id=node_id)
    state.config.CopyFrom(config)
    return state


def update_config(
    state: storage.SessionState, config: pb.SessionConfig, *, field: str = "config"
) -> storage.SessionState:
    """Replace the session config; nothing is applied when any field is invalid."""
    validate_config(config, prefix=field)
    new = copy_state(state)
    new.config.CopyFrom(config)
    return new


def observe(
    state: storage.SessionState,
    observation: pb.Observation,
    kb: KnowledgeView,
    *,
    unique_id: str,
    limits: StmLimits | None = None,
    budget: Budget | None = None,
) -> ObserveResult:
    """One observation (engine.md §2.2 with D-1, D-3, D-10, D-17, D-21, D-24, D-25).

    ``observation`` was validated where it came in (``observation.validate_observation``: the
    service's request checks, the replay's reader): once, not again here."""
    new = copy_state(state)
    cfg = resolve_config(new.config)
    step = _observe_into(new, observation, kb, unique_id, limits or StmLimits(), cfg, budget)
    return ObserveResult(
        unique_id=step.unique_id,
        stm_length=step.stm_length,
        time=step.time,
        auto_learned_pattern=step.auto_learned_pattern,
        predictions=step.predictions,
        dropped_events=step.dropped_events,
        writes=step.writes,
        basis=step.basis,
        state=new,
    )


def observe_sequence(
    state: storage.SessionState,
    observations: Sequence[pb.Observation],
    kb: KnowledgeView,
    *,
    unique_ids: Sequence[str],
    limits: StmLimits | None = None,
    clear_stm_between: bool = False,
    learn_after_each: bool = False,
    learn_after: Collection[int] = (),
    budget: Budget | None = None,
) -> SequenceResult:
    """Observations in order, exactly as repeated ``observe`` calls (and ``learn`` after each
    with ``learn_after_each``, or after the observations ``learn_after`` indexes, when the STM
    is not empty) would give, on one private copy of the state: copying per observation made
    a long sequence quadratic, as the outbox grows."""
    new = copy_state(state)
    cfg = resolve_config(new.config)  # nothing in a sequence changes the config
    steps: list[SequenceStep] = []
    writes: list[storage.PatternWrite] = []
    for i, (observation, unique_id) in enumerate(zip(observations, unique_ids, strict=True)):
        if clear_stm_between and i > 0:
            new.ClearField("stm")
        step = _observe_into(new, observation, kb, unique_id, limits or StmLimits(), cfg, budget)
        writes += step.writes
        learned = None
        if (learn_after_each or i in learn_after) and new.stm:
            learned, learned_writes = consume_stm(new, cfg)
            writes += learned_writes
        steps.append(SequenceStep(step, learned))
    return SequenceResult(new, steps, writes)


def _observe_into(
    new: storage.SessionState,
    observation: pb.Observation,
    kb: KnowledgeView,
    unique_id: str,
    limits: StmLimits,
    cfg: EngineConfig,
    budget: Budget | None,
) -> ObserveStep:
    """Apply one (validated) observation to ``new``, the caller's private copy.

    The state's record of the last predictions is left empty: the engine returns values, and
    the use case records the predictions of a call's last observation once
    (``encoding.record_predictions``), so a sequence encodes them once, not per step."""
    percept = build_percept(observation, kb, new.pending_vectors, cfg.sort_symbols)

    predictions = PredictionSet()
    basis = None
    dropped = 0
    non_empty = bool(observation.strings) or bool(observation.vectors)
    if non_empty:
        if percept.event:
            new.stm.add(symbols=percept.event)
            dropped = _drop_oldest(new, limits)
        if percept.vector is not None and all(v.name != percept.vector.name for v in new.pending_vectors):
            new.pending_vectors.append(percept.vector)
        # An empty KB predicts nothing; skipping it spares copying out a long STM per call.
        if cfg.process_predictions and kb.pattern_count():
            stm = stm_lists(new)
            predictions = predict(stm, kb, cfg, budget=budget)
            basis = prediction_basis(stm, cfg)

    # Accumulate before any auto-learn: the triggering observation's emotives count (D-3).
    if observation.emotives:
        new.emotives_accumulator.add(values=dict(observation.emotives))
        _cap(new.emotives_accumulator)
    if observation.metadata:
        new.metadata_accumulator.add(values=canonical_metadata(observation.metadata, "observation.metadata"))
        _cap(new.metadata_accumulator)

    new.time += 1
    new.percept.Clear()
    new.percept.strings.extend(sorted(observation.strings))
    new.percept.vectors.extend(observation.vectors)
    new.percept.emotives.update(average_emotives(r.values for r in new.emotives_accumulator))
    new.percept.metadata.MergeFrom(observation.metadata)
    forget_predictions(new)  # never stale: recorded by the caller from ``predictions``

    auto_learned: str | None = None
    writes: list[storage.PatternWrite] = []
    if non_empty and _auto_learn_due(len(new.stm), cfg):
        events = stm_lists(new)
        keep = (
            events[len(events) - (cfg.max_pattern_length - 1) :] if cfg.rolling and cfg.max_pattern_length > 1 else []
        )
        name, writes = consume_stm(new, cfg)
        for event in keep:
            new.stm.add(symbols=event)
        auto_learned = name or None

    return ObserveStep(
        unique_id=unique_id,
        stm_length=len(new.stm),
        time=new.time,
        auto_learned_pattern=auto_learned,
        predictions=predictions,
        dropped_events=dropped,
        writes=writes,
        basis=basis,
    )


def reads_knowledge(state: storage.SessionState, observations: Sequence[pb.Observation]) -> bool:
    """Whether observing these can read the knowledge base: observe-time predictions are on,
    or an observation has vectors (their nearest indexed neighbours, engine.md §1.5). When not,
    the shell need not fetch a KnowledgeView at all."""
    return resolve_config(state.config).process_predictions or any(o.vectors for o in observations)


def predictions(state: storage.SessionState, kb: KnowledgeView, budget: Budget | None = None) -> PredictionSet:
    """Predictions for the session's STM with the session's config (a pure read)."""
    return predict(stm_lists(state), kb, resolve_config(state.config), budget=budget)


def prediction_basis(stm: Sequence[Sequence[str]], cfg: EngineConfig) -> bytes:
    """A digest of what predictions are a function of besides the KB: the STM's events and
    the resolved config (its repr is deterministic: ints, floats, strings, bools)."""
    return hashlib.blake2b(repr((stm, cfg)).encode(), digest_size=16).digest()


def stored_predictions_current(state: storage.SessionState, kb_version: int) -> bool:
    """Whether the predictions the state keeps (last_prediction_set) are exactly
    ``predictions(state, kb)`` for the KB at ``kb_version``: recorded whole, with a basis of
    this STM and config on that version of the KB (architecture.md §3)."""
    if not state.HasField("predictions_basis"):
        return False
    basis = state.predictions_basis
    return basis.kb_version == kb_version and basis.digest == prediction_basis(
        stm_lists(state), resolve_config(state.config)
    )


def clear_stm(state: storage.SessionState) -> storage.SessionState:
    """Reset STM, accumulators, time, percept and last predictions (engine.md §5.2)."""
    new = copy_state(state)
    for name in (
        "stm",
        "emotives_accumulator",
        "metadata_accumulator",
        "pending_vectors",
    ):
        new.ClearField(name)
    forget_predictions(new)
    new.ClearField("percept")
    new.time = 0
    return new


def _drop_oldest(new: storage.SessionState, limits: StmLimits) -> int:
    """Drop the oldest events beyond the limits; the newest event always stays."""
    dropped = max(0, len(new.stm) - limits.max_events)
    if dropped:
        del new.stm[:dropped]
    # Every symbol takes at least two bytes on the wire, so a state this small cannot be over
    # the symbol limit and the count is skipped: sizing it (in C) beats counting a long STM's
    # events in Python. Not while it carries the outbox a sequence accumulates: sizing would
    # walk that per observation, a third of a bulk-training server's time (docs/performance.md,
    # "The per-call floor"); such sequences learn, so their STM is short to count.
    if not new.pending_writes and new.ByteSize() <= 2 * limits.max_symbols:
        return dropped
    total = sum(len(e.symbols) for e in new.stm)
    if total <= limits.max_symbols:
        return dropped
    first = 0
    while total > limits.max_symbols and first < len(new.stm) - 1:
        total -= len(new.stm[first].symbols)
        first += 1
    if first:
        del new.stm[:first]
    return dropped + first


def _auto_learn_due(stm_events: int, cfg: EngineConfig) -> bool:
    return cfg.max_pattern_length > 0 and stm_events >= cfg.max_pattern_length


def _cap(records: Sequence[object]) -> None:
    excess = len(records) - MAX_ACCUMULATOR_ENTRIES
    if excess > 0:
        del records[:excess]  # type: ignore[attr-defined]
