"""Candidate screening: exact shortcuts that spare most alignments (issue 4, D-2).

Three facts, each exact, let predictions skip work without changing any output:

1. With a positive recall threshold only patterns sharing a symbol with the state can pass
   (no shared symbol, no matching block), so candidates come from the symbol index.
2. ``LCS(p, s) <= overlap(p, s) = sum over shared x of min(count_p(x), count_s(x))``, so in
   token mode ``2·overlap / (|p| + |s|) < threshold`` rejects a pattern without computing LCS.
3. When the overlap is exactly 1 (one shared symbol x, matchable once) the block alignment is
   the single block ``(first x in p, first x in s, 1)`` and the flat extras number
   ``|s| - 1``; the gate similarity (token mode) is ``2 / (|p| + |s|)`` and the pruning score
   follows in closed form. Such "single hits" are most candidates in a large KB; only the
   ones that survive pruning are matched in full (with the alignment handed over).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kato_grpc.engine.alignment import character_similarity
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.knowledge import KnowledgeView, PatternRecord
from kato_grpc.engine.matching import KnownAlignment


@dataclass(frozen=True, slots=True)
class SingleHit:
    """A gated candidate with overlap 1: everything pruning needs, without an alignment."""

    pattern: PatternRecord
    known: KnownAlignment
    pre_potential: float

    @property
    def name(self) -> str:
        return self.pattern.name


@dataclass(frozen=True, slots=True)
class Screen:
    single_hits: list[SingleHit]
    others: list[PatternRecord]  # candidates that need the full match


def screen(kb: KnowledgeView, state: Sequence[str], config: EngineConfig) -> Screen:
    """Split the candidates of a positive-threshold query into single hits and the rest."""
    state_counts = Counter(state)
    first_in_state = {x: state.index(x) for x in state_counts}
    shared: dict[str, list[str]] = {}
    for x in state_counts:
        for name in kb.postings(x):
            shared.setdefault(name, []).append(x)
    n = len(state)
    token_mode = config.use_token_matching
    quick = config.fuzzy_token_threshold == 0.0
    threshold = config.recall_threshold
    single_snr = (2 - (n - 1)) / (2 + (n - 1))
    hits: list[SingleHit] = []
    others: list[PatternRecord] = []
    for name, symbols in shared.items():
        pattern = kb.pattern(name)
        if pattern is None:
            continue
        flat = pattern.flat
        overlap = sum(min(flat.count(x), state_counts[x]) for x in symbols)
        total = len(flat) + n
        if token_mode and 2.0 * overlap / total < threshold:
            continue
        if overlap != 1 or not quick:
            others.append(pattern)
            continue
        x = symbols[0]
        similarity = 2.0 * 1 / total if token_mode else character_similarity(flat, state)
        if similarity < threshold:
            continue
        i = flat.index(x)
        present_len = _event_length_at(pattern, i)
        # The same expression, in the same order, as Match.pre_potential (spec 4.8).
        pre = (1 / len(flat) + 1 / present_len) * single_snr + 1.0
        known = KnownAlignment(similarity, [(i, first_in_state[x], 1)], n - 1)
        hits.append(SingleHit(pattern, known, pre))
    return Screen(hits, others)


def _event_length_at(pattern: PatternRecord, position: int) -> int:
    """Length of the event holding flat position ``position`` (its present event, spec 4.5)."""
    covered = 0
    for event in pattern.events:
        covered += len(event)
        if covered > position:
            return len(event)
    raise ValueError("position outside the pattern")
