"""The simulated world: the stores' in-memory twins behind gates that the scheduler opens one
at a time, and the server processes that a crash throws away.

What survives a crash is what Redis and MongoDB would keep: the twins (sessions, outboxes,
request records, KBs and their ledgers) and the relay's due marks. What a crash discards is
everything a process holds in memory: its runner (the session → node map), its applier (the
applies in flight, the versions it saw), its use cases (the event memo) and its relay.

Every store operation a process makes first waits at a gate. The scheduler decides, per
gate, whether the operation goes through, fails before it takes effect, or takes effect and
then fails (the reply lost); a gate left closed is a stalled store. A crash cancels every
task of the process, wherever it waits, and a dead process can pass no further gate: a
crash falls between two store operations, never inside one (each twin operation is atomic,
as a Lua script or a MongoDB transaction is).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from kato_grpc.engine.budget import Budget
from kato_grpc.errors import Unavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Policy, TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import Applied, CasResult, Loaded
from kato_grpc.stores.redis_sessions import RedisSessionStore
from kato_server.engine_threads import EngineThreads
from kato_server.observing import Observing
from kato_server.relay import OutboxRelay
from kato_server.sessions import Sessions

T = TypeVar("T")

# What the scheduler decides at a gate.
OK = "ok"
FAIL_BEFORE = "before"  # the store is unreachable: nothing happens, the caller gets an error
FAIL_AFTER = "after"  # the operation takes effect, then the reply is lost: the caller gets an error
DECISIONS = (OK, FAIL_BEFORE, FAIL_AFTER)


@dataclass(eq=False)
class Process:
    """One incarnation of a server process: what a crash discards."""

    pid: int
    incarnation: int
    runner: TransactionRunner
    observing: Observing
    sessions: Sessions
    relay: OutboxRelay
    dead: bool = False
    # Every task it runs (its calls and what they start: applies, applies behind an answer,
    # relay passes), in creation order so that a crash cancels them in a reproducible order.
    tasks: dict[asyncio.Task[Any], None] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Owner:
    """Who passes a gate: a process and the activity in it — a call ``c<n>`` (with the applies
    it starts, which inherit its context) or a relay pass ``r<n>``."""

    process: Process
    label: str


OWNER: contextvars.ContextVar[Owner | None] = contextvars.ContextVar("simulation_owner", default=None)


@dataclass(eq=False)
class Gate:
    key: str  # "<label>.<op>#<n>": stable across replays of the same history (shrinking)
    owner: Owner
    op: str
    future: asyncio.Future[str]


class Gates:
    """The store operations waiting for the scheduler, oldest first."""

    def __init__(self) -> None:
        self.pending: list[Gate] = []
        self._seen: dict[tuple[str, str], int] = {}

    async def pass_(self, op: str) -> str:
        owner = OWNER.get()
        assert owner is not None, f"a store operation ({op}) outside any simulated process"
        if owner.process.dead:  # a crashed process makes no further store operation
            raise asyncio.CancelledError
        n = self._seen.get((owner.label, op), 0) + 1
        self._seen[(owner.label, op)] = n
        gate = Gate(f"{owner.label}.{op}#{n}", owner, op, asyncio.get_running_loop().create_future())
        self.pending.append(gate)
        try:
            return await gate.future
        finally:
            if gate in self.pending:
                self.pending.remove(gate)

    def find(self, key: str) -> Gate | None:
        return next((g for g in self.pending if g.key == key), None)


def injected(op: str, when: str) -> Unavailable:
    return Unavailable(f"simulated store failure {when} {op}", reason="STORE_UNAVAILABLE")


async def through(gates: Gates, op: str, do: Callable[[], Awaitable[T]]) -> T:
    decision = await gates.pass_(op)
    if decision == FAIL_BEFORE:
        raise injected(op, "before")
    result = await do()
    if decision == FAIL_AFTER:
        raise injected(op, "after")
    return result


class Watcher(Protocol):
    """Told of every commit and delete the moment it takes effect in the twin (before a
    FAIL_AFTER hides it from the caller): the model follows the store's linearization."""

    def committed(
        self,
        owner: Owner,
        state: storage.SessionState,
        outbox: storage.Outbox | None,
        request_id: str,
        record: storage.RequestRecord | None,
    ) -> None: ...

    def deleted(self, owner: Owner, session_id: str) -> None: ...


