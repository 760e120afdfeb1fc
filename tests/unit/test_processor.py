"""Observe, learn, clear and config transitions (engine.md §1.2, 2, 3, 5; D-1, D-3, D-21-D-25)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import struct_pb2

from kato_grpc import encoding
from kato_grpc.engine import processor
from kato_grpc.engine.config import EngineConfig, effective_config, resolve_config, validate_config
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.observation import validate_observation
from kato_grpc.engine.records import canonical_json
from kato_grpc.engine.vectors import nearest
from kato_grpc.errors import FailedPrecondition, InvalidArgument
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb
from tests.unit.kit import learn, observe, predictions, session


@pytest.mark.parametrize(
    ("strings", "stored"),
    [
        (["z", "a", "m"], ["a", "m", "z"]),
        (["Zoo", "Apple", "apple"], ["Apple", "Zoo", "apple"]),
        (["test_2", "test_1", "test_10"], ["test_1", "test_10", "test_2"]),
        (["10", "2", "1", "20", "100", "3"], ["1", "10", "100", "2", "20", "3"]),
        (["!special", "@symbol", "#hash"], ["!special", "#hash", "@symbol"]),
        (["z", "", "a", "middle"], ["", "a", "middle", "z"]),
        (["a", "b", "a", "c", "b"], ["a", "a", "b", "b", "c"]),
    ],
)
def test_events_are_sorted_by_code_point(strings: list[str], stored: list[str]) -> None:
    assert observe(session(), strings)[0]["stm"] == [stored]


def test_sort_symbols_false_keeps_the_given_order() -> None:
    assert observe(session(sort_symbols=False), ["z", "a"])[0]["stm"] == [["z", "a"]]


def test_empty_observation_counts_time_but_leaves_stm_alone() -> None:
    r = session()
    learn(r, ["a"], ["b"])
    results = observe(r, ["a"], [], ["b"])
    assert [x["time"] for x in results] == [3, 4, 5]
    assert results[1]["stm"] == [["a"]]
    assert results[1]["predictions"] == []
    assert results[2]["stm"] == [["a"], ["b"]]


def test_empty_observation_still_accumulates_emotives() -> None:
    r = session()
    r.run({"op": "observe", "strings": [], "emotives": {"joy": 1.0}})
    observe(r, ["a"], ["b"])
    r.run({"op": "learn"})
    assert r.run({"op": "get_pattern"})["pattern"]["emotives"] == [{"joy": 1.0}]


def test_empty_string_is_a_symbol() -> None:
    assert observe(session(), [""])[0]["stm"] == [[""]]


def test_learn_statuses() -> None:
    r = session()
    assert r.run({"op": "learn"}) == {"op": "learn", "error": "FAILED_PRECONDITION"}
    observe(r, ["single"])
    assert r.run({"op": "learn"}) == {"op": "learn", "status": "INSUFFICIENT_DATA", "pattern_name": ""}
    assert r.state.stm == []
    result = learn(r, ["a", "b"])
    assert result == {
        "op": "learn",
        "status": "LEARNED",
        "pattern_name": "PTRN|" + pattern_name([["a", "b"]]),
    }


def test_failed_learn_changes_nothing() -> None:
    state = storage.SessionState(session_id="s", node_id="n")
    state.emotives_accumulator.add(values={"joy": 1.0})
    with pytest.raises(FailedPrecondition) as info:
        processor.learn(state)
    assert info.value.reason == "STM_EMPTY"
    assert len(state.emotives_accumulator) == 1


def test_learn_clears_accumulators_and_counts_frequency() -> None:
    r = session()
    for _ in range(3):
        r.run({"op": "observe", "strings": ["a"], "emotives": {"e": 1.0}})
        r.run({"op": "observe", "strings": ["b"]})
        r.run({"op": "learn"})
    pattern = r.run({"op": "get_pattern"})["pattern"]
    assert pattern["frequency"] == 3
    # D-3: each learn consumed exactly its own emotives (no re-submission of old ones).
    assert pattern["emotives"] == [{"e": 1.0}] * 3
    assert list(r.state.emotives_accumulator) == []


def test_auto_learned_pattern_carries_emotives_and_metadata() -> None:
    r = session(max_pattern_length=2)
    r.run({"op": "observe", "strings": ["a"], "emotives": {"e": 2.0}})
    result = r.run({"op": "observe", "strings": ["b"], "metadata": {"k": "v"}})
    assert result["auto_learned_pattern"]
    pattern = r.run({"op": "get_pattern"})["pattern"]
    assert pattern["emotives"] == [{"e": 2.0}]
    assert pattern["metadata"] == {"k": ["v"]}
    assert list(r.state.emotives_accumulator) == [] and list(r.state.metadata_accumulator) == []


def test_rolling_with_window_one_keeps_nothing() -> None:
    r = session(max_pattern_length=1, stm_mode="ROLLING")
    results = observe(r, ["a", "b"], ["c"])
    assert [x["stm"] for x in results] == [[], []]
    assert results[0]["auto_learned_pattern"] and results[1]["auto_learned_pattern"] is None


def test_stm_cap_drops_the_oldest_events_and_says_so() -> None:
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig(process_predictions=False))
    for i in range(5):
        result = processor.observe(
            state, pb.Observation(strings=[str(i)]), kb, unique_id=str(i), limits=processor.StmLimits(max_events=3)
        )
        state = result.state
    assert [list(e.symbols) for e in state.stm] == [["2"], ["3"], ["4"]]
    assert result.dropped_events == 1


def test_clear_stm_resets_everything_of_the_session() -> None:
    r = session()
    r.run({"op": "observe", "strings": ["a"], "emotives": {"e": 1.0}, "metadata": {"k": 1}})
    r.run({"op": "clear_stm"})
    s = r.state
    assert (list(s.stm), list(s.emotives_accumulator), list(s.metadata_accumulator), s.time) == (
        [],
        [],
        [],
        0,
    )
    assert not s.HasField("percept")


def test_clear_all_wipes_the_kb_and_restarts_totals() -> None:
    r = session()
    learn(r, ["a"], ["b"])
    r.run({"op": "clear_all"})
    assert r.kb.totals().total_unique_patterns == 0
    observe(r, ["a"], ["b"])
    assert predictions(r) == []
    assert r.run({"op": "get_pattern"}) == {"op": "get_pattern", "error": "NOT_FOUND"}


def test_percept_and_cognition_data() -> None:
    r = session()
    r.run({"op": "observe", "strings": ["world", "hello"], "emotives": {"joy": 0.8}})
    assert list(r.state.percept.strings) == ["hello", "world"]
    assert dict(r.state.percept.emotives) == {"joy": 0.8}
    cog = encoding.cognition_data(r.state)
    assert list(cog.symbols) == ["hello", "world"]
    assert dict(cog.emotives) == {"joy": 0.8}
    assert cog.time == 1


def test_metadata_values_come_back_as_the_json_values_sent() -> None:
    # D-29: JSON values, not Python text; 3 and 3.0 are one value, "3" another; each key's
    # distinct values in canonical-JSON order (strings first: '"' is the lowest leading byte).
    r = session()
    r.run(
        {
            "op": "observe",
            "strings": ["a", "b"],
            "metadata": {"i": 3.0, "f": 2.5, "t": True, "n": None, "l": [1, 2], "o": {"b": 1, "a": "é\n"}},
        }
    )
    r.run({"op": "observe", "strings": ["c"], "metadata": {"i": 3, "f": "3", "big": 1e20}})
    r.run({"op": "observe", "strings": ["d"], "metadata": {"i": "3", "f": -0.5}})
    r.run({"op": "learn"})
    md = r.run({"op": "get_pattern"})["pattern"]["metadata"]
    assert md == {
        "i": ["3", 3], "f": ["3", -0.5, 2.5], "t": [True], "n": [None], "l": [[1, 2]],
        "o": [{"a": "é\n", "b": 1}], "big": [1e20],
    }  # fmt: skip
    assert [type(v) for v in md["i"]] == [str, int]


def test_canonical_json_is_the_identity_of_a_metadata_value() -> None:
    assert canonical_json(3.0) == canonical_json(3) == "3"
    assert canonical_json(2**53) == "9007199254740992.0"  # past 2^53: a float's shortest form
    assert canonical_json({"b": [1.0, None], "a": 'x"y'}) == '{"a":"x\\"y","b":[1,null]}'
    assert canonical_json("é\u2028") == '"é\u2028"'  # only quote, backslash, controls escaped


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_invalid_argument(bad: float) -> None:
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig())
    for obs, field in (
        (pb.Observation(strings=["a"], emotives={"e": bad}), "observation.emotives.e"),
        (pb.Observation(vectors=[pb.Vector(values=[1.0, bad])]), "observation.vectors[0]"),
        (
            pb.Observation(strings=["a"], metadata={"k": struct_pb2.Value(number_value=bad)}),
            "observation.metadata.k",
        ),
    ):
        with pytest.raises(InvalidArgument) as info:  # as the edges run it: validated, then observed
            validate_observation(obs)
            processor.observe(state, obs, kb, unique_id="u")
        assert [v.field for v in info.value.violations] == [field]


def test_vectors_become_vctr_symbols_and_are_indexed_by_learn() -> None:
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig())
    obs = pb.Observation(vectors=[pb.Vector(values=[0.5, 0.5]), pb.Vector(values=[1.0, 0.0])], strings=["x"])
    r1 = processor.observe(state, obs, kb, unique_id="1")
    assert list(r1.state.stm[0].symbols)[1] == "x"
    assert kb.vector_dimension() is None
    learned = processor.learn(r1.state)
    for w in learned.writes:
        kb.apply(w)
    assert kb.vector_dimension() == 2
    # A second observation now finds the first vector as a neighbour.
    r2 = processor.observe(learned.state, pb.Observation(vectors=[pb.Vector(values=[9.0, 9.0])]), kb, unique_id="2")
    assert len(r2.state.stm[0].symbols) == 2
    with pytest.raises(InvalidArgument) as info:
        processor.observe(r2.state, pb.Observation(vectors=[pb.Vector(values=[1.0, 2.0, 3.0])]), kb, unique_id="3")
    assert info.value.reason == "VECTOR_DIMENSION_MISMATCH"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (pb.SessionConfig(max_pattern_length=-1), "config.max_pattern_length"),
        (pb.SessionConfig(persistence=0), "config.persistence"),
        (pb.SessionConfig(persistence=101), "config.persistence"),
        (pb.SessionConfig(recall_threshold=1.5), "config.recall_threshold"),
        (pb.SessionConfig(recall_threshold=math.nan), "config.recall_threshold"),
        (pb.SessionConfig(max_predictions=0), "config.max_predictions"),
        (pb.SessionConfig(max_predictions=10001), "config.max_predictions"),
        (pb.SessionConfig(fuzzy_token_threshold=-0.1), "config.fuzzy_token_threshold"),
        (pb.SessionConfig(stm_mode=7), "config.stm_mode"),  # type: ignore[arg-type]
        (pb.SessionConfig(rank_sort_algo=99), "config.rank_sort_algo"),  # type: ignore[arg-type]
        (pb.SessionConfig(rank_sort_algo=pb.RANK_SORT_ALGO_WEIGHTED_SNR), "config.rank_sort_algo"),
        (pb.SessionConfig(affinity_emotive=""), "config.affinity_emotive"),
    ],
)
def test_invalid_config_names_the_field(config: pb.SessionConfig, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_config(config)
    assert [v.field for v in info.value.violations] == [field]


def test_invalid_config_update_applies_nothing() -> None:
    state = processor.new_session("s", "n", pb.SessionConfig(max_predictions=5))
    with pytest.raises(InvalidArgument):
        processor.update_config(state, pb.SessionConfig(max_predictions=3, persistence=0))
    assert state.config.max_predictions == 5


def test_weighted_rank_key_is_fine_with_affinity() -> None:
    # D-16 refuses a weighted key only without affinity weighting. Accepted means a session
    # is made with it and ranks by that key with that emotive (validate_config returns
    # nothing either way, so the session is what is checked).
    config = pb.SessionConfig(rank_sort_algo=pb.RANK_SORT_ALGO_WEIGHTED_SNR, affinity_emotive="joy")
    state = processor.new_session("s", "n", config)
    assert resolve_config(state.config) == EngineConfig(rank_key="weighted_snr", affinity_emotive="joy")
    assert effective_config(state.config).rank_sort_algo == pb.RANK_SORT_ALGO_WEIGHTED_SNR


def test_nearest_vectors_are_ordered_by_distance_then_name() -> None:
    names = ["VCTR|b", "VCTR|a", "VCTR|c", "VCTR|d"]
    matrix = np.asarray([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.5, 0.5]])
    got = nearest(names, matrix, np.asarray([0.0, 0.0]), 3)
    assert [n.name for n in got] == ["VCTR|d", "VCTR|a", "VCTR|b"]
    assert nearest([], np.empty((0, 0)), np.asarray([1.0]), 3) == []
