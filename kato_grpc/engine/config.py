"""Session configuration: validation (engine.md §5.11, D-1, D-16) and resolution to defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kato_grpc.errors import FieldViolation, InvalidArgument
from kato_grpc.v1 import engine_pb2 as pb

# engine.md Appendix B defaults.
DEFAULT_RECALL_THRESHOLD = 0.1
DEFAULT_MAX_PREDICTIONS = 100
DEFAULT_PERSISTENCE = 5
DEFAULT_MAX_PATTERN_LENGTH = 0

MAX_PERSISTENCE = 100
MAX_MAX_PREDICTIONS = 10_000

# Rank key name for every RankSortAlgo value; the name is the Prediction field it reads.
RANK_KEYS: dict[int, str] = {
    value.number: value.name.removeprefix("RANK_SORT_ALGO_").lower()
    for value in pb.RankSortAlgo.DESCRIPTOR.values
    if value.number != 0
}
WEIGHTED_RANK_KEYS = frozenset(k for k in RANK_KEYS.values() if k.startswith("weighted_"))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """A session's effective configuration: every parameter resolved to a value."""

    max_pattern_length: int = DEFAULT_MAX_PATTERN_LENGTH
    persistence: int = DEFAULT_PERSISTENCE
    recall_threshold: float = DEFAULT_RECALL_THRESHOLD
    rolling: bool = False
    max_predictions: int = DEFAULT_MAX_PREDICTIONS
    sort_symbols: bool = True
    process_predictions: bool = True
    use_token_matching: bool = True
    fuzzy_token_threshold: float = 0.0
    rank_key: str = "potential"
    affinity_emotive: str | None = None


def validate_config(config: pb.SessionConfig, *, prefix: str = "config") -> None:
    """Raise InvalidArgument naming every out-of-range field; accept a valid config silently."""
    violations: list[FieldViolation] = []

    def bad(name: str, description: str) -> None:
        violations.append(FieldViolation(f"{prefix}.{name}", description))

    if config.HasField("max_pattern_length") and config.max_pattern_length < 0:
        bad("max_pattern_length", "must be >= 0")
    if config.HasField("persistence") and not 1 <= config.persistence <= MAX_PERSISTENCE:
        bad("persistence", f"must be between 1 and {MAX_PERSISTENCE}")
    if config.HasField("recall_threshold") and not _unit_interval(config.recall_threshold):
        bad("recall_threshold", "must be a number between 0.0 and 1.0")
    if config.HasField("stm_mode") and config.stm_mode not in (
        pb.STM_MODE_UNSPECIFIED,
        pb.STM_MODE_CLEAR,
        pb.STM_MODE_ROLLING,
    ):
        bad("stm_mode", "must be STM_MODE_CLEAR or STM_MODE_ROLLING")
    if config.HasField("max_predictions") and not 1 <= config.max_predictions <= MAX_MAX_PREDICTIONS:
        bad("max_predictions", f"must be between 1 and {MAX_MAX_PREDICTIONS}")
    if config.HasField("fuzzy_token_threshold") and not _unit_interval(config.fuzzy_token_threshold):
        bad("fuzzy_token_threshold", "must be a number between 0.0 and 1.0")
    if config.HasField("affinity_emotive") and not config.affinity_emotive:
        bad("affinity_emotive", "must be a non-empty emotive name when set")
    if config.HasField("rank_sort_algo") and config.rank_sort_algo != pb.RANK_SORT_ALGO_UNSPECIFIED:
        key = RANK_KEYS.get(config.rank_sort_algo)
        if key is None:
            bad("rank_sort_algo", "unknown ranking key")
        elif key in WEIGHTED_RANK_KEYS and not config.affinity_emotive:
            # D-16: a weighted key has nothing to rank by without affinity weighting.
            bad("rank_sort_algo", f"{key} needs affinity_emotive to be set")
    if violations:
        raise InvalidArgument(
            "invalid session config: " + "; ".join(f"{v.field} {v.description}" for v in violations),
            reason="INVALID_CONFIG",
            violations=tuple(violations),
        )


def resolve_config(config: pb.SessionConfig) -> EngineConfig:
    """Resolve a (validated) SessionConfig to an EngineConfig with defaults filled in."""
    d = EngineConfig()
    return EngineConfig(
        max_pattern_length=(
            config.max_pattern_length if config.HasField("max_pattern_length") else d.max_pattern_length
        ),
        persistence=config.persistence if config.HasField("persistence") else d.persistence,
        recall_threshold=(config.recall_threshold if config.HasField("recall_threshold") else d.recall_threshold),
        rolling=config.stm_mode == pb.STM_MODE_ROLLING,
        max_predictions=config.max_predictions if config.HasField("max_predictions") else d.max_predictions,
        sort_symbols=config.sort_symbols if config.HasField("sort_symbols") else d.sort_symbols,
        process_predictions=(
            config.process_predictions if config.HasField("process_predictions") else d.process_predictions
        ),
        use_token_matching=(
            config.use_token_matching if config.HasField("use_token_matching") else d.use_token_matching
        ),
        fuzzy_token_threshold=(config.fuzzy_token_threshold if config.HasField("fuzzy_token_threshold") else 0.0),
        rank_key=RANK_KEYS.get(config.rank_sort_algo, d.rank_key),
        affinity_emotive=config.affinity_emotive if config.HasField("affinity_emotive") else None,
    )


def effective_config(config: pb.SessionConfig) -> pb.SessionConfig:
    """The SessionConfig with every defaulted field filled in (what GetSession shows)."""
    r = resolve_config(config)
    out = pb.SessionConfig(
        max_pattern_length=r.max_pattern_length,
        persistence=r.persistence,
        recall_threshold=r.recall_threshold,
        stm_mode=pb.STM_MODE_ROLLING if r.rolling else pb.STM_MODE_CLEAR,
        max_predictions=r.max_predictions,
        sort_symbols=r.sort_symbols,
        process_predictions=r.process_predictions,
        use_token_matching=r.use_token_matching,
        fuzzy_token_threshold=r.fuzzy_token_threshold,
        rank_sort_algo=pb.RankSortAlgo.Value("RANK_SORT_ALGO_" + r.rank_key.upper()),
    )
    if r.affinity_emotive is not None:
        out.affinity_emotive = r.affinity_emotive
    return out


def _unit_interval(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0