class GatedSessions:
    """The session store's twin behind gates, with the relay's three operations added.

    The twin has no due marks (``due_outboxes``, ``read_outbox``, ``release_outbox`` are the
    Redis store's): ``due`` stands for the sorted set ``{ns}:outbox:due``, durable like
    Redis, and is marked in its own round trip before a commit that writes an outbox, as
    ``redis_sessions.py`` does. A relay pass in the simulation stands for one after the
    grace period: every mark is due.
    """

    def __init__(self, twin: InMemorySessionStore, gates: Gates, watcher: Watcher) -> None:
        self.twin = twin
        self.gates = gates
        self.watcher = watcher
        self.due: dict[str, int] = {}  # session id -> score (the world's clock when marked)
        self._clock = 0

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        return await through(self.gates, "load", lambda: self.twin.load(session_id, request_id, kb_id))

    async def compare_and_set(
        self,
        state: storage.SessionState,
        expected_version: int | None,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        clear_outbox: bool = False,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
    ) -> int:
        if outbox is not None and outbox.writes:

            async def mark() -> None:
                self._clock += 1
                self.due[state.session_id] = self._clock

            await through(self.gates, "mark", mark)

        async def commit() -> int:
            result = await self.twin.compare_and_set(
                state,
                expected_version,
                ttl_ms,
                outbox=outbox,
                clear_outbox=clear_outbox,
                request_id=request_id,
                record=record,
            )
            if result == CasResult.OK:
                owner = OWNER.get()
                assert owner is not None
                self.watcher.committed(owner, state, outbox, request_id, record)
            return result

        return await through(self.gates, "cas", commit)

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        return await through(self.gates, "drop", lambda: self.twin.drop_outbox(session_id, version))

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        await through(self.gates, "publish", lambda: self.twin.publish_kb_version(kb_id, version))

    async def kb_version(self, kb_id: str) -> int | None:
        return await through(self.gates, "kb_version", lambda: self.twin.kb_version(kb_id))

    async def delete(self, session_id: str) -> bool:
        async def delete() -> bool:
            gone = await self.twin.delete(session_id)
            if gone:
                owner = OWNER.get()
                assert owner is not None
                self.watcher.deleted(owner, session_id)
            return gone

        return await through(self.gates, "delete", delete)

    # --- the relay's operations (redis_sessions.RedisSessionStore's, over the twin) ----------

    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        async def due() -> list[tuple[str, float]]:
            marks = sorted(self.due.items(), key=lambda item: (item[1], item[0]))
            return [(sid, float(score)) for sid, score in marks[:limit]]

        return await through(self.gates, "due", due)

    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        async def read() -> tuple[storage.Outbox, int] | None:
            return await self.twin.read_outbox(session_id)

        return await through(self.gates, "read_outbox", read)

    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        # Two round trips, as in Redis (the outbox and the mark live in different slots).
        async def release() -> bool:
            if version is not None:
                await self.twin.drop_outbox(session_id, version)
            return await self.twin.read_outbox(session_id) is not None

        async def unmark() -> None:
            if self.due.get(session_id) == score:  # marked again meanwhile: the mark stays
                del self.due[session_id]

        if not await through(self.gates, "release", release):
            await through(self.gates, "unmark", unmark)


class GatedPatterns:
    """The pattern store's twin behind gates."""

    def __init__(self, twin: InMemoryPatternStore, gates: Gates) -> None:
        self.twin = twin
        self.gates = gates

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        return await through(self.gates, "apply", lambda: self.twin.apply_many(kb_id, writes))

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        await through(self.gates, "dead_letter", lambda: self.twin.dead_letter(kb_id, write, error))

    def is_permanent(self, error: BaseException) -> bool:
        return self.twin.is_permanent(error)


class TwinCache:
    """Stands for the process's KB cache: a read of the KB (a MongoDB round trip, so a gate)
    that returns the twin's index as it is now."""

    def __init__(self, patterns: InMemoryPatternStore, gates: Gates) -> None:
        self.patterns = patterns
        self.gates = gates

    async def view(self, kb_id: str, published: int | None = None) -> KnowledgeIndex:
        async def view() -> KnowledgeIndex:
            return self.patterns.kb(kb_id)

        return await through(self.gates, "view", view)


class InlineEngine:
    """Stands for the engine runner: the work runs on the event loop, not on threads, so that
    the interleaving depends on the seed alone."""

    def __init__(self, max_prediction_work: int) -> None:
        self.max_work = max_prediction_work

    async def run(self, work: Callable[[Budget], T], reads: Sequence[object] = (), *, inline: bool = False) -> T:
        return work(Budget(self.max_work))


@dataclass
class World:
    """What outlives a crash, and how to start a process on it."""

    settings: Settings
    sessions_twin: InMemorySessionStore
    patterns_twin: InMemoryPatternStore
    gates: Gates
    sessions: GatedSessions
    patterns: GatedPatterns
    ack_after_commit: bool
    incarnations: int = 0

    def start_process(self, pid: int) -> Process:
        self.incarnations += 1
        # No backoff between conflict retries: asyncio.sleep(0) only yields, so no timer runs
        # and the interleaving stays the scheduler's.
        policy = Policy(backoff_max_seconds=0.0, ack_after_commit=self.ack_after_commit)
        runner = TransactionRunner(self.sessions, self.patterns, policy)
        # The use cases are typed against the Redis store and the KB cache; the gated twins
        # provide what they call.
        redis_like = cast(RedisSessionStore, self.sessions)
        cache = cast(KbCache, TwinCache(self.patterns_twin, self.gates))
        engine = cast(EngineThreads, InlineEngine(self.settings.max_prediction_work))
        return Process(
            pid=pid,
            incarnation=self.incarnations,
            runner=runner,
            observing=Observing(self.settings, redis_like, cache, engine, runner),
            sessions=Sessions(self.settings, redis_like, redis_like, redis_like, runner),
            relay=OutboxRelay(redis_like, runner.applier.apply, after_seconds=1.0, interval_seconds=1.0),
        )


def task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """Every task joins its owner's process (the applier's tasks inherit their call's context),
    so that a crash can cancel all of them."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(OWNER) if context is not None else OWNER.get()
    if owner is not None:
        tasks = owner.process.tasks
        tasks[task] = None
        task.add_done_callback(lambda t: tasks.pop(t, None))
    return task


async def settle() -> None:
    """Run every task until all wait at a gate (or are done): the event loop's ready queue is
    empty once this coroutine comes round again with nothing scheduled behind it. No timers
    run in the simulation, so this is the whole of what can happen without the scheduler."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0)
        if not loop._ready:  # type: ignore[attr-defined]  # CPython's BaseEventLoop queue
            return
