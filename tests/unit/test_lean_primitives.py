"""The lean primitives of the hot path equal their plain definitions (engine.md §4.4, snr's E_x, future keys)."""

from __future__ import annotations

import json
from difflib import SequenceMatcher
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kato_grpc import names
from kato_grpc.encoding import (
    EventMemo,
    add_predictions,
    cut_predictions,
    encode_events,
    field_tag,
    future_proto,
    join_field,
    observe_predictions,
    prediction_proto,
    record_predictions,
    stored_predictions,
)
from kato_grpc.engine.alignment import matching_blocks
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.ensemble import _future_key
from kato_grpc.engine.predict import predict
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.unit.kit import PATTERN, kb_of

# Few distinct tokens, so runs repeat and tie-breaks between equal-length runs are exercised.
PREFIX = names.pattern_prefix("kb")
TOKENS = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=14)


def _difflib_blocks(a: list[str], b: list[str]) -> list[tuple[int, int, int]]:
    return [(m.a, m.b, m.size) for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()[:-1]]


def _difflib_extras(present_flat: list[str], state: list[str]) -> int:
    ops = SequenceMatcher(None, present_flat, state, autojunk=False).get_opcodes()
    return sum(j2 - j1 for tag, _i1, _i2, j1, j2 in ops if tag in ("insert", "replace"))


@settings(max_examples=3000, deadline=None)
@given(pattern=TOKENS, state=TOKENS)
def test_matching_blocks_equal_difflib(pattern: list[str], state: list[str]) -> None:
    assert matching_blocks(pattern, state) == _difflib_blocks(pattern, state)


@settings(max_examples=3000, deadline=None)
@given(pattern=TOKENS, state=TOKENS)
def test_extras_of_the_present_span_are_the_unmatched_state_symbols(pattern: list[str], state: list[str]) -> None:
    # matching.align relies on this identity instead of a second alignment.
    blocks = matching_blocks(pattern, state)
    if blocks:
        present_flat = pattern[blocks[0][0] : blocks[-1][0] + blocks[-1][2]]
        matched = sum(k for _i, _j, k in blocks)
        assert _difflib_extras(present_flat, state) == len(state) - matched


@settings(max_examples=1000, deadline=None)
@given(future=st.lists(st.lists(st.text(max_size=4), max_size=3), max_size=4))
def test_future_key_is_the_json_of_the_sorted_events(future: list[list[str]]) -> None:
    assert _future_key(future) == json.dumps([sorted(event) for event in future], sort_keys=True)


def _plain(events: Any) -> list[list[str]]:
    return [list(e.symbols) if isinstance(e, pb.Event) else list(e) for e in events]


# Long and non-ASCII symbols, so lengths need multi-byte varints.
WIRE_SYMBOL = st.sampled_from(["a", "é", "x" * 200, "δ" * 70, ""])


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.lists(WIRE_SYMBOL, max_size=4).map(tuple), max_size=5).map(tuple))
def test_wire_event_fields_parse_back_to_the_events(events: tuple[tuple[str, ...], ...]) -> None:
    for field in ("past", "missing", "sequence"):
        tag = field_tag(pb.Prediction.DESCRIPTOR, field)
        wire = pb.Prediction.FromString(join_field(tag, encode_events(events)))
        expected = pb.Prediction()
        getattr(expected, field).extend(pb.Event(symbols=e) for e in events)
        assert wire == expected


@settings(max_examples=100, deadline=None)
@given(patterns=st.lists(PATTERN, min_size=1, max_size=30), stm=PATTERN)
def test_prediction_messages_carry_the_matched_events(patterns: list[list[list[str]]], stm: list[list[str]]) -> None:
    kb = kb_of(patterns)
    result = predict(stm, kb, EngineConfig(recall_threshold=0.1, max_predictions=5))
    for r in result.ranked:
        m, proto = r.match, prediction_proto(r, PREFIX)
        for field in ("past", "present", "future", "missing", "extras"):
            assert _plain(getattr(proto, field)) == _plain(getattr(m, field)), field
        assert _plain(proto.sequence) == _plain(m.pattern.events)
        assert (proto.pattern, list(proto.matches), proto.potential) == (PREFIX + m.name, m.matches, r.potential)
    for g in result.futures:
        assert _plain(future_proto(g).future) == _plain(g.representative.future)
    # Built straight into a response (one pattern's events encoded once, shared by its
    # prediction and its future potential): the same messages as built one by one.
    response = svc.GetPredictionsResponse()
    add_predictions(result, PREFIX, response.predictions, response.future_potentials)
    assert list(response.predictions) == [prediction_proto(r, PREFIX) for r in result.ranked]
    assert list(response.future_potentials) == [future_proto(g) for g in result.futures]


