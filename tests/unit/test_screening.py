"""The screening shortcuts change nothing: fast path == exhaustive path on randomized KBs."""

from __future__ import annotations

import itertools
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kato_grpc.encoding import prediction_proto
from kato_grpc.engine import predict as predict_module
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.predict import predict
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from tests.unit.kit import EVENT, PATTERN, kb_of, pattern_write


def _outputs(stm: list[list[str]], kb: InMemoryKnowledgeBase, config: EngineConfig, exhaustive: bool) -> Any:
    # Small KBs would take the direct path; these tests are about the screened one.
    with patch.object(predict_module, "SMALL_SCREEN", -1):
        result = predict(stm, kb, config, exhaustive=exhaustive)
    return (
        [prediction_proto(r, "").SerializeToString(deterministic=True) for r in result.ranked],
        [(g.key, g.aggregate_potential, g.supporting_patterns) for g in result.futures],
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patterns=st.lists(PATTERN, min_size=1, max_size=40),
    stm=st.lists(EVENT, min_size=1, max_size=4),
    threshold=st.sampled_from([0.05, 0.1, 0.2, 0.4]),
    max_predictions=st.integers(1, 6),
    token=st.booleans(),
    fuzzy=st.sampled_from([0.0, 0.0, 0.6]),
)
def test_fast_path_equals_exhaustive_path(
    patterns: list[list[list[str]]],
    stm: list[list[str]],
    threshold: float,
    max_predictions: int,
    token: bool,
    fuzzy: float,
) -> None:
    kb = kb_of(patterns)
    config = EngineConfig(
        recall_threshold=threshold,
        max_predictions=max_predictions,
        use_token_matching=token,
        fuzzy_token_threshold=fuzzy,
    )
    assert _outputs(stm, kb, config, exhaustive=False) == _outputs(stm, kb, config, exhaustive=True)


def test_single_hits_dominate_a_sparsekb_of() -> None:
    # Patterns that share one symbol with the query each: all single hits, pruning by name ties.
    patterns = [[[f"a{i}"], ["x"], [f"b{i}"]] for i in range(30)]
    kb = kb_of(patterns)
    config = EngineConfig(max_predictions=4)
    fast = _outputs([["x"], ["y"]], kb, config, exhaustive=False)
    assert fast == _outputs([["x"], ["y"]], kb, config, exhaustive=True)
    assert len(fast[0]) == 4


def test_ties_at_the_cut_go_to_the_smallest_names_even_when_name_prefixes_collide() -> None:
    # Names agree on their first 8 bytes (the name keys tie), or are shorter than 8 bytes, so
    # the pruning tie-break must fall back to comparing whole names.
    names = [f"samepref{i:02d}" for i in range(30)] + ["ab", "ab\0", "same", "samepre"]
    kb = InMemoryKnowledgeBase()
    for i, name in enumerate(names):
        events = [[f"a{i}"], ["x"], [f"b{i}"]]
        kb.apply(pattern_write(events, name))
    for max_predictions in (1, 2, 3, 5, 11):
        config = EngineConfig(max_predictions=max_predictions)
        with patch.object(predict_module, "SMALL_SCREEN", -1):
            fast = predict([["x"], ["y"]], kb, config)
        assert [r.match.name for r in fast.ensemble] == sorted(names)[: 3 * max_predictions]
        assert _outputs([["x"], ["y"]], kb, config, exhaustive=False) == _outputs(
            [["x"], ["y"]], kb, config, exhaustive=True
        )


def test_ties_at_the_cut_go_to_the_most_similar_then_the_smallest_names() -> None:
    # D-11: patterns of many lengths share one symbol with a 3-symbol STM: all tie at
    # pre_potential while their similarity (2 / (|p| + |s|)) differs: the more similar must win the cut,
    # names settle the rest, on the fast path exactly as on the exhaustive one.
    patterns = [[["x"]] + [[f"p{i}-{j}"] for j in range(1 + i % 7)] for i in range(40)]
    kb = kb_of(patterns)
    stm = [["x"], ["y"], ["z"]]  # one shared symbol, two extras: pre_potential 1.0 for all
    everyone = predict(stm, kb, EngineConfig(max_predictions=100), exhaustive=True).ensemble
    order = sorted(everyone, key=lambda r: (-r.match.pre_potential, -r.match.similarity, r.match.name))
    pairs = itertools.pairwise(order)
    assert any(
        a.match.pre_potential == b.match.pre_potential and a.match.similarity != b.match.similarity for a, b in pairs
    )
    for max_predictions in (1, 2, 3, 5, 8):
        config = EngineConfig(max_predictions=max_predictions)
        with patch.object(predict_module, "SMALL_SCREEN", -1):
            fast = predict(stm, kb, config)
        expected = sorted(r.match.name for r in order[: 3 * max_predictions])
        assert [r.match.name for r in fast.ensemble] == expected
        assert _outputs(stm, kb, config, exhaustive=False) == _outputs(stm, kb, config, exhaustive=True)
