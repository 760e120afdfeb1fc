"""Ensemble metrics, ranking and future potentials (engine.md §4.8-4.14; D-6, D-7, D-11-D-15).

Everything here runs over the pruned set of gated candidates in ``name`` order, so every
float sum has one fixed order and the output never depends on hash seeds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.engine.matching import Match

CONFLUENCE_FLOOR = 1e-10
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii)


@dataclass(slots=True)
class Scored:
    """A match plus its ensemble metrics: one prediction before conversion to protobuf."""

    match: Match
    itfdf_similarity: float = 0.0
    confluence: float = 0.0
    entropy: float = 0.0
    normalized_entropy: float = 0.0
    global_normalized_entropy: float = 0.0
    tfidf_score: float = 0.0
    pattern_probability: float = 0.0
    weighted_strength: float = 0.0
    predictive_information: float = 0.0
    bayesian_prior: float = 0.0
    bayesian_likelihood: float = 0.0
    bayesian_posterior: float = 0.0
    potential: float = 0.0

    def rank_value(self, key: str) -> float:
        m = self.match
        if key.startswith("weighted_"):
            if m.weighted is None:
                return -math.inf
            value = getattr(m.weighted, key.removeprefix("weighted_"))
            return -math.inf if value is None else float(value)
        if hasattr(self, key):
            return float(getattr(self, key))
        return float(getattr(m, key))


@dataclass(frozen=True, slots=True)
class FutureGroup:
    representative: Match  # the first member in name order: the group's future is its future
    aggregate_potential: float
    supporting_patterns: int
    total_weighted_frequency: float
    key: str


def prune(matches: Sequence[Match], max_predictions: int) -> list[Match]:
    """Keep the best 3 × max_predictions by pre_potential, ties by similarity (the more similar
    first), then name (D-11); back in name order."""
    limit = 3 * max_predictions
    if len(matches) <= limit:
        return list(matches)
    kept = sorted(matches, key=lambda m: (-m.pre_potential, -m.similarity, m.name))[:limit]
    return sorted(kept, key=lambda m: m.name)


DESCRIPTIVE = frozenset({"confluence", "entropy", "normalized_entropy", "global_normalized_entropy", "tfidf_score"})


@dataclass(frozen=True, slots=True)
class Ensemble:
    """What the per-prediction descriptive metrics need from the whole ensemble."""

    n_patterns: int
    vocabulary_size: int
    total_pattern_frequencies: int
    prob: dict[str, float]  # symbol probability over the ensemble's matches and missing (engine.md §4.9)
    pmf: dict[str, int]  # pattern member frequency of every symbol above


def score(
    matches: Sequence[Match], state: Sequence[str], kb: KnowledgeView, weighted: bool
) -> tuple[list[Scored], list[FutureGroup], Ensemble]:
    """Compute the metrics that depend on the whole ensemble over ``matches`` (already pruned,
    in name order): itf-df similarity, future potentials, the Bayesian terms and the potential.
    The descriptive metrics that depend on one prediction alone come from ``describe``."""
    totals = kb.totals()
    n_patterns = totals.total_unique_patterns
    # Symbol probability cache: symbols of matches and event-aligned missing only (engine.md §4.9).
    pmf: dict[str, int] = {}
    prob: dict[str, float] = {}
    for m in matches:
        for s in (*m.matches, *(x for ev in m.missing for x in ev)):
            if s not in prob:
                stats = kb.symbol(s)
                pmf[s] = stats.pattern_member_frequency if stats else 0
                prob[s] = pmf[s] / n_patterns if n_patterns else 0.0
    ensemble = Ensemble(n_patterns, totals.vocabulary_size, totals.total_pattern_frequencies, prob, pmf)

    ens_freq = sum(m.frequency for m in matches)
    state_weights = {s: prob.get(s, 0.0) * c for s, c in sorted(Counter(state).items())}
    state_norm = 0.0
    for u in state_weights.values():
        state_norm += u * u
    scored = [
        Scored(m, _itfdf(state_weights, state_norm, Counter(m.present_flat), prob, m.frequency, ens_freq))
        for m in matches
    ]
    groups = _predictive_information(scored)
    _bayesian(scored)
    for r in scored:
        m = r.match
        if weighted and m.weighted is not None:
            base = (m.weighted.evidence + m.weighted.confidence) * m.weighted.snr
        else:
            base = (m.evidence + m.confidence) * m.snr
        r.potential = (base + r.itfdf_similarity) + m.frag_term
    return scored, groups, ensemble


def describe(r: Scored, ensemble: Ensemble, kb: KnowledgeView) -> None:
    """Fill the descriptive metrics of one prediction: confluence, the entropies, tf-idf."""
    present = r.match.present_flat
    if not present:
        return
    prob = ensemble.prob
    counts = Counter(present)
    length = len(present)
    distinct = sorted(counts)
    if ensemble.total_pattern_frequencies:
        product = 1.0
        for s in present:
            p = prob.get(s, 0.0)
            product *= p if p > 0 else CONFLUENCE_FLOOR
        r.confluence = (r.match.frequency / ensemble.total_pattern_frequencies) * (1 - product)
    r.entropy = -sum((counts[s] / length) * math.log2(counts[s] / length) for s in distinct)
    vocab = ensemble.vocabulary_size
    if vocab > 1:
        log_v = math.log(vocab)
        r.normalized_entropy = -sum((counts[s] / length) * (math.log(counts[s] / length) / log_v) for s in distinct)
        r.global_normalized_entropy = -sum(
            prob.get(s, 0.0) * (math.log(prob.get(s, 0.0)) / log_v) for s in distinct if prob.get(s, 0.0) > 0
        )
    n_patterns = ensemble.n_patterns
    if n_patterns:
        r.tfidf_score = sum(
            (counts[s] / length) * (math.log2(n_patterns / (_pmf(s, ensemble, kb) or 1)) + 1) for s in distinct
        ) / len(distinct)


def _pmf(symbol: str, ensemble: Ensemble, kb: KnowledgeView) -> int:
    known = ensemble.pmf.get(symbol)
    if known is not None:
        return known
    stats = kb.symbol(symbol)
    return stats.pattern_member_frequency if stats else 0


def rank(scored: Sequence[Scored], key: str, max_predictions: int) -> list[Scored]:
    """Sort by the rank key descending, ties by similarity descending, then name ascending
    (D-11); cut to max_predictions."""
    return sorted(scored, key=lambda r: (-r.rank_value(key), -r.match.similarity, r.match.name))[:max_predictions]


def _itfdf(
    state_weights: dict[str, float],
    state_norm: float,
    present_counts: Counter[str],
    prob: dict[str, float],
    frequency: int,
    ens_freq: int,
) -> float:
    """1 - cosine distance between the state's and the present's probability-weighted
    counts, scaled by frequency (engine.md §4.9). The sums run over symbols in sorted order; the
    state's squared norm is the same for every candidate, so it is summed once (a symbol
    missing on one side adds exactly 0.0 to a sum, which changes no float)."""
    if ens_freq == 0:
        return 0.0
    dot = present_norm = 0.0
    for s in sorted(present_counts):
        v = prob.get(s, 0.0) * present_counts[s]
        present_norm += v * v
        u = state_weights.get(s)
        if u is not None:
            dot += u * v
    # An all-zero vector has no direction: cosine 0, distance 1.
    if state_norm == 0.0 or present_norm == 0.0:
        distance = 1.0
    else:
        distance = 1.0 - dot / (math.sqrt(state_norm) * math.sqrt(present_norm))
    return 1.0 - distance * frequency / ens_freq


def _future_key(future: Sequence[Sequence[str]]) -> str:
    """``json.dumps([sorted(event) for event in future])``, built directly: it runs once per
    candidate, and json.dumps with options constructs an encoder per call."""
    return "[" + ", ".join("[" + ", ".join(map(_json_string, sorted(event))) + "]" for event in future) + "]"


def _predictive_information(scored: Sequence[Scored]) -> list[FutureGroup]:
    total_freq = sum(r.match.frequency for r in scored)
    if total_freq == 0:
        return []
    members: dict[str, list[Scored]] = {}
    for r in scored:
        m = r.match
        r.pattern_probability = m.frequency / total_freq
        r.weighted_strength = m.similarity * r.pattern_probability
        if m.future:
            members.setdefault(_future_key(m.future), []).append(r)
    weights = {key: sum(r.match.frequency * r.match.similarity for r in rs) for key, rs in members.items()}
    grand = sum(weights.values())
    aggregate = {key: (w / grand if grand else 0.0) for key, w in weights.items()}
    for key, rs in members.items():
        for r in rs:
            agg = aggregate[key]
            r.predictive_information = r.weighted_strength / agg if agg else 0.0
    groups = [
        FutureGroup(
            representative=rs[0].match,
            aggregate_potential=aggregate[key],
            supporting_patterns=len(rs),
            total_weighted_frequency=weights[key],
            key=key,
        )
        for key, rs in members.items()
    ]
    groups.sort(key=lambda g: (-g.aggregate_potential, g.key))
    return groups


def _bayesian(scored: Sequence[Scored]) -> None:
    total_freq = sum(r.match.frequency for r in scored)
    for r in scored:
        r.bayesian_likelihood = r.match.similarity
        r.bayesian_prior = r.match.frequency / total_freq if total_freq else 0.0
    evidence = sum(r.bayesian_likelihood * r.bayesian_prior for r in scored)
    for r in scored:
        r.bayesian_posterior = r.bayesian_likelihood * r.bayesian_prior / evidence if evidence else 0.0
