"""Checking an observation and turning it into an STM event (engine.md §1.2, 1.5, 2.1; D-26)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.engine.naming import vector_name
from kato_grpc.engine.vectors import nearest
from kato_grpc.errors import FieldViolation, InvalidArgument
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb

NEAREST_VECTORS = 3


@dataclass(frozen=True, slots=True)
class Percept:
    """The event an observation produces, and the percept vector it queues for indexing."""

    event: list[str]
    vector: storage.PendingVector | None


def check_finite(values: Mapping[str, float], field: str) -> None:
    """Emotive values must be finite numbers (NaN and infinities would poison averages)."""
    for key, value in values.items():
        if not math.isfinite(value):
            raise InvalidArgument.for_field(f"{field}.{key}", "must be a finite number", reason="NON_FINITE_NUMBER")


def validate_observation(observation: pb.Observation, field: str = "observation") -> None:
    """Reject non-finite numbers and ragged vectors before any work (D-26, architecture.md §9)."""
    check_finite(observation.emotives, f"{field}.emotives")
    dims = {len(v.values) for v in observation.vectors}
    if 0 in dims:
        raise InvalidArgument.for_field(f"{field}.vectors", "a vector must not be empty", reason="EMPTY_VECTOR")
    if len(dims) > 1:
        raise InvalidArgument.for_field(
            f"{field}.vectors",
            "all vectors of one observation must have the same dimension",
            reason="VECTOR_DIMENSION_MISMATCH",
        )
    for i, v in enumerate(observation.vectors):
        if not all(math.isfinite(x) for x in v.values):
            raise InvalidArgument.for_field(
                f"{field}.vectors[{i}]", "components must be finite numbers", reason="NON_FINITE_NUMBER"
            )


def build_percept(
    observation: pb.Observation,
    kb: KnowledgeView,
    pending: Sequence[storage.PendingVector],
    sort_symbols: bool,
    field: str = "observation",
) -> Percept:
    """Vector symbols first, then strings, each group sorted when ``sort_symbols`` (engine.md §1.2)."""
    vector_symbols: list[str] = []
    pending_vector = None
    if observation.vectors:
        summed = np.sum(np.asarray([list(v.values) for v in observation.vectors], dtype=np.float64), axis=0)
        _check_dimension(summed, kb, pending, field)
        own = vector_name(summed)
        indexed_names, matrix = kb.vectors()
        names = [n.name for n in nearest(indexed_names, matrix, summed, NEAREST_VECTORS)] + [own]
        vector_symbols = list(dict.fromkeys(names))
        if sort_symbols:
            vector_symbols.sort()
        pending_vector = storage.PendingVector(name=own, vector=pb.Vector(values=summed.tolist()))
    strings = list(observation.strings)
    if sort_symbols:
        strings.sort()
    return Percept(event=vector_symbols + strings, vector=pending_vector)


def _check_dimension(
    vector: npt.NDArray[np.float64], kb: KnowledgeView, pending: Sequence[storage.PendingVector], field: str
) -> None:
    expected = kb.vector_dimension()
    if expected is None and pending:
        expected = len(pending[0].vector.values)
    if expected is not None and expected != len(vector):
        raise InvalidArgument(
            f"{field}.vectors: dimension {len(vector)} does not match the knowledge base's {expected}",
            reason="VECTOR_DIMENSION_MISMATCH",
            violations=(FieldViolation(f"{field}.vectors", f"expected dimension {expected}, got {len(vector)}"),),
            metadata={"expected_dimension": str(expected), "actual_dimension": str(len(vector))},
        )
