"""The transaction runner over the in-memory twins of its stores: fast, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import pytest
from google.protobuf.empty_pb2 import Empty

from kato_grpc import request_ids
from kato_grpc.access import ANYONE, Caller
from kato_grpc.engine import processor
from kato_grpc.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Policy, Respond, TransactionRunner
from kato_grpc.session_cache import SessionCache
from kato_grpc.stores.memory import InMemoryKnowledgeBase, InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import Applied, CasResult, Loaded
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

T = TypeVar("T")
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


# --- One round trip: a session this process committed (architecture.md §3) ------------------


class CountingSessions(InMemorySessionStore):
    """The twin, listing the runner's store operations (each is one round trip on Redis)."""

    def __init__(self, clock: Clock, *, checks_kb_version: bool = True) -> None:
        super().__init__(clock=clock)
        self.ops: list[str] = []
        self.checks_kb_version = checks_kb_version  # False: as a Redis Cluster
        self._depth = 0

    async def _counted(self, op: str, call: Awaitable[T]) -> T:
        if not self._depth:  # the twin's own calls inside one operation are not the runner's
            self.ops.append(op)
        self._depth += 1
        try:
            return await call
        finally:
            self._depth -= 1

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        return await self._counted("load", super().load(session_id, request_id, kb_id))

    async def compare_and_set(self, *args: Any, **kwargs: Any) -> int:
        return await self._counted("compare_and_set", super().compare_and_set(*args, **kwargs))

    async def commit_or_load(self, *args: Any, **kwargs: Any) -> Loaded | int:
        assert self.checks_kb_version or kwargs.get("kb_id") is None, "a cluster cannot check a KB version"
        return await self._counted("commit_or_load", super().commit_or_load(*args, **kwargs))

    async def kb_version(self, kb_id: str) -> int | None:
        return await self._counted("kb_version", super().kb_version(kb_id))

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        await self._counted("publish_kb_version", super().publish_kb_version(kb_id, version))

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        return await self._counted("drop_outbox", super().drop_outbox(session_id, version))

    def taken(self) -> list[str]:
        ops, self.ops = self.ops, []
        return ops


def _counted(
    *, checks_kb_version: bool = True, patterns: InMemoryPatternStore | None = None, policy: Policy | None = None
) -> tuple[TransactionRunner, CountingSessions, Clock]:
    """A runner whose session ``SID`` (on node "n") it has committed once: it is cached."""
    clock = Clock()
    sessions = CountingSessions(clock, checks_kb_version=checks_kb_version)
    runner = TransactionRunner(sessions, patterns or InMemoryPatternStore(), policy)
    state = processor.new_session(SID, "n", pb.SessionConfig(process_predictions=False))
    state.version, state.ttl_seconds = 1, 60
    assert asyncio.run(sessions.compare_and_set(state, None, runner.ttl_ms(state))) == CasResult.OK
    sessions.taken()
    _run(runner, "Observe", _observe("first"))
    assert sessions.taken() == ["load", "compare_and_set"]  # not cached yet: a load first
    return runner, sessions, clock


def _another_process(sessions: CountingSessions, symbol: str) -> None:
    """A commit by a runner of another process (its own cache) on the same store."""
    other = TransactionRunner(sessions, InMemoryPatternStore())
    _run(other, "Observe", _observe(symbol))
    sessions.taken()


def test_a_session_this_process_committed_commits_in_one_round_trip() -> None:
    runner, sessions, _ = _counted()
    for symbol in ("a", "b", "c"):
        _run(runner, "Observe", _observe(symbol))
        assert sessions.taken() == ["commit_or_load"]
    _run(runner, "Observe", _observe("d"), request_id="r1")  # a request id: its record checked, then written
    assert sessions.taken() == ["commit_or_load"]
    _run(runner, "Observe", _observe("d"), request_id="r1")  # its retry: the store's record answers
    assert sessions.taken() == ["commit_or_load"]
    assert _stm(runner) == [["first"], ["a"], ["b"], ["c"], ["d"]]


def test_a_copy_another_process_made_stale_costs_the_reply_not_a_wrong_commit() -> None:
    runner, sessions, _ = _counted()
    _another_process(sessions, "elsewhere")
    _run(runner, "Observe", _observe("here"))
    # The store's reply serves as the load: no third round trip, and the commit builds on it.
    assert sessions.taken() == ["commit_or_load", "compare_and_set"]
    assert _stm(runner) == [["first"], ["elsewhere"], ["here"]]
    sessions.taken()
    _run(runner, "Observe", _observe("again"))  # lately shared: a load first, which finds this
    assert sessions.taken() == ["load", "compare_and_set"]  # process's version: nobody else's since
    _run(runner, "Observe", _observe("on"))
    assert sessions.taken() == ["commit_or_load"]


