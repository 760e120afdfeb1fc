"""Worked examples W11–W18: emotives, metadata, auto-learn, affinity weights and the matching
options, each computed by hand from docs/engine.md (§3, §4; D-3, D-4, D-18, D-19, D-25)."""

from __future__ import annotations

import pytest
from pytest import approx

from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.engine.matching import align, complete
from tests.unit.kit import clear_stm, learn, observe, predictions, session


def test_w11_emotive_storage_window_and_averaging() -> None:
    r = session(recall_threshold=0.2)
    for sym, joy, conf in (("start", 1.0, 0.8), ("middle", 0.5, 0.6), ("end", 0.3, 0.4)):
        r.run({"op": "observe", "strings": [sym], "emotives": {"joy": joy, "confidence": conf}})
    r.run({"op": "learn"})
    observe(r, ["start"], ["middle"])
    [p] = predictions(r)
    assert p["emotives"] == {"joy": approx(0.6), "confidence": approx(0.6)}

    r = session()
    for i in range(7):
        r.run({"op": "observe", "strings": [f"s{i}"], "emotives": {"value": float(i)}})
    r.run({"op": "learn"})
    pattern = r.run({"op": "get_pattern"})["pattern"]
    assert [e["value"] for e in pattern["emotives"]] == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_w11_relearn_window_average() -> None:
    r = session()
    for values in ((1.0, 0.8, 0.6), (0.4, 0.2, 0.1)):
        for sym, v in zip("ABC", values, strict=True):
            r.run({"op": "observe", "strings": [sym], "emotives": {"value": v}})
        r.run({"op": "learn"})
    observe(r, ["A"], ["B"])
    [p] = predictions(r)
    assert p["emotives"]["value"] == approx(0.42)


def test_w12_metadata_json_values_merged() -> None:
    r = session()
    r.run({"op": "observe", "strings": ["a"], "metadata": {"count": 123, "price": 45.67, "flag": True}})
    r.run({"op": "observe", "strings": ["b"], "metadata": {"name": "test", "source": "test1"}})
    r.run({"op": "learn"})
    r.run({"op": "observe", "strings": ["a"], "metadata": {"source": "test2"}})
    r.run({"op": "observe", "strings": ["b"]})
    r.run({"op": "learn"})
    md = r.run({"op": "get_pattern"})["pattern"]["metadata"]
    assert md == {
        "count": [123], "price": [45.67], "flag": [True], "name": ["test"], "source": ["test1", "test2"]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("n", "mode", "symbols", "stm_after", "learned"),
    [
        (3, "CLEAR", ["clear1", "clear2", "clear3"], [], 1),
        (3, "ROLLING", ["roll1", "roll2", "roll3"], [["roll2"], ["roll3"]], 1),
        (3, "ROLLING", ["roll1", "roll2", "roll3", "roll4"], [["roll3"], ["roll4"]], 2),
        (3, "ROLLING", ["A", "B", "C", "D", "E"], [["D"], ["E"]], 3),
        (3, "CLEAR", ["X", "Y", "Z", "W", "V"], [["W"], ["V"]], 1),
        (2, "ROLLING", ["A", "B", "C"], [["C"]], 2),
        (4, "ROLLING", ["A", "B", "C", "D", "E"], [["C"], ["D"], ["E"]], 2),
        (0, "ROLLING", [str(i) for i in range(10)], [[str(i)] for i in range(10)], 0),
    ],
)
def test_w13_auto_learn_windows(
    n: int, mode: str, symbols: list[str], stm_after: list[list[str]], learned: int
) -> None:
    r = session(max_pattern_length=n, stm_mode=mode)
    results = observe(r, *[[s] for s in symbols])
    assert results[-1]["stm"] == stm_after
    assert sum(1 for x in results if x["auto_learned_pattern"]) == learned


def test_w13_rolling_multi_symbol_events() -> None:
    r = session(max_pattern_length=3, stm_mode="ROLLING")
    results = observe(r, ["single"], ["multi", "symbol"], ["another"], ["last", "event"])
    assert len(results[-1]["stm"]) == 2
    assert results[-1]["stm"][-1] == ["event", "last"]
    assert sum(1 for x in results if x["auto_learned_pattern"]) == 2


