"""Nearest indexed vectors for a percept vector (engine.md §1.5: 3 nearest, euclidean, no cut-off)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.knowledge import VectorNeighbour


def nearest(
    names: Sequence[str], matrix: npt.NDArray[np.float64], query: npt.NDArray[np.float64], k: int
) -> list[VectorNeighbour]:
    """The k rows of ``matrix`` nearest to ``query``, nearest first, equal distances by name."""
    if len(names) == 0 or k <= 0:
        return []
    distances = np.linalg.norm(matrix - query, axis=1)
    order = sorted(range(len(names)), key=lambda i: (float(distances[i]), names[i]))
    return [VectorNeighbour(names[i], float(distances[i])) for i in order[:k]]
