"""Worked examples W1–W10: prediction objects, thresholds and event alignment, each computed by
hand from the formulas of docs/engine.md §4 (the test states the inputs and the figures)."""

from __future__ import annotations

import pytest
from pytest import approx

from tests.unit.kit import clear_stm, future_potentials, learn, observe, predictions, session, set_config


def test_w1_full_prediction_object_and_future_potentials() -> None:
    r = session()
    learn(r, ["alpha"], ["beta"], ["gamma"])
    observe(r, ["alpha"], ["beta"])
    [p] = predictions(r)
    assert p["matches"] == ["alpha", "beta"]
    assert (p["past"], p["present"], p["future"]) == ([], [["alpha"], ["beta"]], [["gamma"]])
    assert (p["missing"], p["extras"]) == ([[], []], [[], []])
    expected = {
        "similarity": 0.8, "evidence": 2 / 3, "confidence": 1.0, "snr": 1.0, "fragmentation": 0.0,
        "itfdf_similarity": 1.0, "confluence": 0.0, "entropy": 1.0, "normalized_entropy": 0.630930,
        "global_normalized_entropy": 0.0, "tfidf_score": 0.5, "predictive_information": 0.8,
        "bayesian_prior": 1.0, "bayesian_likelihood": 0.8, "bayesian_posterior": 1.0, "potential": 3.666667,
    }  # fmt: skip
    for key, value in expected.items():
        assert p[key] == approx(value, abs=1e-6), key
    assert (p["frequency"], p["emotives"], p["anomalies"], p["type"]) == (1, {}, [], "prototypical")
    assert future_potentials(r) == [
        {"future": [["gamma"]], "aggregate_potential": 1.0, "supporting_patterns": 1,
         "total_weighted_frequency": approx(0.8)}
    ]  # fmt: skip


@pytest.mark.parametrize(("threshold", "count"), [(0.0, 1), (0.1, 1), (0.3, 1), (0.5, 1), (0.7, 1), (0.9, 0)])
def test_w1_threshold_table(threshold: float, count: int) -> None:
    r = session(recall_threshold=threshold)
    learn(r, ["alpha"], ["beta"], ["gamma"])
    observe(r, ["alpha"], ["beta"])
    preds = predictions(r)
    assert len(preds) == count
    assert all(p["similarity"] >= threshold for p in preds)


def test_w1_exact_replay_passes_threshold_one() -> None:
    r = session(recall_threshold=1.0)
    learn(r, ["a"], ["b"], ["c"])
    observe(r, ["a"], ["b"], ["c"])
    [p] = predictions(r)
    assert p["similarity"] == 1.0


@pytest.mark.parametrize(("threshold", "count"), [(0.6, 1), (0.65, 1), (0.7, 0)])
def test_w2_threshold_boundary(threshold: float, count: int) -> None:
    r = session(recall_threshold=threshold)
    learn(r, ["bound_a"], ["bound_b"], ["bound_c"], ["bound_d"])
    observe(r, ["bound_a"], ["bound_b"])
    assert len(predictions(r)) == count


def test_w3_past_present_future() -> None:
    r = session(recall_threshold=0.3)
    learn(r, ["beginning"], ["middle"], ["end"])
    observe(r, ["middle"], ["end"])
    [p] = predictions(r)
    assert (p["past"], p["present"], p["future"]) == ([["beginning"]], [["middle"], ["end"]], [])
    assert p["predictive_information"] == 0.0
    assert p["potential"] == approx(3.666667, abs=1e-6)
    assert future_potentials(r) == []


def test_w4_event_aligned_missing() -> None:
    r = session()
    learn(r, ["hello", "world"], ["foo", "bar"])
    observe(r, ["hello"], ["foo"])
    [p] = predictions(r)
    assert p["sequence"] == [["hello", "world"], ["bar", "foo"]]
    assert p["missing"] == [["world"], ["bar"]]
    assert p["extras"] == [[], []]
    assert p["fragmentation"] == 1.0
    for key, value in {
        "similarity": 4 / 6, "evidence": 0.5, "confidence": 0.5, "snr": 1.0, "itfdf_similarity": 0.707107,
        "entropy": 2.0, "normalized_entropy": 1.0, "tfidf_score": 0.25, "potential": 2.207107,
    }.items():  # fmt: skip
        assert p[key] == approx(value, abs=1e-6), key


def test_w4_single_event_pattern_missing_middle_symbol() -> None:
    r = session(recall_threshold=0.2)
    learn(r, ["alpha", "beta", "gamma"])
    observe(r, ["alpha", "gamma"])
    [p] = predictions(r)
    assert p["missing"] == [["beta"]]
    assert p["fragmentation"] == 1.0
    assert p["itfdf_similarity"] == approx(0.816497, abs=1e-6)
    assert p["potential"] == approx(2.649830, abs=1e-6)


def test_w5_missing_and_extras_together() -> None:
    r = session()
    learn(r, ["a", "b"], ["c", "d"])
    observe(r, ["a", "x"], ["c", "y"])
    [p] = predictions(r)
    assert (p["missing"], p["extras"]) == ([["b"], ["d"]], [["x"], ["y"]])
    assert p["snr"] == approx(1 / 3)
    assert p["potential"] == approx(1.540440, abs=1e-6)


def test_w6_extras_aligned_with_stm_events() -> None:
    r = session(recall_threshold=0.3)
    learn(r, ["expected1"], ["expected2"])
    observe(r, ["expected1", "extra1"], ["expected2", "extra2"])
    [p] = predictions(r)
    assert p["extras"] == [["extra1"], ["extra2"]]
    assert p["snr"] == approx(1 / 3)
    assert p["potential"] == approx(2.166667, abs=1e-6)


