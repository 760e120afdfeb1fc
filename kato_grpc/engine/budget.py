"""How much work one prediction may do, and a way to call a computation off.

A prediction's cost is dominated by aligning candidates with the STM, and the block
alignment visits every pair of equal symbols (one in the pattern, one in the STM) at least
once. So the work of a prediction is counted as its candidates' symbols plus those pairs —
a number that depends on the inputs alone, so the same call is refused the same way on every
machine (same inputs, same outputs — or the same error). The count is exact only when the
cheap bound (|STM| × candidate symbols) exceeds the limit; below it nothing is counted.

``cancelled`` is set from outside (the call's deadline passed, the server is stopping);
long alignments look at it every few dozen pattern positions and stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.errors import DeadlineExceeded, ResourceExhausted

# Pattern positions between two looks at ``cancelled`` inside one alignment, and the size
# (|pattern| × |STM|) from which an alignment looks at all.
TICK_EVERY = 64
TICKED_ALIGNMENT = 1 << 16


class Budget:
    __slots__ = ("cancelled", "max_prediction_work")

    def __init__(self, max_prediction_work: int) -> None:
        self.max_prediction_work = max_prediction_work
        self.cancelled = False

    def check(self) -> None:
        """Raise if the computation was called off."""
        if self.cancelled:
            raise DeadlineExceeded("the call was cancelled or its deadline passed", reason="DEADLINE_EXCEEDED")

    def charge_alignments(self, candidates: Sequence[PatternRecord], state: Sequence[str]) -> None:
        """Refuse a prediction whose alignments would exceed the work limit (before any)."""
        self.check()
        symbols = sum(len(p.flat) for p in candidates)
        if len(state) * symbols <= self.max_prediction_work:
            return
        counts = Counter(state)
        work = symbols + sum(counts.get(s, 0) for p in candidates for s in p.flat)
        if work > self.max_prediction_work:
            raise ResourceExhausted(
                f"this prediction would compare {work:,} symbol pairs, over the limit of "
                f"{self.max_prediction_work:,} (KATO_MAX_PREDICTION_WORK): shorten the short-term "
                "memory (learn or clear it) or raise recall_threshold",
                reason="WORK_BUDGET_EXCEEDED",
                metadata={"work": str(work), "limit": str(self.max_prediction_work)},
            )