def test_a_session_whose_calls_alternate_between_processes_is_loaded_not_computed_twice() -> None:
    """A stale copy costs a transition run for nothing (the engine's work, the larger part of
    an Observe): once another process commits the session, its calls here load first, until a
    load finds the version this process left."""
    runner, sessions, _ = _counted()
    other = TransactionRunner(sessions, InMemoryPatternStore())
    runs = 0

    def counted(symbol: str) -> object:
        async def transition(state: storage.SessionState, kb: int | None) -> tuple[storage.SessionState, Empty]:
            nonlocal runs
            runs += 1
            return await _observe(symbol)(state, kb)  # type: ignore[operator,no-any-return]

        return transition

    def call(process: TransactionRunner, symbol: str) -> tuple[list[str], int]:
        nonlocal runs
        sessions.taken()
        runs = 0
        _run(process, "Observe", counted(symbol))
        return sessions.taken(), runs

    assert call(other, "b") == (["load", "compare_and_set"], 1)
    assert call(runner, "c") == (["commit_or_load", "compare_and_set"], 2)  # stale once: learnt it is shared
    assert call(other, "d") == (["commit_or_load", "compare_and_set"], 2)  # the other learns it too
    assert call(runner, "D") == (["load", "compare_and_set"], 1)
    for symbol in ("e", "f"):  # round robin: the round trips of before this cache, each run once
        assert call(other, symbol) == (["load", "compare_and_set"], 1)
        assert call(runner, symbol.upper()) == (["load", "compare_and_set"], 1)
    assert call(runner, "g") == (["load", "compare_and_set"], 1)  # finds its own version: not shared
    assert call(runner, "h") == (["commit_or_load"], 1)
    assert _stm(runner)[-4:] == [["f"], ["F"], ["g"], ["h"]]


def test_a_kb_version_published_elsewhere_is_predicted_from_by_the_next_call() -> None:
    """Read-your-writes across processes: a learn another process answered (its KB version
    published) before this call began is in what this call predicts from, although the
    call's state came from this process's cache."""
    given: list[int | None] = []

    async def transition(state: storage.SessionState, kb: int | None) -> tuple[storage.SessionState, Empty]:
        given.append(kb)
        return processor.copy_state(state), Empty()

    for checks in (True, False):  # False: a Redis Cluster, where the version is read first
        runner, sessions, _ = _counted(checks_kb_version=checks)
        asyncio.run(sessions.publish_kb_version("n", 7))  # as another process's learn
        sessions.taken()
        given.clear()
        _run(runner, "Observe", transition)
        if checks:  # predicted from what the process knew, refused by the store, again from 7
            assert (given, sessions.taken()) == ([0, 7], ["commit_or_load", "compare_and_set"])
        else:
            assert (given, sessions.taken()) == ([7], ["kb_version", "commit_or_load"])
        _run(runner, "Observe", transition)  # 7 is known now
        assert given[-1] == 7
        assert sessions.taken() == (["commit_or_load"] if checks else ["kb_version", "commit_or_load"])


def test_an_error_on_the_cached_state_is_decided_on_the_stored_one() -> None:
    """An etag (or any check a transition makes) is checked against the stored session: the
    cached copy of another process's older version does not refuse a current etag."""
    runner, sessions, _ = _counted()
    _another_process(sessions, "elsewhere")  # now at version 3; this process cached 2

    async def conditional(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, Empty]:
        if state.version != 3:
            raise Aborted("etag mismatch", reason="ETAG_MISMATCH")
        return processor.copy_state(state), Empty()

    _run(runner, "UpdateSession", conditional)
    assert sessions.taken() == ["load", "compare_and_set"]
    assert asyncio.run(runner.read(SID, ANYONE)).version == 4


def test_a_request_id_recorded_elsewhere_is_replayed_or_refused_not_run_again() -> None:
    runner, sessions, _ = _counted()
    other = TransactionRunner(sessions, InMemoryPatternStore())
    _run(other, "Observe", _observe("a"), request_id="r1")
    sessions.taken()
    _run(runner, "Observe", _observe("a"), request_id="r1")  # the retry reaches this process
    assert sessions.taken() == ["commit_or_load"]  # answered by the store's record: no commit
    with pytest.raises(AlreadyExists):
        _run(runner, "Observe", _observe("b"), request_id="r1", body="-other")
    assert _stm(runner) == [["first"], ["a"]]


