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
   ones that survive pruning become matches, built in closed form (``matching.align_single_hit``).

Overlaps, bounds and single-hit scores are computed over numpy posting arrays. Each float is
the same IEEE-754 expression, evaluated in the same order, as the scalar formula it stands
for, so the results are bit-identical to matching every candidate in full (a property test
compares the two paths).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.alignment import character_similarity
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.knowledge import KnowledgeView, PatternRecord


@dataclass(frozen=True, slots=True)
class SingleHits:
    """Gated candidates with overlap 1, as parallel arrays (struct of arrays)."""

    ids: npt.NDArray[np.int32]
    pre_potential: npt.NDArray[np.float64]
    similarity: npt.NDArray[np.float64]
    pattern_position: npt.NDArray[np.int32]
    state_position: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask: npt.NDArray[np.bool_]) -> SingleHits:
        return SingleHits(
            self.ids[mask],
            self.pre_potential[mask],
            self.similarity[mask],
            self.pattern_position[mask],
            self.state_position[mask],
        )


@dataclass(frozen=True, slots=True)
class Screen:
    single_hits: SingleHits
    others: list[PatternRecord]  # candidates that need the full match


_I32 = np.empty(0, dtype=np.int32)
_F64 = np.empty(0, dtype=np.float64)
NO_HITS = SingleHits(_I32, _F64, _F64, _I32, _I32)


def screen(kb: KnowledgeView, state: Sequence[str], config: EngineConfig) -> Screen:
    """Split the candidates of a positive-threshold query into single hits and the rest."""
    state_counts = Counter(state)
    n = len(state)
    first: dict[str, int] = {}
    for position, symbol in enumerate(state):  # linear: ``state.index`` per symbol was quadratic
        first.setdefault(symbol, position)
    parts = []
    for k, (symbol, count) in enumerate(state_counts.items()):
        postings = kb.posting_arrays(symbol)
        if len(postings.ids):
            parts.append((k, first[symbol], count, postings))
    if not parts:
        return Screen(NO_HITS, [])
    ids = np.concatenate([p.ids for _, _, _, p in parts])
    contribution = np.concatenate([np.minimum(p.counts, c) for _, _, c, p in parts])
    first_in_state = np.concatenate([np.full(len(p.ids), j, dtype=np.int32) for _, j, _, p in parts])
    positions = np.concatenate([p.positions for _, _, _, p in parts])
    event_lengths = np.concatenate([p.event_lengths for _, _, _, p in parts])

    candidates, entry_to_candidate = np.unique(ids, return_inverse=True)
    overlap = np.bincount(entry_to_candidate, weights=contribution)  # small ints, exact in float64
    lengths = kb.pattern_lengths()[candidates].astype(np.int64)
    total = lengths + n
    if config.use_token_matching:
        passes = 2.0 * overlap / total >= config.recall_threshold
    else:
        passes = np.ones(len(candidates), dtype=bool)  # the character gate has no such bound
    single = passes & (overlap == 1) if config.fuzzy_token_threshold == 0.0 else np.zeros_like(passes)

    others = [kb.pattern_by_id(int(i)) for i in candidates[passes & ~single]]
    if not single.any():
        return Screen(NO_HITS, others)

    # A single hit has exactly one posting entry: its position data is that entry's.
    entry = single[entry_to_candidate]
    hit_ids = ids[entry]
    hit_lengths = kb.pattern_lengths()[hit_ids].astype(np.int64)
    if config.use_token_matching:
        similarity = 2.0 / (hit_lengths + n)
    else:
        similarity = np.array(
            [character_similarity(kb.pattern_by_id(int(i)).flat, state) for i in hit_ids], dtype=np.float64
        )
    single_snr = (2 - (n - 1)) / (2 + (n - 1))
    # The same expression, in the same order, as Match.pre_potential (engine.md §4.8).
    pre = (1 / hit_lengths + 1 / event_lengths[entry].astype(np.int64)) * single_snr + 1.0
    hits = SingleHits(hit_ids, pre, similarity, positions[entry], first_in_state[entry])
    return Screen(hits.take(similarity >= config.recall_threshold), others)
