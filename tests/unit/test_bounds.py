"""Issue 9 in-process: work limits, STM symbol limit, index clones, request identity, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kato_grpc import request_ids as requests
from kato_grpc.engine import processor
from kato_grpc.engine.alignment import matching_blocks
from kato_grpc.engine.budget import Budget
from kato_grpc.engine.config import resolve_config
from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.engine.predict import predict
from kato_grpc.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, KatoError, ResourceExhausted
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation
from kato_server.stream import ReadAhead, batches
from tests.unit.kit import kb_of


def test_work_over_the_limit_is_refused_before_any_alignment() -> None:
    kb = kb_of([[["a"]] * 50, [["a", "b"]] * 50])
    stm = [["a"]] * 100
    config = resolve_config(pb.SessionConfig(recall_threshold=0.0))
    # pairs: 100 STM "a"s × (50 + 50) pattern "a"s = 10,000, plus 150 pattern symbols
    assert len(predict(stm, kb, config, budget=Budget(10_150)).ranked) == 2
    with pytest.raises(ResourceExhausted) as info:
        predict(stm, kb, config, budget=Budget(10_149))
    assert info.value.reason == "WORK_BUDGET_EXCEEDED" and info.value.metadata["work"] == "10150"
    # the screened path (positive threshold) is bounded the same way
    with pytest.raises(ResourceExhausted):
        predict(stm, kb, resolve_config(pb.SessionConfig(recall_threshold=0.1)), budget=Budget(100))


def test_a_cancelled_budget_stops_a_long_alignment() -> None:
    calls = 0
    budget = Budget(10**12)

    def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            budget.cancelled = True
        budget.check()

    with pytest.raises(DeadlineExceeded):
        matching_blocks(["a"] * 1000, ["a"] * 1000, tick, 64)
    assert calls == 3
    assert matching_blocks(["a", "b"], ["b"], tick=None) == [(1, 0, 1)]


def test_stm_symbol_limit_drops_the_oldest_events() -> None:
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig(process_predictions=False))
    bounds = processor.StmLimits(max_events=1000, max_symbols=25)
    dropped = 0
    for i in range(10):
        observation = pb.Observation(strings=[f"e{i}-{j}" for j in range(10)])
        result = processor.observe(state, observation, kb, unique_id=str(i), limits=bounds)
        state, dropped = result.state, dropped + result.dropped_events
    assert [len(e.symbols) for e in state.stm] == [10, 10]
    assert state.stm[0].symbols[0] == "e8-0" and dropped == 8
    one = processor.observe(
        state, pb.Observation(strings=[f"w{j}" for j in range(40)]), kb, unique_id="w", limits=bounds
    )
    assert len(one.state.stm) == 1  # the newest event always stays


def test_stm_symbol_limit_holds_in_a_sequence_that_carries_an_outbox() -> None:
    """After a learn, a sequence's state carries its outbox (the count is taken then, not
    skipped by sizing the state): the limit drops the same events as one call at a time."""
    kb = InMemoryKnowledgeBase()
    state = processor.new_session("s", "n", pb.SessionConfig(process_predictions=False))
    bounds = processor.StmLimits(max_events=1000, max_symbols=25)
    observations = [pb.Observation(strings=["a", "b"])] + [
        pb.Observation(strings=[f"e{i}-{j}" for j in range(10)]) for i in range(6)
    ]
    ids = [str(i) for i in range(len(observations))]
    together = processor.observe_sequence(state, observations, kb, unique_ids=ids, limits=bounds, learn_after=[0])
    assert len(together.writes) == 1  # the learn after the first observation
    one_by_one, dropped = state, 0
    for i, observation in enumerate(observations):
        result = processor.observe(one_by_one, observation, kb, unique_id=ids[i], limits=bounds)
        one_by_one, dropped = result.state, dropped + result.dropped_events
        if i == 0:
            one_by_one = processor.learn(one_by_one).state
    assert [list(e.symbols) for e in together.state.stm] == [list(e.symbols) for e in one_by_one.stm]
    assert [len(e.symbols) for e in together.state.stm] == [10, 10]
    assert sum(step.observed.dropped_events for step in together.steps) == dropped == 4


def test_a_clone_changes_without_touching_its_source() -> None:
    index = KnowledgeIndex()
    index.put_pattern(PatternRecord.build("a" * 40, [["x", "y"]], 1))
    before = index.posting_arrays("x").ids.tolist()
    clone = index.clone()
    clone.put_pattern(PatternRecord.build("b" * 40, [["x"], ["z"]], 1))
    clone.put_pattern(PatternRecord.build("a" * 40, [["x", "y"]], 5))
    assert index.posting_arrays("x").ids.tolist() == before == [0]
    assert clone.posting_arrays("x").ids.tolist() == [0, 1]
    assert index.pattern("a" * 40).frequency == 1 and clone.pattern("a" * 40).frequency == 5  # type: ignore[union-attr]
    assert index.pattern("b" * 40) is None and len(index) == 1 and len(clone) == 2


def test_request_identity() -> None:
    a = svc.LearnRequest(name="s", request_id="r")
    assert requests.fingerprint("Learn", a) == requests.fingerprint("Learn", svc.LearnRequest(name="s", request_id="r"))
    assert requests.fingerprint("Learn", a) != requests.fingerprint("ClearShortTermMemory", a)
    fp = requests.fingerprint("Learn", a)
    seen = requests.record("Learn", fp, svc.LearnResponse())
    requests.check_replay(seen, "Learn", fp)
    with pytest.raises(AlreadyExists):
        requests.check_replay(seen, "Observe", fp)
    with pytest.raises(AlreadyExists):
        requests.check_replay(seen, "Learn", b"other")
    writes = [storage.PatternWrite(), storage.PatternWrite()]
    requests.identify_writes(writes, "s", "r", fp, 7)
    again = [storage.PatternWrite(), storage.PatternWrite()]
    requests.identify_writes(again, "s", "r", fp, 7)
    later = [storage.PatternWrite()]
    requests.identify_writes(later, "s", "r", fp, 9)
    assert [w.write_id for w in writes] == [w.write_id for w in again]  # a re-execution: same ids
    assert len({writes[0].write_id, writes[1].write_id, later[0].write_id}) == 3


def test_resource_names_are_checked_and_give_their_ids() -> None:
    sid = "s-" + "0" * 32
    assert validation.session_id("sessions/" + sid) == sid
    for bad in ("", sid, "sessions/s-x", "sessions/S}:req:X", f"sessions/{sid}}}:state", f"knowledgeBases/{sid}"):
        with pytest.raises(InvalidArgument) as info:
            validation.session_id(bad)
        assert [v.field for v in info.value.violations] == ["name"]
    # Node ids are any UTF-8 up to 256 bytes (D-28), "/" included: taken verbatim.
    for node in ("demo", "a/b", "é" * 128, "x/patterns/y"):
        assert validation.node_id("knowledgeBases/" + node, "parent") == node
        sha1 = "a" * 40
        assert validation.pattern_ref(f"knowledgeBases/{node}/patterns/{sha1}") == (node, sha1)
    for bad in ("", "demo", "knowledgeBases/", "knowledgeBases/" + "é" * 129, "sessions/demo"):
        with pytest.raises(InvalidArgument):
            validation.node_id(bad, "parent")
    for bad in (
        "",
        "PTRN|" + "a" * 40,  # KATO's form is not the API's
        "a" * 40,
        "knowledgeBases/demo/patterns/00",
        "knowledgeBases/demo/patterns/" + "A" * 40,
        "knowledgeBases//patterns/" + "a" * 40,
        "knowledgeBases/demo/" + "a" * 40,
        "x" * 2000,
    ):
        with pytest.raises(InvalidArgument):
            validation.pattern_ref(bad)


def _requests(*symbols: str) -> list[svc.ObserveRequest]:
    return [svc.ObserveRequest(name="s", observation=pb.Observation(strings=[s])) for s in symbols]


def test_stream_batches_answer_valid_observations_before_an_invalid_one() -> None:
    settings = Settings(max_symbol_bytes=10)

    async def run() -> tuple[list[list[str]], list[KatoError]]:
        async def source() -> AsyncIterator[svc.ObserveRequest]:
            for r in _requests("a", "b", "x" * 20, "c"):
                yield r

        served: list[list[str]] = []
        errors: list[KatoError] = []
        async for item in batches(
            source(), lambda r: validation.check_observation(r.observation, settings), max_items=64, max_bytes=1 << 20
        ):
            if isinstance(item, KatoError):
                errors.append(item)
            else:
                assert not errors, "nothing is served after the error"
                served += [list(r.observation.strings) for r in item]
        return served, errors

    served, errors = asyncio.run(run())
    assert served == [["a"], ["b"]]
    assert len(errors) == 1 and isinstance(errors[0], InvalidArgument)


def test_read_ahead_is_bounded_in_bytes() -> None:
    async def run() -> list[int]:
        queue: ReadAhead[int] = ReadAhead(max_items=100, max_bytes=10)
        sizes: list[int] = []
        tried: list[int] = []

        async def produce() -> None:
            for i in range(5):
                tried.append(i)
                await queue.put(i, 4)
                sizes.append(i)

        task = asyncio.create_task(produce())
        while len(tried) < 3:  # until the third put is under way: this runs only while it waits
            await asyncio.sleep(0)
        held = len(sizes)  # 4 + 4 fit in 10 bytes, the third waits
        for _ in range(5):
            await queue.get()
        await task
        return [held, len(sizes)]

    assert asyncio.run(run()) == [2, 5]