def test_w14_one_symbol_stm_takes_the_full_path() -> None:
    r = session()
    learn(r, ["alpha"], ["beta"], ["gamma"])
    observe(r, ["alpha"])
    [p] = predictions(r)
    assert (p["present"], p["future"], p["missing"], p["extras"]) == (
        [["alpha"]], [["beta"], ["gamma"]], [[]], [[]]
    )  # fmt: skip
    assert p["itfdf_similarity"] == approx(1.0)
    assert p["predictive_information"] == approx(0.5)
    assert p["potential"] == approx(3.333333, abs=1e-6)
    clear_stm(r)
    observe(r, ["beta"])
    assert [p["present"] for p in predictions(r)] == [[["beta"]]]


def test_w15_symbol_affinity_sums() -> None:
    r = session()
    r.run({"op": "observe", "strings": ["D", "E"], "emotives": {"utility": 30.0, "energy": -5.0}})
    r.run({"op": "learn"})
    r.run({"op": "observe", "strings": ["D", "F"], "emotives": {"utility": -5.0, "happy": 12.0}})
    r.run({"op": "learn"})

    def affinity(symbol: str) -> dict[str, float]:
        stats = r.kb.symbol(symbol)
        assert stats is not None
        return dict(stats.affinity)

    assert affinity("D") == {"utility": 25.0, "energy": -5.0, "happy": 12.0}
    assert affinity("E") == {"utility": 30.0, "energy": -5.0}
    assert affinity("F") == {"utility": -5.0, "happy": 12.0}


@pytest.mark.parametrize(
    ("pattern", "state", "weights", "unweighted", "weighted"),
    [
        (["A", "N1", "B", "N2"], ["A", "N3", "B"], {"A": 0.84, "B": 0.81}, 4 / 7, 3.30 / 3.33),
        (["A", "N1"], ["B", "N1"], {"A": 0.8, "B": 0.8}, 0.5, 0.02 / 1.62),
    ],
)
def test_w15_weighted_similarity(
    pattern: list[str], state: list[str], weights: dict[str, float], unweighted: float, weighted: float
) -> None:
    record = PatternRecord.build("p", [[s] for s in pattern], 1)
    m = align(record, state, EngineConfig())
    assert m is not None
    complete(m, state, [[s] for s in state], lambda s: weights.get(s, 0.01))
    assert m is not None and m.weighted is not None
    assert m.similarity == approx(unweighted)
    assert m.weighted.similarity == approx(weighted)


def test_w16_case_sensitive_matching() -> None:
    r = session()
    learn(r, ["Hello", "World"])
    observe(r, ["hello", "world"])
    assert predictions(r) == []


def test_w17_character_level_similarity() -> None:
    r = session(use_token_matching=False)
    learn(r, ["token1", "token2", "token3", "token4"])
    observe(r, ["token1", "token2", "token3"])
    [p] = predictions(r)
    assert p["similarity"] == approx(40 / 47)
    r = session(use_token_matching=False, recall_threshold=0.9)
    learn(r, ["apple"], ["banana"], ["cherry"], ["date"], ["elderberry"])
    observe(r, ["apple"], ["banana"])
    assert predictions(r) == []


def test_w18_fuzzy_tokens_with_d18() -> None:
    r = session(fuzzy_token_threshold=0.85)
    learn(r, ["apple", "banana", "cherry", "date", "elderberry"])
    observe(r, ["apple", "bannana", "chery"])
    [p] = predictions(r)
    assert p["similarity"] == 0.25
    assert p["matches"] == ["apple", "bannana", "chery"]
    assert p["anomalies"] == [
        {"observed": "bannana", "expected": "banana", "similarity": approx(12 / 13)},
        {"observed": "chery", "expected": "cherry", "similarity": approx(10 / 11)},
    ]
    assert (p["missing"], p["extras"]) == ([["date", "elderberry"]], [[]])
    assert (p["evidence"], p["confidence"], p["snr"], p["fragmentation"]) == (0.6, 0.6, 1.0, 0.0)
    clear_stm(r)
    observe(r, ["apple", "banana", "cherry", "date", "elderberry"])
    assert predictions(r)[0]["anomalies"] == []
