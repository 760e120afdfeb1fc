"""The transaction runner over the in-memory twins of its stores: fast, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from google.protobuf.empty_pb2 import Empty

from kato_grpc import request_ids
from kato_grpc.access import ANYONE, Caller
from kato_grpc.engine import processor
from kato_grpc.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Policy, Respond, TransactionRunner
from kato_grpc.stores.memory import InMemoryKnowledgeBase, InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import Applied, CasResult
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

SID = "s-" + "1" * 32
EMPTY_KB = InMemoryKnowledgeBase()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup(
    patterns: InMemoryPatternStore | None = None, policy: Policy | None = None
) -> tuple[TransactionRunner, InMemorySessionStore, InMemoryPatternStore, Clock]:
    clock = Clock()
    sessions = InMemorySessionStore(clock=clock)
    patterns = patterns or InMemoryPatternStore()
    runner = TransactionRunner(sessions, patterns, policy)
    state = processor.new_session(SID, "n", pb.SessionConfig(process_predictions=False))
    state.version, state.ttl_seconds = 1, 60
    assert asyncio.run(sessions.compare_and_set(state, None, runner.ttl_ms(state))) == CasResult.OK
    return runner, sessions, patterns, clock


def _observe(symbol: str) -> object:
    async def transition(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, Empty]:
        return processor.observe(state, pb.Observation(strings=[symbol]), EMPTY_KB, unique_id=symbol).state, Empty()

    return transition


async def _learn(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, svc.LearnResponse]:
    r = processor.learn(state)
    return r.state, svc.LearnResponse(status=svc.LEARN_STATUS_LEARNED, pattern=r.pattern_name)


def _run(runner: TransactionRunner, method: str, transition: object, request_id: str = "", body: str = "") -> object:
    request = svc.LearnRequest(name=SID, request_id=request_id + body)
    kind = svc.LearnResponse if transition is _learn else Empty
    call = request_ids.Call(method, request, request_id, kind)
    return asyncio.run(runner.transact(SID, call, transition, caller=ANYONE))  # type: ignore[arg-type]


def _stm(runner: TransactionRunner) -> list[list[str]]:
    return [list(e.symbols) for e in asyncio.run(runner.read(SID, ANYONE)).state.stm]


def test_a_conflict_recomputes_on_the_newer_state() -> None:
    runner, sessions, _, _ = _setup()
    calls = 0

    async def transition(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, Empty]:
        nonlocal calls
        calls += 1
        if calls == 1:  # another call commits meanwhile
            other = processor.observe(state, pb.Observation(strings=["other"]), EMPTY_KB, unique_id="o").state
            other.version = state.version + 1
            assert await sessions.compare_and_set(other, state.version, 60_000) == CasResult.OK
        new = processor.observe(state, pb.Observation(strings=["mine"]), EMPTY_KB, unique_id="m").state
        return new, Empty()

    _run(runner, "Observe", transition)
    assert calls == 2 and _stm(runner) == [["other"], ["mine"]]


def test_conflicts_beyond_the_retries_are_aborted() -> None:
    runner, sessions, _, _ = _setup(policy=Policy(cas_retries=3, backoff_max_seconds=0))

    async def always_loses(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, Empty]:
        other = storage.SessionState()
        other.CopyFrom(state)
        other.version = state.version + 1
        await sessions.compare_and_set(other, state.version, 60_000)
        return state, Empty()

    with pytest.raises(Aborted):
        _run(runner, "Observe", always_loses)


class FlakyPatterns(InMemoryPatternStore):
    """Fails its first ``failures`` applies as a store outage would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the pattern store is down")
        return await super().apply_many(kb_id, writes)


def test_an_outbox_left_by_a_failed_apply_lands_exactly_once_with_the_next_call() -> None:
    patterns = FlakyPatterns(failures=1)
    runner, sessions, _, _ = _setup(patterns)
    for s in ("a", "b"):
        _run(runner, "Observe", _observe(s))
    with pytest.raises(ConnectionError):
        _run(runner, "Learn", _learn, request_id="L")
    assert sessions.outbox(SID) is not None and _stm_raw(sessions) == []  # committed, not applied
    assert patterns.kb("n").pattern_count() == 0
    first = _run(runner, "Learn", _learn, request_id="L")  # the retry applies it, then answers
    assert isinstance(first, svc.LearnResponse) and first.pattern
    record = patterns.kb("n").pattern(first.pattern.removeprefix("PTRN|"))
    assert record is not None and record.frequency == 1
    assert sessions.outbox(SID) is None
    _run(runner, "Observe", _observe("c"))
    assert patterns.kb("n").pattern(first.pattern.removeprefix("PTRN|")).frequency == 1  # type: ignore[union-attr]


