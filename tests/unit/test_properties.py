"""Property tests of the pure core: purity, determinism and the invariants of engine.md §4."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest import approx

from kato_grpc import encoding
from kato_grpc.encoding import add_predictions
from kato_grpc.engine import processor
from kato_grpc.engine.config import resolve_config
from kato_grpc.engine.predict import PredictionSet, predict
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.replay import Replayer, config_from_json, observation_from_json, replay
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

SYMBOLS = st.sampled_from(["a", "b", "c", "d", "e", "f", "ab", "ba", "é", ""])
EVENT = st.lists(SYMBOLS, min_size=1, max_size=3)
SEQUENCE = st.lists(EVENT, min_size=1, max_size=4)
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "recall_threshold": st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0]),
        "use_token_matching": st.booleans(),
        "fuzzy_token_threshold": st.sampled_from([0.0, 0.5, 0.8]),
        "sort_symbols": st.booleans(),
        "max_predictions": st.integers(1, 5),
        "rank_sort_algo": st.sampled_from(["potential", "similarity", "frequency", "bayesian_posterior"]),
        "affinity_emotive": st.just("joy"),
        "max_pattern_length": st.integers(0, 4),
        "stm_mode": st.sampled_from(["CLEAR", "ROLLING"]),
    },
)
EMOTIVES = st.dictionaries(st.sampled_from(["joy", "fear"]), st.floats(-2, 2, allow_nan=False), max_size=2)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    ops: list[dict[str, Any]] = []
    for pattern in draw(st.lists(SEQUENCE, min_size=1, max_size=6)):
        ops += [{"op": "observe", "strings": e, "emotives": draw(EMOTIVES)} for e in pattern]
        ops.append({"op": "learn"})
    ops += [{"op": "observe", "strings": e} for e in draw(SEQUENCE)]
    ops.append({"op": "predictions"})
    return {"config": draw(CONFIG), "operations": ops}


def _kb_snapshot(kb: InMemoryKnowledgeBase) -> Any:
    return (kb.version, kb.totals(), sorted((p.name, p.frequency) for p in kb.all_patterns()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), extra=EVENT)
def test_processors_never_mutate_their_inputs(scenario: dict[str, Any], extra: list[str]) -> None:
    r = Replayer(config_from_json(scenario["config"]))
    for op in scenario["operations"][:-1]:
        r.run(op)
    state_bytes = r.state.SerializeToString(deterministic=True)
    obs = observation_from_json({"strings": extra, "emotives": {"joy": 1.0}})
    obs_bytes = obs.SerializeToString(deterministic=True)
    kb_before = _kb_snapshot(r.kb)

    processor.observe(r.state, obs, r.kb, unique_id="u")
    processor.predictions(r.state, r.kb)
    processor.clear_stm(r.state)
    encoding.cognition_data(r.state)
    if r.state.stm:
        processor.learn(r.state)

    assert r.state.SerializeToString(deterministic=True) == state_bytes
    assert obs.SerializeToString(deterministic=True) == obs_bytes
    assert _kb_snapshot(r.kb) == kb_before


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_prediction_invariants(scenario: dict[str, Any]) -> None:
    r = Replayer(config_from_json(scenario["config"]))
    for op in scenario["operations"][:-1]:
        r.run(op)
    stm = [list(e.symbols) for e in r.state.stm]
    scored = predict(stm, r.kb, resolve_config(r.state.config)).ensemble
    preds = r.run({"op": "predictions"})["predictions"]
    stm_len = len(r.state.stm)
    for p in preds:
        assert len(p["missing"]) == len(p["present"])
        assert len(p["extras"]) == stm_len
        assert 0.0 <= p["similarity"] <= 1.0
        for i, event in enumerate(p["missing"]):
            assert set(event) <= set(p["present"][i])
    if preds:
        # The whole ensemble's posteriors sum to 1 unless every likelihood·prior is 0.
        total = sum(s.bayesian_posterior for s in scored)
        assert total == approx(1.0) or all(s.bayesian_posterior == 0.0 for s in scored)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_replay_is_deterministic_within_a_process(scenario: dict[str, Any]) -> None:
    assert replay(scenario) == replay(scenario)


def test_replay_is_identical_across_hash_seeds(tmp_path: Path) -> None:
    rng = random.Random(7)
    alphabet = ["a", "b", "c", "d", "e", "é", "ab"]
    ops: list[dict[str, Any]] = []
    for _ in range(12):
        for _ in range(rng.randint(1, 4)):
            ops.append({"op": "observe", "strings": rng.sample(alphabet, rng.randint(1, 3))})
        ops.append({"op": "learn"})
    ops += [{"op": "observe", "strings": [s]} for s in rng.sample(alphabet, 3)] + [{"op": "predictions"}]
    scenario = {"config": {"recall_threshold": 0.0}, "operations": ops}
    # A fixed, tie-rich scenario on top of the random one, so ordering really is exercised.
    tie_ops: list[dict[str, Any]] = []
    for tail in ["p", "q", "r", "s"]:
        tie_ops += [{"op": "observe", "strings": [s]} for s in ("x", "y", tail)] + [{"op": "learn"}]
    tie_ops += [
        {"op": "observe", "strings": ["x"]},
        {"op": "observe", "strings": ["y"]},
        {"op": "predictions"},
    ]
    outputs = set()
    for i, sc in enumerate([scenario, {"config": {"max_predictions": 2}, "operations": tie_ops}]):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps(sc))
        for seed in ("0", "1", "4242"):
            env = {**os.environ, "PYTHONHASHSEED": seed}
            out = subprocess.run(
                [sys.executable, "-m", "kato_grpc.replay", str(path)],
                capture_output=True, text=True, check=True, env=env,
            ).stdout  # fmt: skip
            outputs.add((i, out))
    assert len(outputs) == 2


def test_kb_view_is_not_written_by_predictions() -> None:
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig())
    before = _kb_snapshot(kb)
    processor.predictions(state, kb)
    assert _kb_snapshot(kb) == before


def _encoded(result: PredictionSet) -> bytes:
    out = svc.GetPredictionsResponse()
    add_predictions(result, "", out.predictions, out.future_potentials)
    return out.SerializeToString(deterministic=True)


def _step_outputs(step: processor.ObserveStep) -> Any:
    return (
        step.unique_id,
        step.stm_length,
        step.time,
        step.auto_learned_pattern,
        _encoded(step.predictions),
        step.dropped_events,
        [w.SerializeToString(deterministic=True) for w in step.writes],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=scenarios(),
    sequence=st.lists(st.tuples(EVENT, EMOTIVES), min_size=1, max_size=8),
    auto_learn=st.integers(0, 3),
    clear_between=st.booleans(),
    learn_after_each=st.booleans(),
)
def test_a_sequence_is_the_same_as_one_observe_after_another(
    scenario: dict[str, Any],
    sequence: list[tuple[list[str], dict[str, float]]],
    auto_learn: int,
    clear_between: bool,
    learn_after_each: bool,
) -> None:
    r = Replayer(config_from_json(scenario["config"]))
    for op in scenario["operations"][:-1]:
        r.run(op)
    state = processor.update_config(r.state, pb.SessionConfig(max_pattern_length=auto_learn))
    before = state.SerializeToString(deterministic=True)
    observations = [observation_from_json({"strings": e, "emotives": em}) for e, em in sequence]
    ids = [f"u{i}" for i in range(len(observations))]

    result = processor.observe_sequence(
        state,
        observations,
        r.kb,
        unique_ids=ids,
        clear_stm_between=clear_between,
        learn_after_each=learn_after_each,
    )

    expected_steps = []
    expected_writes: list[storage.PatternWrite] = []
    one_by_one = state
    for i, (obs, uid) in enumerate(zip(observations, ids, strict=True)):
        if clear_between and i > 0:
            one_by_one = storage.SessionState.FromString(one_by_one.SerializeToString())
            one_by_one.ClearField("stm")
        step = processor.observe(one_by_one, obs, r.kb, unique_id=uid)
        one_by_one = step.state
        expected_writes += step.writes
        learned_after = None
        if learn_after_each and one_by_one.stm:
            learned = processor.learn(one_by_one)
            one_by_one, learned_after = learned.state, learned.pattern_name
            expected_writes += learned.writes
        expected_steps.append((_step_outputs(step), learned_after))
    assert [(_step_outputs(s.observed), s.learned_after) for s in result.steps] == expected_steps
    assert result.state.SerializeToString(deterministic=True) == one_by_one.SerializeToString(deterministic=True)
    assert result.writes == expected_writes
    assert state.SerializeToString(deterministic=True) == before