def test_w6_observation_longer_than_pattern() -> None:
    r = session()
    learn(r, ["a"], ["b"])
    observe(r, ["a"], ["b"], ["c"], ["d"], ["e"])
    [p] = predictions(r)
    assert p["present"] == [["a"], ["b"]]
    assert p["extras"] == [[], [], ["c"], ["d"], ["e"]]
    assert p["snr"] == approx(1 / 7)
    assert p["potential"] == approx(2.285714, abs=1e-6)


@pytest.mark.parametrize(
    ("stm", "similarity", "snr", "extras"),
    [
        ([["extra1", "simple1", "simple2"], ["simple3", "simple4"]], 8 / 9, 7 / 9, [["extra1"], []]),
        (
            [["extra1", "extra2", "simple1", "simple2"], ["extra3", "simple3", "simple4"]],
            8 / 11, 5 / 11, [["extra1", "extra2"], ["extra3"]],
        ),
        ([["extra1", "simple1"], ["extra2", "simple3"]], 0.5, 1 / 3, [["extra1"], ["extra2"]]),
    ],
)  # fmt: skip
def test_w7_extra_symbols(stm: list[list[str]], similarity: float, snr: float, extras: list[list[str]]) -> None:
    r = session()
    learn(r, ["simple1", "simple2"], ["simple3", "simple4"])
    observe(r, *stm)
    [p] = predictions(r)
    assert (p["similarity"], p["snr"], p["extras"]) == (approx(similarity), approx(snr), extras)


def test_w7_missing_symbols_against_threshold() -> None:
    r = session(recall_threshold=0.7)
    learn(r, ["alpha", "beta", "gamma"], ["delta", "epsilon", "zeta"], ["eta", "iota", "theta"])
    observe(r, ["alpha", "beta", "gamma"], ["delta", "epsilon"])
    [p] = predictions(r)
    assert p["similarity"] == approx(10 / 14)
    assert p["missing"] == [[], ["zeta"]]
    assert p["future"] == [["eta", "iota", "theta"]]
    set_config(r, recall_threshold=0.8)
    assert predictions(r) == []


def test_w8_threshold_zero_keeps_unrelated_patterns() -> None:
    r = session(recall_threshold=0.0)
    learn(r, ["known"], ["pattern"], ["here"])
    observe(r, ["unknown1"], ["unknown2"])
    [p] = predictions(r)
    assert (p["similarity"], p["matches"], p["past"], p["future"]) == (0.0, [], [], [])
    assert p["present"] == p["missing"] == [["known"], ["pattern"], ["here"]]
    assert p["extras"] == [["unknown1"], ["unknown2"]]
    for key, value in {
        "evidence": 0.0, "confidence": 0.0, "snr": -1.0, "fragmentation": -1.0, "itfdf_similarity": 0.0,
        "confluence": 0.0, "entropy": 1.584963, "normalized_entropy": 1.0, "tfidf_score": 1 / 3,
        "predictive_information": 0.0, "bayesian_prior": 1.0, "bayesian_likelihood": 0.0,
        "bayesian_posterior": 0.0, "potential": 0.0,
    }.items():  # fmt: skip
        assert p[key] == approx(value, abs=1e-6), key
    set_config(r, recall_threshold=0.1)
    clear_stm(r)
    observe(r, ["other1"], ["other2"])
    assert predictions(r) == []


def test_w9_priors_posteriors_and_futures() -> None:
    r = session()
    learn(r, ["x"], ["y"], ["z"])
    learn(r, ["x"], ["y"], ["z"])
    learn(r, ["x"], ["y"], ["w"])
    observe(r, ["x"], ["y"])
    preds = predictions(r)
    assert len(preds) == 2
    by_future = {p["future"][0][0]: p for p in preds}
    assert by_future["z"]["frequency"] == 2
    assert by_future["z"]["bayesian_prior"] == approx(2 / 3)
    assert by_future["z"]["bayesian_posterior"] == approx(2 / 3)
    assert by_future["w"]["bayesian_posterior"] == approx(1 / 3)
    assert sum(p["bayesian_posterior"] for p in preds) == approx(1.0)
    fps = future_potentials(r)
    assert [(f["future"], f["supporting_patterns"]) for f in fps] == [([["z"]], 1), ([["w"]], 1)]
    assert [f["aggregate_potential"] for f in fps] == [approx(2 / 3), approx(1 / 3)]
    assert [f["total_weighted_frequency"] for f in fps] == [approx(1.6), approx(0.8)]


def test_w10_shared_prefix_three_patterns() -> None:
    r = session()
    for branch in "abc":
        learn(r, ["shared"], [f"branch_{branch}"], [f"end_{branch}"])
    observe(r, ["shared"], ["branch_a"])
    preds = predictions(r)
    assert len({p["name"] for p in preds}) == 3
    a = preds[0]
    assert a["future"] == [["end_a"]]
    for key, value in {
        "similarity": 0.8, "confluence": 2 / 9, "normalized_entropy": 0.356207,
        "global_normalized_entropy": 0.188192, "tfidf_score": 0.896241, "predictive_information": 0.533333,
        "bayesian_posterior": 0.5, "potential": 3.666667,
    }.items():  # fmt: skip
        assert a[key] == approx(value, abs=1e-6), key
    for b in preds[1:]:
        assert b["extras"] == [[], ["branch_a"]]
        assert b["itfdf_similarity"] == approx(0.982894, abs=1e-6)
        assert b["potential"] == approx(2.427339, abs=1e-6)
        assert b["bayesian_posterior"] == approx(0.25)
    assert [f["aggregate_potential"] for f in future_potentials(r)] == [
        approx(0.5),
        approx(0.25),
        approx(0.25),
    ]
