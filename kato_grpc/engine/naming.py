"""KATO-compatible names: patterns (D-27, engine.md §1.4) and vectors (D-26, engine.md §1.5)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only where vectors are named: the client imports pattern names too
    import numpy as np
    import numpy.typing as npt

PATTERN_PREFIX = "PTRN|"
VECTOR_PREFIX = "VCTR|"


def pattern_name(events: Sequence[Sequence[str]]) -> str:
    """Bare 40-hex name: sha1 of Python's repr of the list of events, as KATO computes it."""
    rendering = repr([list(event) for event in events])
    return hashlib.sha1(rendering.encode("utf-8")).hexdigest()


def strip_pattern_prefix(name: str) -> str:
    return name.removeprefix(PATTERN_PREFIX)


def vector_name(vector: npt.NDArray[np.float64]) -> str:
    """``VCTR|`` + sha1 of NumPy's default ``str()`` of the float64 vector.

    The print options are passed explicitly so that a caller's global NumPy settings can
    never change a name.
    """
    import numpy as np  # noqa: PLC0415 - see the TYPE_CHECKING import above

    text = np.array2string(
        np.asarray(vector, dtype=np.float64),
        max_line_width=75,
        precision=8,
        suppress_small=False,
        separator=" ",
        threshold=1000,
        edgeitems=3,
        sign="-",
        floatmode="maxprec",
        legacy=False,
    )
    return VECTOR_PREFIX + hashlib.sha1(text.encode("utf-8")).hexdigest()