def test_a_cached_session_deleted_or_expired_is_not_brought_back() -> None:
    runner, sessions, clock = _counted()
    assert asyncio.run(sessions.delete(SID))
    with pytest.raises(NotFound):
        _run(runner, "Observe", _observe("late"))
    assert sessions.taken() == ["commit_or_load"] and asyncio.run(sessions.load(SID)) is None

    runner, sessions, clock = _counted()
    clock.now += 61  # past the 60 s TTL
    with pytest.raises(NotFound):
        _run(runner, "Learn", _learn)
    assert asyncio.run(sessions.load(SID)) is None and sessions.outbox(SID) is None


def test_a_caller_not_allowed_is_refused_whatever_this_process_cached() -> None:
    runner, sessions, _ = _counted()
    elsewhere = Caller(frozenset({"another-node"}), "tenant-b")
    with pytest.raises(PermissionDenied):
        call = request_ids.Call("Learn", svc.LearnRequest(), "", svc.LearnResponse)
        asyncio.run(runner.transact(SID, call, _learn, caller=elsewhere))
    assert sessions.taken() == ["load"]  # as any call of a caller not allowed
    assert _stm(runner) == [["first"]]


def test_an_outbox_left_pending_is_applied_once_before_a_cached_call() -> None:
    patterns = FlakyPatterns(failures=1)
    runner, sessions, _ = _counted(patterns=patterns)
    _run(runner, "Observe", _observe("b"))
    with pytest.raises(ConnectionError):
        _run(runner, "Learn", _learn, request_id="L")  # committed, then the apply fails
    assert sessions.outbox(SID) is not None
    sessions.taken()
    _run(runner, "Observe", _observe("c"))
    # The store's reply showed the outbox: applied first, then the commit that drops it.
    assert sessions.taken() == ["commit_or_load", "publish_kb_version", "compare_and_set"]
    assert sessions.outbox(SID) is None and patterns.kb("n").pattern_count() == 1
    learned = _run(runner, "Learn", _learn, request_id="L")  # its retry: the record, applied once
    assert isinstance(learned, svc.LearnResponse) and learned.pattern
    assert patterns.kb("n").pattern(learned.pattern.removeprefix("PTRN|")).frequency == 1  # type: ignore[union-attr]
    sessions.taken()
    _run(runner, "Observe", _observe("d"))
    assert sessions.taken() == ["commit_or_load"]


def test_a_learn_of_this_process_needs_no_second_round_trip_after_it() -> None:
    runner, sessions, _ = _counted()
    _run(runner, "Observe", _observe("b"))
    sessions.taken()
    learned = _run(runner, "Learn", _learn)
    assert isinstance(learned, svc.LearnResponse) and learned.pattern
    assert sessions.taken() == ["commit_or_load", "publish_kb_version", "drop_outbox"]  # then applied
    _run(runner, "Observe", _observe("c"))  # predicts from the version its own apply published
    assert sessions.taken() == ["commit_or_load"]


def test_the_session_cache_keeps_its_bounds() -> None:
    def state(n: int) -> storage.SessionState:
        return storage.SessionState(session_id=f"s-{n}", version=1)

    cache = SessionCache(max_bytes=100, max_sessions=3)
    for n in range(4):
        cache.put(state(n), 1, 10)
    assert (len(cache), cache.bytes, cache.get("s-0")) == (3, 30, None)  # the oldest went
    assert cache.get("s-1") is not None  # now the most recently used
    cache.put(state(4), 1, 85)
    # Over the bytes: the least recently used went until it fit.
    assert [cache.get(f"s-{n}") is not None for n in range(5)] == [False, True, False, False, True]
    assert cache.bytes == 95
    cache.put(state(5), 1, 101)  # larger than the whole budget: not kept
    assert cache.get("s-5") is None and cache.bytes == 95
    cache.forget("s-4")
    assert (len(cache), cache.bytes) == (1, 10)
    for off in (SessionCache(max_bytes=0, max_sessions=10), SessionCache(max_bytes=100, max_sessions=0)):
        off.put(state(0), 1, 0)
        assert len(off) == 0  # KATO_SESSION_CACHE_MB=0: nothing kept, every call loads