def _stm_raw(sessions: InMemorySessionStore) -> list[list[str]]:
    loaded = asyncio.run(sessions.load(SID))
    assert loaded is not None
    return [list(e.symbols) for e in loaded.state.stm]


def test_a_request_id_replays_its_call_and_refuses_any_other() -> None:
    runner, _, _, _ = _setup()
    _run(runner, "Observe", _observe("a"), request_id="r1")
    _run(runner, "Observe", _observe("zzz"), request_id="r1")  # same method and body: replayed
    assert _stm(runner) == [["a"]]
    with pytest.raises(AlreadyExists) as other_method:
        _run(runner, "ClearShortTermMemory", _observe("b"), request_id="r1")
    assert other_method.value.metadata == {"method": "Observe"}
    with pytest.raises(AlreadyExists):
        _run(runner, "Observe", _observe("b"), request_id="r1", body="-other")
    assert _stm(runner) == [["a"]]


def test_loads_slide_the_ttl_and_an_expired_session_is_gone() -> None:
    runner, _, _, clock = _setup()
    for _ in range(3):
        clock.now += 50  # under the 60 s TTL each time, 150 s in all
        asyncio.run(runner.read(SID, ANYONE))
    clock.now += 61
    with pytest.raises(NotFound):
        asyncio.run(runner.read(SID, ANYONE))


class RefusingPatterns(InMemoryPatternStore):
    def __init__(self) -> None:
        super().__init__()
        self.dead: list[str] = []

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        raise OverflowError("refused for good")

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        self.dead.append(write.write_id)

    def is_permanent(self, error: BaseException) -> bool:
        return isinstance(error, OverflowError)


def test_a_refused_write_becomes_a_dead_letter_and_leaves_the_outbox() -> None:
    patterns = RefusingPatterns()
    runner, sessions, _, _ = _setup(patterns)
    for s in ("a", "b"):
        _run(runner, "Observe", _observe(s))
    with pytest.raises(FailedPrecondition) as info:
        _run(runner, "Learn", _learn)
    assert info.value.reason == "PATTERN_REJECTED" and len(patterns.dead) == 1
    assert sessions.outbox(SID) is None
    _run(runner, "Observe", _observe("c"))  # the session goes on
    assert _stm(runner) == [["c"]]


def test_a_session_cannot_grow_past_its_byte_limit() -> None:
    runner, _, _, _ = _setup(policy=Policy(max_session_bytes=300))
    with pytest.raises(ResourceExhausted):
        for i in range(100):
            _run(runner, "Observe", _observe(f"symbol-{i}"))
    assert 0 < len(_stm(runner)) < 100


def test_the_caller_must_be_allowed_the_sessions_node() -> None:
    runner, _, _, _ = _setup()
    state = asyncio.run(runner.read(SID, ANYONE)).state
    elsewhere = Caller(frozenset({"another-node"}), "tenant-b")
    with pytest.raises(PermissionDenied):
        asyncio.run(runner.read(SID, elsewhere))
    with pytest.raises(PermissionDenied):
        call = request_ids.Call("Learn", svc.LearnRequest(), "", svc.LearnResponse)
        asyncio.run(runner.transact(SID, call, _learn, caller=elsewhere))
    assert asyncio.run(runner.read(SID, Caller(frozenset({state.node_id})))).state == state  # nothing changed


def test_a_response_built_from_the_committed_state_sees_the_new_version() -> None:
    runner, _, _, _ = _setup()
    before = asyncio.run(runner.read(SID, ANYONE)).version

    async def touch(
        state: storage.SessionState, _kb: int | None
    ) -> tuple[storage.SessionState, Respond[svc.LearnResponse]]:
        return processor.copy_state(state), lambda saved: svc.LearnResponse(pattern=str(saved.version))

    reply = asyncio.run(
        runner.transact(SID, request_ids.Call("Touch", Empty(), "", svc.LearnResponse), touch, caller=ANYONE)
    )
    assert reply.pattern == str(before + 1) == str(asyncio.run(runner.read(SID, ANYONE)).version)
