"""Issue 21 (5, 6) in process: the counter bounds of imports (engine.md D-30), what a pattern
accumulates (D-31), and a session's copy of its last predictions cut to fit its byte limit."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kato_grpc import encoding
from kato_grpc.engine import importing, records
from kato_grpc.engine.naming import pattern_name
from kato_grpc.errors import CounterLimit
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Policy, TransactionRunner
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.v1 import engine_pb2 as pb
from tests.unit import kit

MAX = importing.MAX_SET_COUNT


def _imported(events: list[list[str]], frequency: int) -> storage.PatternWrite:
    return importing.pattern_write(
        pb.Pattern(events=[pb.Event(symbols=e) for e in events], frequency=frequency), {}, "pattern"
    )


def test_an_imported_write_past_a_bound_is_named_by_its_position_and_counter() -> None:
    none = importing.Counters({}, 0, 0)
    importing.check_counters([_imported([["a"], ["b"]], MAX // 2)], none)  # 2 × (2^52 - 1): fits
    with pytest.raises(CounterLimit) as info:
        importing.check_counters([_imported([["a"], ["b"]], 1), _imported([["c"], ["d"]], MAX // 2 + 1)], none)
    assert (info.value.position, info.value.counter) == (1, "symbol_frequencies")
    with pytest.raises(CounterLimit) as info:
        importing.check_counters([_imported([["a"], ["b"]], 2)], importing.Counters({}, MAX - 1, 0))
    assert (info.value.position, info.value.counter) == (0, "total_pattern_frequencies")
    name = pattern_name([["a"], ["b"]])
    with pytest.raises(CounterLimit) as info:
        importing.check_counters([_imported([["a"], ["b"]], 1)], importing.Counters({name: MAX}, MAX, 0))
    assert info.value.counter == "frequency"
    # Learns (no frequency) take one each from the 64-bit headroom the bound leaves: never refused.
    importing.check_counters([kit.pattern_write([["a"], ["b"]])], importing.Counters({name: MAX}, MAX, MAX))


def test_the_in_memory_store_refuses_such_a_batch_whole() -> None:
    store = InMemoryPatternStore()
    batch = [_imported([["a"], ["b"]], MAX // 2), _imported([["c"], ["d"]], MAX // 2)]
    with pytest.raises(CounterLimit):
        asyncio.run(store.apply_many("k", batch))
    assert len(store.kb("k")) == 0 and store.kb("k").version == 0
    asyncio.run(store.apply_many("k", batch[:1]))
    assert store.kb("k").totals().total_pattern_frequencies == MAX // 2


TEXTS = st.text(min_size=0, max_size=3000)


@given(
    st.dictionaries(st.text(max_size=20), st.lists(TEXTS, max_size=40), max_size=6),
    st.lists(st.dictionaries(st.text(max_size=20), st.lists(TEXTS, max_size=40), max_size=6), max_size=8),
)
def test_metadata_keeps_what_it_has_and_adds_what_fits(
    first: dict[str, list[str]], learns: list[dict[str, list[str]]]
) -> None:
    merged = records.merge_metadata({}, first)
    for new in learns:
        before = merged
        merged = records.merge_metadata(before, new)
        assert records.metadata_bytes(merged) <= records.MAX_PATTERN_METADATA_BYTES
        for key, values in before.items():
            assert set(values) <= set(merged[key])  # nothing it had is lost
        for key, values in merged.items():
            assert values == sorted(set(values))
            assert set(values) <= set(before.get(key, ())) | set(new.get(key, ()))
        left_out = {(k, v) for k, vs in new.items() for v in vs if v not in merged.get(k, ())}
        room = records.MAX_PATTERN_METADATA_BYTES - records.metadata_bytes(merged)
        assert all(len(k.encode()) + len(v.encode()) > room for k, v in left_out)  # only what did not fit


def test_metadata_within_its_bound_merges_as_before() -> None:
    assert records.merge_metadata({"a": ["1"]}, {"a": ["0", "1"], "b": ['"x"']}) == {"a": ["0", "1"], "b": ['"x"']}


@given(
    st.lists(st.dictionaries(st.text(max_size=300), st.floats(-1, 1), max_size=30), max_size=40),
    st.integers(1, 100),
)
def test_the_emotive_window_keeps_the_newest_records_that_fit(stream: list[dict[str, float]], persistence: int) -> None:
    window: list[dict[str, float]] = []
    for record in stream:
        window = records.window_emotives(window, [record], persistence)
        assert len(window) <= persistence
        assert sum(map(records.emotive_bytes, window)) <= records.MAX_PATTERN_EMOTIVE_BYTES
        if records.emotive_bytes(record) <= records.MAX_PATTERN_EMOTIVE_BYTES:
            assert window[-1] == record  # the newest is always kept


def test_affinity_keeps_its_names_and_adds_new_ones_while_they_fit() -> None:
    big = {f"{i:0>1000}": 1.0 for i in range(300)}  # 300 names of 1,008 bytes: 302,400 > 256 KiB
    kept = records.kept_affinity((), big)
    assert sum(len(k) + 8 for k in kept) <= records.MAX_PATTERN_AFFINITY_BYTES < sum(len(k) + 8 for k in big)
    assert list(kept) == sorted(big)[: len(kept)]
    again = records.kept_affinity(kept, {**big, "n" * 100: 2.0})
    assert set(again) == set(kept)  # a full pattern adds to the names it has, no new one


def test_a_sessions_copy_of_its_predictions_is_cut_to_fit_and_the_observe_succeeds() -> None:
    r = kit.session()
    for i in range(12):
        # Random hex: it does not compress away (a session's large copy is kept compressed).
        kit.observe(r, ["a"], metadata={"m": random.Random(i).randbytes(6000).hex()})
        kit.learn(r, [f"b{i}"])
    limit = 48 * 1024
    r.runner = TransactionRunner(r.sessions, r.patterns, Policy(max_session_bytes=limit))
    answered = kit.observe(r, ["a"])[0]  # twelve predictions of ~6 KB of metadata each
    assert len(answered["predictions"]) == 12  # the call's answer has them all
    state = r.state
    kept = encoding.stored_predictions(state).predictions
    assert 0 < len(kept) < 12 and state.ByteSize() <= limit
    assert [p.pattern.rsplit("/", 1)[1] for p in kept] == [
        p["name"] for p in answered["predictions"][: len(kept)]
    ]  # the best ranked are the ones kept
