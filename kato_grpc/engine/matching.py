"""Matching one candidate pattern against the STM (engine.md §4.3-4.7, 4.15; D-9, D-18, D-19).

Produces everything of a prediction that depends on that pattern alone; ensemble metrics
(engine.md §4.9-4.11) come later in ``ensemble``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kato_grpc.engine.alignment import (
    character_similarity,
    matching_blocks,
    token_ratio_percent,
    token_similarity,
)
from kato_grpc.engine.budget import TICK_EVERY, TICKED_ALIGNMENT
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.knowledge import PatternRecord

Events = tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Anomaly:
    observed: str
    expected: str
    similarity: float


@dataclass(frozen=True, slots=True)
class WeightedMetrics:
    similarity: float | None
    evidence: float
    confidence: float
    snr: float


@dataclass(slots=True)
class Match:
    """The per-pattern part of a prediction, built in two steps: ``align`` gives everything
    pruning needs (engine.md §4.8), ``complete`` the event lists and weighted metrics, only for the
    candidates that survive pruning. Never changed once complete."""

    pattern: PatternRecord
    present_start: int  # past, present and future are pattern.events cut at these two indexes
    future_start: int
    similarity: float
    matches: list[str]
    anomalies: list[Anomaly]
    evidence: float
    confidence: float
    snr: float
    fragmentation: float
    missing: list[list[str]] = field(default_factory=list)
    extras: list[list[str]] = field(default_factory=list)
    weighted: WeightedMetrics | None = None

    @property
    def name(self) -> str:
        return self.pattern.name

    @property
    def past(self) -> Events:
        return self.pattern.events[: self.present_start]

    @property
    def present(self) -> Events:
        return self.pattern.events[self.present_start : self.future_start]

    @property
    def future(self) -> Events:
        return self.pattern.events[self.future_start :]

    @property
    def frequency(self) -> int:
        # HEAD treats a missing or zero counter as 1 in predictions.
        return max(self.pattern.frequency, 1)

    @property
    def present_flat(self) -> list[str]:
        return [s for event in self.present for s in event]

    @property
    def frag_term(self) -> float:
        return 0.0 if self.fragmentation == -1.0 else 1.0 / (self.fragmentation + 1.0)

    @property
    def pre_potential(self) -> float:
        """Provisional score for pruning (engine.md §4.8): always the unweighted metrics."""
        return (self.evidence + self.confidence) * self.snr + self.frag_term


def align(
    pattern: PatternRecord, state: Sequence[str], config: EngineConfig, tick: Callable[[], None] | None = None
) -> Match | None:
    """The gate, the alignment and the unweighted metrics of one pattern (all pruning needs;
    single hits have a closed form, ``align_single_hit``)."""
    p = pattern.flat
    gate = token_similarity if config.use_token_matching else character_similarity
    similarity = gate(p, state)
    if similarity < config.recall_threshold:
        return None
    # Long alignments look at the call's budget as they go (short ones never need to).
    blocks = matching_blocks(p, state, tick if len(p) * len(state) > TICKED_ALIGNMENT else None, TICK_EVERY)
    if blocks:
        first, last = blocks[0], blocks[-1]
        past_len = first[0]
        present_len = last[0] + last[2] - first[0]
    elif config.recall_threshold > 0.0:
        return None
    else:
        # Threshold 0 keeps patterns with no overlap: the whole pattern is "present".
        past_len = 0
        present_len = len(p)

    anomalies: list[Anomaly] = []
    if config.fuzzy_token_threshold > 0.0:
        matches, anomalies, extras_count = _fuzzy_matches(p, state, config.fuzzy_token_threshold)
    else:
        matches = [s for _i, j, k in blocks for s in state[j : j + k]]
        # snr's E_x is the state symbols on the insert/replace side of aligning present_flat
        # with the state. present_flat spans exactly the blocks above, and re-aligning that
        # span finds the same blocks (each longest run found over the whole pattern lies in
        # the span and is still the earliest longest there), so E_x = |state| - |matches|.
        extras_count = len(state) - len(matches)

    present_start, future_start = _segment(pattern.events, past_len, present_len, matches)
    return _aligned(pattern, present_start, future_start, similarity, matches, anomalies, extras_count, len(blocks))


def align_single_hit(
    pattern: PatternRecord, state: Sequence[str], pattern_position: int, state_position: int, similarity: float
) -> Match:
    """``align`` for a single hit (see ``candidates``), without the general machinery.

    The one block is (pattern_position, state_position, 1), the first occurrence of the shared
    symbol in the pattern: present is exactly the event holding it (``_segment`` gets there
    through its membership fix-up when the symbol is not first in its event), m = 1 and
    E_x = |state| - 1; the metrics come from the same ``_aligned`` as ``align``'s.
    """
    events = pattern.events
    e = covered = 0
    while covered <= pattern_position:
        covered += len(events[e])
        e += 1
    return _aligned(pattern, e - 1, e, similarity, [state[state_position]], [], len(state) - 1, 1)


def _aligned(
    pattern: PatternRecord,
    present_start: int,
    future_start: int,
    similarity: float,
    matches: list[str],
    anomalies: list[Anomaly],
    extras_count: int,
    blocks: int,
) -> Match:
    """The unweighted metrics (engine.md §4.6-4.7) of an alignment, for ``align`` and its closed form."""
    p = pattern.flat
    m = len(matches)
    lpr = sum(len(ev) for ev in pattern.events[present_start:future_start])
    snr_den = 2 * m + extras_count
    return Match(
        pattern=pattern,
        present_start=present_start,
        future_start=future_start,
        similarity=similarity,
        matches=matches,
        anomalies=anomalies,
        evidence=m / len(p) if p else 0.0,
        confidence=m / lpr if lpr else 0.0,
        snr=(2 * m - extras_count) / snr_den if snr_den else 0.0,
        fragmentation=float(blocks - 1),
    )


def complete(
    m: Match, state: Sequence[str], stm: Sequence[Sequence[str]], weight: Callable[[str], float] | None
) -> None:
    """Add missing, extras and the weighted metrics to a fresh ``align`` result."""
    present = m.present
    # Anomalies (fuzzy matching only) count as neither missing nor extra.
    not_missing = set(m.matches).union(a.expected for a in m.anomalies)
    not_extra = {s for ev in present for s in ev}.union(a.observed for a in m.anomalies)
    m.missing = [[s for s in ev if s not in not_missing] for ev in present]
    m.extras = [[s for s in ev if s not in not_extra] for ev in stm]
    if weight is not None:
        m.weighted = _weighted(weight, m.pattern.flat, state, m.matches, present, m.extras)


def _segment(
    events: Sequence[tuple[str, ...]], past_len: int, present_len: int, matches: Sequence[str]
) -> tuple[int, int]:
    """Map the flat regions back onto whole events (engine.md §4.5), with the membership fix-up:
    the event indexes where present and future start."""
    target = past_len
    covered = 0
    e = 0
    while covered < target:
        covered += len(events[e])
        e += 1
    start = e
    target += present_len
    while covered < target:
        covered += len(events[e])
        e += 1
    if start and matches and matches[0] in events[start - 1]:
        start -= 1
    return start, e


def _fuzzy_matches(
    pattern: Sequence[str], state: Sequence[str], threshold: float
) -> tuple[list[str], list[Anomaly], int]:
    """Fuzzy-inclusive matches, anomalies and the flat extras count (Readings, fuzzy matches)."""
    cutoff = threshold * 100
    matches: list[str] = []
    anomalies: list[Anomaly] = []
    unmatched = 0
    for token in state:
        best: str | None = None
        best_ratio = -1.0
        for candidate in pattern:
            ratio = token_ratio_percent(token, candidate)
            if ratio >= cutoff and ratio > best_ratio:
                best, best_ratio = candidate, ratio
        if best is None:
            unmatched += 1
            continue
        matches.append(token)
        if token != best:
            anomalies.append(Anomaly(observed=token, expected=best, similarity=best_ratio / 100.0))
    return matches, anomalies, unmatched


def _weighted(
    weight: Callable[[str], float],
    pattern: Sequence[str],
    state: Sequence[str],
    matches: Sequence[str],
    present: Events,
    extras: Sequence[Sequence[str]],
) -> WeightedMetrics:
    """Affinity-weighted metrics (engine.md §4.15.3 with D-19's floor for every symbol)."""
    w_matches = sum(weight(s) for s in matches)
    w_pattern = sum(weight(s) for s in pattern)
    w_state = sum(weight(s) for s in state)
    w_present = sum(weight(s) for ev in present for s in ev)
    w_extras = sum(weight(s) for ev in extras for s in ev)
    sim_den = w_state + w_pattern
    snr_den = w_matches + w_extras
    return WeightedMetrics(
        similarity=2 * w_matches / sim_den if sim_den else None,
        evidence=w_matches / w_pattern if w_pattern else 0.0,
        confidence=w_matches / w_present if w_present else 0.0,
        snr=w_matches / snr_den if snr_den else 0.0,
    )
