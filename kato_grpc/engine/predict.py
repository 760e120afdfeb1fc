"""Predictions for an STM against a knowledge-base view (engine.md §4, engine.md Appendix A, with Decisions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.budget import Budget
from kato_grpc.engine.candidates import SingleHits, screen
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.ensemble import DESCRIPTIVE, FutureGroup, Scored, describe, prune, rank, score
from kato_grpc.engine.knowledge import KnowledgeView, PatternRecord, name_key
from kato_grpc.engine.matching import Match, align, align_single_hit, complete

AFFINITY_FLOOR = 0.01
SMALL_SCREEN = 48


@dataclass(frozen=True, slots=True)
class PredictionSet:
    """One prediction computation: the ranked cut, the whole scored ensemble, the futures."""

    ranked: list[Scored] = field(default_factory=list)
    ensemble: list[Scored] = field(default_factory=list)
    futures: list[FutureGroup] = field(default_factory=list)


def predict(
    stm: Sequence[Sequence[str]],
    kb: KnowledgeView,
    config: EngineConfig,
    *,
    exhaustive: bool = False,
    budget: Budget | None = None,
) -> PredictionSet:
    """Ranked predictions and future potentials, from one computation (D-15), as values
    (``kato_grpc/encoding.py`` turns them into messages). ``exhaustive`` turns off the
    screening shortcuts (the reference path the tests compare the fast one against).
    ``budget`` bounds the alignment work and can call the computation off (none: unbounded)."""
    state = [s for event in stm for s in event]
    if not state:
        return PredictionSet()
    weight = _affinity_weight(kb, config.affinity_emotive) if config.affinity_emotive else None
    if config.recall_threshold == 0.0:
        ensemble = _direct_ensemble(list(kb.all_patterns()), state, stm, config, weight, budget)
    elif exhaustive or _few_postings(kb, state):
        # D-2: exact candidate set. With a positive threshold a pattern sharing no symbol has
        # no matching block and is always dropped, so the symbol index loses nothing.
        ensemble = _direct_ensemble(list(kb.patterns_sharing(set(state))), state, stm, config, weight, budget)
    else:
        ensemble = _screened_ensemble(kb, state, stm, config, weight, budget)
    if not ensemble:
        return PredictionSet()
    scored, groups, context = score(ensemble, state, kb, weighted=weight is not None)
    # The descriptive metrics feed no other prediction: fill them only for the ranked cut,
    # unless one of them is the rank key.
    if config.rank_key in DESCRIPTIVE or exhaustive:
        for r in scored:
            describe(r, context, kb)
        return PredictionSet(rank(scored, config.rank_key, config.max_predictions), scored, groups)
    ranked = rank(scored, config.rank_key, config.max_predictions)
    for r in ranked:
        describe(r, context, kb)
    return PredictionSet(ranked, scored, groups)


def _few_postings(kb: KnowledgeView, state: Sequence[str]) -> bool:
    """Few enough candidates that aligning each costs less than the numpy screen's overhead
    (measured crossover: about 50 postings on this machine)."""
    return sum(len(kb.posting_arrays(s).ids) for s in set(state)) <= SMALL_SCREEN


def _direct_ensemble(
    candidates: Sequence[PatternRecord],
    state: Sequence[str],
    stm: Sequence[Sequence[str]],
    config: EngineConfig,
    weight: Callable[[str], float] | None,
    budget: Budget | None,
) -> list[Match]:
    """Every candidate aligned, pruned, and the survivors completed (no screening)."""
    tick = None
    if budget is not None:
        budget.charge_alignments(candidates, state)
        tick = budget.check
    ordered = sorted(candidates, key=_by_name)
    aligned = [m for m in (align(p, state, config, tick) for p in ordered) if m is not None]
    kept = prune(aligned, config.max_predictions)
    for m in kept:
        complete(m, state, stm, weight)
    return kept


def _screened_ensemble(
    kb: KnowledgeView,
    state: Sequence[str],
    stm: Sequence[Sequence[str]],
    config: EngineConfig,
    weight: Callable[[str], float] | None,
    budget: Budget | None,
) -> list[Match]:
    """The pruned ensemble: candidates are aligned (or known in closed form, see
    ``candidates``) and pruned first; only the survivors are completed."""
    screened = screen(kb, state, config)
    tick = None
    if budget is not None:
        budget.charge_alignments(screened.others, state)
        tick = budget.check
    aligned = [m for m in (align(p, state, config, tick) for p in screened.others) if m is not None]
    hits = screened.single_hits
    limit = 3 * config.max_predictions
    if len(aligned) + len(hits) > limit:
        aligned, hits = _prune_mixed(kb, aligned, hits, limit)
    for pattern_id, pattern_position, state_position, similarity in zip(
        hits.ids.tolist(),
        hits.pattern_position.tolist(),
        hits.state_position.tolist(),
        hits.similarity.tolist(),
        strict=True,
    ):
        aligned.append(
            align_single_hit(kb.pattern_by_id(pattern_id), state, pattern_position, state_position, similarity)
        )
    for m in aligned:
        complete(m, state, stm, weight)
    return sorted(aligned, key=lambda m: m.name)


def _prune_mixed(kb: KnowledgeView, full: list[Match], hits: SingleHits, limit: int) -> tuple[list[Match], SingleHits]:
    """Pruning (D-12) over aligned candidates and single hits together: the ``limit`` best by
    (pre_potential desc, similarity desc, name asc), exactly as ``ensemble.prune`` orders them
    (D-11). Thousands of single hits can tie, so each tie is settled on arrays first."""
    scores = np.concatenate([hits.pre_potential, np.array([m.pre_potential for m in full], dtype=np.float64)])
    cut = float(np.partition(scores, len(scores) - limit)[len(scores) - limit])  # the limit-th best
    chosen = hits.pre_potential > cut
    kept_full = [m for m in full if m.pre_potential > cut]
    slots = limit - int(chosen.sum()) - len(kept_full)
    tied_hits = np.flatnonzero(hits.pre_potential == cut)
    tied_full = [m for m in full if m.pre_potential == cut]
    n_hits = len(tied_hits)
    similarity = np.concatenate(
        [hits.similarity[tied_hits], np.array([m.similarity for m in tied_full], dtype=np.float64)]
    )
    sure = np.zeros(len(similarity), dtype=bool)
    if slots >= len(similarity):
        sure[:] = True
    else:
        # The slots-th most similar; more similar ones are in, equally similar ones go by name.
        boundary = float(-np.partition(-similarity, slots - 1)[slots - 1])
        sure |= similarity > boundary
        undecided = np.flatnonzero(similarity == boundary)
        tied_ids = hits.ids[tied_hits]
        for k in _smallest_names(kb, undecided, slots - int(sure.sum()), tied_ids, tied_full):
            sure[k] = True
    chosen[tied_hits[sure[:n_hits]]] = True
    kept_full += [m for m, keep in zip(tied_full, sure[n_hits:].tolist(), strict=True) if keep]
    return kept_full, hits.take(chosen)


def _smallest_names(
    kb: KnowledgeView,
    candidates: npt.NDArray[np.intp],
    count: int,
    tied_ids: npt.NDArray[np.int32],
    tied_full: list[Match],
) -> list[int]:
    """The ``count`` candidates with the smallest names. ``candidates`` index the tied single
    hits (below ``len(tied_ids)``), then the tied aligned ones, in ascending order. Names are
    compared by their keys first and in full only where keys are equal."""
    if count >= len(candidates):
        return [int(k) for k in candidates]
    split = int(np.searchsorted(candidates, len(tied_ids)))
    full_keys = [name_key(tied_full[k - len(tied_ids)].name) for k in candidates[split:].tolist()]
    keys = np.concatenate([kb.name_keys()[tied_ids[candidates[:split]]], np.array(full_keys, dtype=np.uint64)])
    boundary = np.partition(keys, count - 1)[count - 1]
    sure: list[int] = candidates[keys < boundary].tolist()
    undecided = sorted(candidates[keys == boundary].tolist(), key=lambda k: _tied_name(kb, k, tied_ids, tied_full))
    return sure + undecided[: count - len(sure)]


def _tied_name(kb: KnowledgeView, k: int, tied_ids: npt.NDArray[np.int32], tied_full: list[Match]) -> str:
    """Name of the k-th tied candidate: single hits (by pattern id) first, then aligned ones."""
    if k < len(tied_ids):
        return kb.pattern_by_id(int(tied_ids[k])).name
    return tied_full[k - len(tied_ids)].name


def _by_name(p: PatternRecord) -> str:
    return p.name


def _affinity_weight(kb: KnowledgeView, emotive: str) -> Callable[[str], float]:
    """w(x) = |affinity[x][emotive]| / frequency(x) + 0.01, or the 0.01 floor (D-19)."""
    cache: dict[str, float] = {}

    def weight(symbol: str) -> float:
        w = cache.get(symbol)
        if w is None:
            w = AFFINITY_FLOOR
            stats = kb.symbol(symbol)
            if stats is not None:
                affinity = abs(stats.affinity.get(emotive, 0.0))
                if affinity > 0 and stats.frequency > 0:
                    w = affinity / stats.frequency + AFFINITY_FLOOR
            cache[symbol] = w
        return w

    return weight