def test_a_bounded_memo_starts_over_and_never_changes_an_encoding() -> None:
    memo = EventMemo(max_bytes=8192)
    events = [(f"s{i}", "é" * (i % 40)) for i in range(3000)]
    for event in events * 2:
        assert memo[event] == encode_events([event])[0]  # a fresh memo's encoding
        assert memo.size <= memo.max_bytes
    assert 0 < len(memo) < len(events)  # it started over, more than once


@settings(max_examples=50, deadline=None)
@given(patterns=st.lists(PATTERN, min_size=1, max_size=30), stms=st.lists(PATTERN, min_size=1, max_size=4))
def test_a_memo_shared_across_calls_builds_the_same_messages(
    patterns: list[list[list[str]]], stms: list[list[list[str]]]
) -> None:
    kb, shared = kb_of(patterns), EventMemo(max_bytes=2048)
    config = EngineConfig(recall_threshold=0.1, max_predictions=5)
    for stm in stms:
        result = predict(stm, kb, config)
        fresh, reused = svc.GetPredictionsResponse(), svc.GetPredictionsResponse()
        add_predictions(result, PREFIX, fresh.predictions, fresh.future_potentials)
        add_predictions(result, PREFIX, reused.predictions, reused.future_potentials, shared)
        assert fresh == reused


@settings(max_examples=50, deadline=None)
@given(patterns=st.lists(PATTERN, min_size=1, max_size=30), stm=PATTERN)
def test_recorded_predictions_answer_an_observe_as_encoding_them_again_does(
    patterns: list[list[list[str]]], stm: list[list[str]]
) -> None:
    """An Observe answers with the predictions it recorded for its session (one encoding,
    its top-level keys swapped): the same response as encoding them into it."""
    kb = kb_of(patterns)
    result = predict(stm, kb, EngineConfig(recall_threshold=0.1, max_predictions=5))
    state = storage.SessionState(node_id="bench")
    encoded = record_predictions(state, result)
    reused, fresh = svc.ObserveResponse(stm_length=3), svc.ObserveResponse(stm_length=3)
    reused.MergeFromString(observe_predictions(encoded))
    add_predictions(result, names.pattern_prefix("bench"), fresh.predictions, fresh.future_potentials)
    assert reused == fresh
    assert (len(reused.predictions), len(reused.future_potentials)) == (len(result.ranked), len(result.futures))
    assert stored_predictions(state).SerializeToString() == encoded


def test_a_session_stored_before_the_encoded_copy_still_shows_and_cuts_its_predictions() -> None:
    """A session an older server stored keeps its predictions as messages (field 8): they
    are still read, and cut to a byte limit like the encoded copy."""
    kb = kb_of([[["a"], [f"b{i}"]] for i in range(6)])
    result = predict([["a"]], kb, EngineConfig(recall_threshold=0.1, max_predictions=6))
    state = storage.SessionState(node_id="bench")
    add_predictions(result, names.pattern_prefix("bench"), state.last_predictions)
    assert len(state.last_predictions) == 6
    assert list(stored_predictions(state).predictions) == list(state.last_predictions)
    before = list(state.last_predictions)
    cut_predictions(state, state.ByteSize() - 1)
    kept = stored_predictions(state).predictions
    assert 0 < len(kept) < 6 and list(kept) == before[: len(kept)] and not state.last_predictions


def test_a_cut_copy_drops_the_future_potentials_first_and_never_leaves_the_session_over() -> None:
    """Cut to a byte limit, a copy of the predictions keeps no future potentials (it is no
    longer GetPredictions' answer); what the limit leaves room for of the predictions stays."""
    kb = kb_of([[["a"], [f"b{i}"], [f"c{i}"]] for i in range(8)])
    result = predict([["a"]], kb, EngineConfig(recall_threshold=0.1, max_predictions=8))
    state = storage.SessionState(node_id="bench")
    record_predictions(state, result, basis=b"x", kb_version=3)
    whole = stored_predictions(state)
    assert len(whole.future_potentials) == 8 and state.HasField("predictions_basis")
    for limit in (state.ByteSize() - 1, state.ByteSize() // 2, 10):
        cut = storage.SessionState()
        cut.CopyFrom(state)
        cut_predictions(cut, limit)
        kept = stored_predictions(cut)
        assert not kept.future_potentials and not cut.HasField("predictions_basis")
        assert list(kept.predictions) == list(whole.predictions[: len(kept.predictions)])
        assert cut.ByteSize() <= limit or not kept.predictions
    assert cut == storage.SessionState(node_id="bench")  # nothing of them left: 10 bytes hold none
