"""Learning: the STM becomes a PatternWrite in the session's outbox (engine.md §3, D-3, D-22).

Used by Learn and by the auto-learn of observe (max_pattern_length); like every transition it
works on a private copy of the state and returns the new one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kato_grpc.engine.config import EngineConfig, resolve_config
from kato_grpc.engine.naming import PATTERN_PREFIX, pattern_name
from kato_grpc.engine.records import accumulate_metadata, average_emotives
from kato_grpc.errors import FailedPrecondition
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb

MIN_PATTERN_SYMBOLS = 2

LEARNED = "LEARNED"
INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


@dataclass(frozen=True, slots=True)
class LearnResult:
    state: storage.SessionState
    status: str  # LEARNED or INSUFFICIENT_DATA (D-22)
    pattern_name: str  # "PTRN|<sha1>" or "" when nothing was learnable
    writes: list[storage.PatternWrite] = field(default_factory=list)


def learn(state: storage.SessionState) -> LearnResult:
    """Learn the STM as a pattern (engine.md §3 with D-3, D-22)."""
    if not state.stm:
        raise FailedPrecondition("cannot learn from an empty short-term memory", reason="STM_EMPTY")
    cfg = resolve_config(state.config)
    new = copy_state(state)
    name, writes = consume_stm(new, cfg)
    return LearnResult(
        state=new,
        status=LEARNED if name else INSUFFICIENT_DATA,
        pattern_name=name,
        writes=writes,
    )


def consume_stm(new: storage.SessionState, cfg: EngineConfig) -> tuple[str, list[storage.PatternWrite]]:
    """Turn the STM into a PatternWrite (when learnable) and clear STM and accumulators.

    Mutates ``new``, which is always the caller's private copy. The write has no id: the
    transaction runner gives each execution's writes theirs (``kato_grpc/request_ids.py``).
    """
    events = stm_lists(new)
    flat = [s for e in events for s in e]
    emotives = [dict(r.values) for r in new.emotives_accumulator]
    metadata = accumulate_metadata(r.values for r in new.metadata_accumulator)
    vectors = list(new.pending_vectors)
    name = ""
    writes: list[storage.PatternWrite] = []
    if len(flat) >= MIN_PATTERN_SYMBOLS or vectors:
        write = storage.PatternWrite(
            persistence=cfg.persistence,
            vectors=vectors,
        )
        if len(flat) >= MIN_PATTERN_SYMBOLS:
            name = pattern_name(events)
            write.name = name
            write.events.extend(pb.Event(symbols=e) for e in events)
            write.emotives.extend(pb.EmotiveRecord(values=e) for e in emotives)
            for key, values in metadata.items():
                write.metadata[key].values.extend(values)
            write.symbol_counts.update(Counter(flat))
            write.affinity_delta.update(average_emotives(emotives))
        new.pending_writes.append(write)
        writes.append(write)
    for field_name in ("stm", "emotives_accumulator", "metadata_accumulator", "pending_vectors"):
        new.ClearField(field_name)
    return (PATTERN_PREFIX + name if name else ""), writes


def stm_lists(state: storage.SessionState) -> list[list[str]]:
    return [list(e.symbols) for e in state.stm]


def forget_predictions(state: storage.SessionState) -> None:
    """Drop the state's record of its last predictions (and that they were current)."""
    for name in ("last_predictions", "last_prediction_set", "last_prediction_set_zlib", "predictions_basis"):
        state.ClearField(name)


def copy_state(state: storage.SessionState) -> storage.SessionState:
    """A private copy of a state (transitions never change their input)."""
    new = storage.SessionState()
    new.CopyFrom(state)
    return new
