"""The simulated world: the stores' in-memory twins behind gates that the scheduler opens one
at a time, and the server processes that a crash throws away.

Two deployments share one Redis — one ``InMemoryKeyspace``, each deployment's session store
under its own namespace (``Keys``) — and each has its own pattern store (its own MongoDB
database) and its own processes. The keyspace's clock is the world's: it moves only when the
scheduler advances it, and then TTLs lapse and outbox marks fall due by themselves.

What survives a crash is what Redis and MongoDB would keep: the twins (sessions, outboxes and
their due marks, request records, KBs, their ledgers and snapshots). What a crash discards is
everything a process holds in memory: its runner (the session → node map), its applier (the
applies in flight, the versions it saw), its KB cache and snapshotter, its use cases (the
event memo: Observing, Sessions, KbAdmin, KbTransfer) and its relay.

Every store operation a process makes first waits at a gate. The scheduler decides, per
gate, whether the operation goes through, fails before it takes effect, or takes effect and
then fails (the reply lost); a gate left closed is a stalled store. A crash cancels every
task of the process, wherever it waits, and a dead process can pass no further gate: a
crash falls between two store operations, never inside one (each twin operation is atomic,
as a Lua script or a MongoDB transaction is).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from kato_grpc.engine.budget import Budget
from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.errors import Unavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import Policy, TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.keys import Keys
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemoryKeyspace, InMemorySessionStore
from kato_grpc.stores.protocols import (
    Applied,
    CasResult,
    KbChanges,
    KbSummary,
    Loaded,
    RecordKey,
    RecordLimits,
)
from kato_grpc.stores.snapshotter import SnapshotPolicy, Snapshotter
from kato_server.engine_threads import EngineThreads
from kato_server.kb_admin import KbAdmin
from kato_server.kb_transfer import KbTransfer
from kato_server.observing import Observing
from kato_server.relay import OutboxRelay
from kato_server.sessions import Sessions

T = TypeVar("T")

# What the scheduler decides at a gate.
OK = "ok"
FAIL_BEFORE = "before"  # the store is unreachable: nothing happens, the caller gets an error
FAIL_AFTER = "after"  # the operation takes effect, then the reply lost: the caller gets an error
DECISIONS = (OK, FAIL_BEFORE, FAIL_AFTER)

RELAY_AFTER_SECONDS = 1.0  # the relay's grace period: a mark is due once this old
KB_CHECK_SECONDS = 1.0  # a cache asks MongoDB for a KB's version at least this often (D-8)
# Snapshots after every change of a KB of a few patterns: small, so that histories write,
# load and compact many (quiet 0: no timer runs, see Snapshotter._run).
SNAPSHOTS = SnapshotPolicy(min_patterns=2, quiet_seconds=0.0, growth=0.25)


class Clock:
    """The world's time (seconds): Redis's clock, and the monotonic clock the KB caches and
    snapshotters read. Only the scheduler moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class Process:
    """One incarnation of a server process: what a crash discards."""

    deployment: int
    pid: int
    incarnation: int
    runner: TransactionRunner
    observing: Observing
    sessions: Sessions
    relay: OutboxRelay
    cache: KbCache
    admin: KbAdmin
    transfer: KbTransfer
    dead: bool = False
    # Every task it runs (its calls and what they start: applies, applies behind an answer,
    # snapshots, relay passes), in creation order so that a crash cancels them in a
    # reproducible order.
    tasks: dict[asyncio.Task[Any], None] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Owner:
    """Who passes a gate: a process and the activity in it — a call ``c<n>`` (with the applies
    and snapshots it starts, which inherit its context) or a relay pass ``r<n>``."""

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


def owner() -> Owner:
    found = OWNER.get()
    assert found is not None
    return found


class Watcher(Protocol):
    """Told of what takes effect in a deployment's twins the moment it does (before a
    FAIL_AFTER hides it from the caller): the model follows the stores' linearization."""

    def loaded(self, owner: Owner, session_id: str, found: bool) -> None: ...

    def committed(
        self,
        owner: Owner,
        state: storage.SessionState,
        outbox: storage.Outbox | None,
        request_id: str,
        record: storage.RequestRecord | None,
        ttl_ms: int,
    ) -> None: ...

    def created(self, owner: Owner, state: storage.SessionState, ttl_ms: int) -> None: ...

    def deleted(self, owner: Owner, session_id: str) -> None: ...

    def applied(self, kb_id: str, writes: Sequence[storage.PatternWrite], applied: Applied) -> None: ...

    def viewed(self, owner: Owner, kb_id: str, version: int) -> None: ...

    # The pattern side's other changes (KbWrites, KbTransferStore), as they take effect.
    def cleared(self, owner: Owner, kb_id: str, version: int) -> None: ...

    def imported(
        self, owner: Owner, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite], applied: Applied
    ) -> None: ...

    def pattern_deleted(self, owner: Owner, kb_id: str, name: str, version: int | None) -> None: ...

    def pattern_updated(
        self,
        owner: Owner,
        kb_id: str,
        name: str,
        change: tuple[int | None, list[dict[str, float]] | None, dict[str, list[str]] | None],
        result: tuple[PatternRecord, int] | None,
    ) -> None: ...

    def summarized(self, owner: Owner, kb_id: str, version: int, totals: Totals) -> None: ...

    def remembered(self, owner: Owner, key: RecordKey, winner: storage.RequestRecord, ttl_ms: int) -> None: ...

    def forgot(self, owner: Owner, key: RecordKey) -> None: ...


class GatedSessions:
    """A deployment's session store twin behind gates: every Protocol the processes use,
    the relay's due queue (``OutboxQueue``) included — the twin's own, under its namespace."""

    def __init__(self, twin: InMemorySessionStore, gates: Gates, watcher: Watcher) -> None:
        self.twin = twin
        self.gates = gates
        self.watcher = watcher

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        async def load() -> Loaded | None:
            loaded = await self.twin.load(session_id, request_id, kb_id)
            self.watcher.loaded(owner(), session_id, loaded is not None)  # (its TTL slid)
            return loaded

        return await through(self.gates, "load", load)

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
        # The twin marks the session in its due queue within the commit (on Redis a round
        # trip before it): a failed commit may leave a mark, never an unmarked outbox.
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
            if result == CasResult.OK and expected_version is None:  # CreateSession's
                self.watcher.created(owner(), state, ttl_ms)
            elif result == CasResult.OK:
                self.watcher.committed(owner(), state, outbox, request_id, record, ttl_ms)
            return result

        return await through(self.gates, "cas", commit)

    @property
    def checks_kb_version(self) -> bool:
        return self.twin.checks_kb_version

    async def commit_or_load(
        self,
        state: storage.SessionState,
        expected_version: int,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
        kb_id: str | None = None,
        kb_version: int = 0,
    ) -> Loaded | int:
        # A commit (the model follows it as compare_and_set's), or — nothing written — a load
        # (its TTL slid, and the call starts a new attempt from it).
        async def commit_or_load() -> Loaded | int:
            result = await self.twin.commit_or_load(
                state,
                expected_version,
                ttl_ms,
                outbox=outbox,
                request_id=request_id,
                record=record,
                kb_id=kb_id,
                kb_version=kb_version,
            )
            if result == CasResult.OK:
                self.watcher.committed(owner(), state, outbox, request_id, record, ttl_ms)
            else:
                self.watcher.loaded(owner(), state.session_id, isinstance(result, Loaded))
            return result

        return await through(self.gates, "commit_or_load", commit_or_load)

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
                self.watcher.deleted(owner(), session_id)
            return gone

        return await through(self.gates, "delete", delete)

    # --- RequestRecords: CreateSession's, a node's ClearKnowledgeBase's ------------------------

    async def remember(self, key: RecordKey, record: storage.RequestRecord, ttl_ms: int) -> storage.RequestRecord:
        async def remember() -> storage.RequestRecord:
            winner = await self.twin.remember(key, record, ttl_ms)
            self.watcher.remembered(owner(), key, winner, ttl_ms)
            return winner

        return await through(self.gates, "remember", remember)

    async def recorded(self, key: RecordKey) -> storage.RequestRecord | None:
        return await through(self.gates, "recorded", lambda: self.twin.recorded(key))

    async def forget(self, key: RecordKey) -> None:
        async def forget() -> None:
            await self.twin.forget(key)
            self.watcher.forgot(owner(), key)

        await through(self.gates, "forget", forget)

    # --- OutboxQueue: the relay's ----------------------------------------------------------

    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        return await through(self.gates, "due", lambda: self.twin.due_outboxes(older_than_ms, limit))

    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        return await through(self.gates, "read_outbox", lambda: self.twin.read_outbox(session_id))

    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        await through(self.gates, "release", lambda: self.twin.release_outbox(session_id, version, score))


class GatedPatterns:
    """A deployment's pattern store twin behind gates: the runner's ``PatternStore``, the KB
    cache's ``KbReads``, the snapshotter's ``KbSnapshots``, KB administration's
    ``PatternReads`` and ``KbWrites`` and the transfers' ``KbTransferStore``."""

    def __init__(self, twin: InMemoryPatternStore, gates: Gates, watcher: Watcher) -> None:
        self.twin = twin
        self.gates = gates
        self.watcher = watcher

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        async def apply() -> Applied:
            applied = await self.twin.apply_many(kb_id, writes)
            self.watcher.applied(kb_id, writes, applied)
            return applied

        return await through(self.gates, "apply", apply)

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        await through(self.gates, "dead_letter", lambda: self.twin.dead_letter(kb_id, write, error))

    def is_permanent(self, error: BaseException) -> bool:
        return self.twin.is_permanent(error)

    # --- KbReads ----------------------------------------------------------------------------

    async def kb_version(self, kb_id: str) -> int:
        return await through(self.gates, "mongo_version", lambda: self.twin.kb_version(kb_id))

    async def changes_since(
        self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None, *, snapshots: bool = True
    ) -> KbChanges:
        return await through(
            self.gates, "changes", lambda: self.twin.changes_since(kb_id, since, singles, snapshots=snapshots)
        )

    # --- KbSnapshots ------------------------------------------------------------------------

    async def latest_snapshot_version(self, kb_id: str) -> int:
        return await through(self.gates, "snapshot_version", lambda: self.twin.latest_snapshot_version(kb_id))

    async def save_snapshot(self, kb_id: str, version: int, blob: bytes) -> bool:
        return await through(self.gates, "save_snapshot", lambda: self.twin.save_snapshot(kb_id, version, blob))

    async def compact_log(self, kb_id: str, version: int) -> int:
        return await through(self.gates, "compact", lambda: self.twin.compact_log(kb_id, version))

    # --- PatternReads, KbWrites (KB administration) -------------------------------------------

    async def get_pattern(self, kb_id: str, name: str) -> PatternRecord | None:
        return await through(self.gates, "get_pattern", lambda: self.twin.get_pattern(kb_id, name))

    async def list_patterns(self, kb_id: str, after: str, limit: int) -> list[PatternRecord]:
        return await through(self.gates, "list_patterns", lambda: self.twin.list_patterns(kb_id, after, limit))

    async def list_knowledge_bases(self, after: str, limit: int, among: frozenset[str] | None) -> list[KbSummary]:
        return await through(self.gates, "list_kbs", lambda: self.twin.list_knowledge_bases(after, limit, among))

    async def clear(self, kb_id: str, wipe_id: str = "") -> int:
        async def clear() -> int:
            before = await self.twin.kb_version(kb_id)
            version = await self.twin.clear(kb_id, wipe_id)
            if version != before:  # (a wipe whose id the ledger holds changes nothing)
                self.watcher.cleared(owner(), kb_id, version)
            return version

        return await through(self.gates, "clear", clear)

    async def delete_pattern(self, kb_id: str, name: str) -> int | None:
        async def delete() -> int | None:
            version = await self.twin.delete_pattern(kb_id, name)
            self.watcher.pattern_deleted(owner(), kb_id, name, version)
            return version

        return await through(self.gates, "delete_pattern", delete)

    async def update_pattern(
        self,
        kb_id: str,
        name: str,
        *,
        frequency: int | None,
        emotives: Sequence[Mapping[str, float]] | None,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> tuple[PatternRecord, int] | None:
        change = (
            frequency,
            None if emotives is None else [dict(e) for e in emotives],
            None if metadata is None else {k: list(v) for k, v in metadata.items()},
        )

        async def update() -> tuple[PatternRecord, int] | None:
            result = await self.twin.update_pattern(
                kb_id, name, frequency=frequency, emotives=emotives, metadata=metadata
            )
            self.watcher.pattern_updated(owner(), kb_id, name, change, result)
            return result

        return await through(self.gates, "update_pattern", update)

    # --- KbTransferStore (imports; exports are not driven) ----------------------------------

    async def kb_summary(self, kb_id: str) -> tuple[int, Totals, int]:
        async def summary() -> tuple[int, Totals, int]:
            found = await self.twin.kb_summary(kb_id)
            self.watcher.summarized(owner(), kb_id, found[0], found[1])
            return found

        return await through(self.gates, "kb_summary", summary)

    def pattern_rows(self, kb_id: str, size: int) -> AsyncIterator[Sequence[object]]:
        raise AssertionError("exports are not driven by the simulation")

    def exported(self, row: object) -> tuple[PatternRecord, dict[str, float]]:
        raise AssertionError("exports are not driven by the simulation")

    def vector_batches(self, kb_id: str, size: int) -> AsyncIterator[list[tuple[str, list[float]]]]:
        raise AssertionError("exports are not driven by the simulation")

    async def apply_batch(self, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        async def apply() -> Applied:
            applied = await self.twin.apply_batch(kb_id, batch_id, writes)
            self.watcher.imported(owner(), kb_id, batch_id, writes, applied)
            return applied

        return await through(self.gates, "apply_batch", apply)

    # What the snapshots that follow writes and the sweep ask (not driven yet: §10).
    async def snapshots_due(self, min_patterns: int, kb_ids: Sequence[str] | None = None) -> dict[str, int]:
        return await through(self.gates, "snapshots_due", lambda: self.twin.snapshots_due(min_patterns, kb_ids))

    async def claim_snapshot(self, kb_id: str, owner: str, now: float, until: float) -> bool:
        return await through(self.gates, "claim_snapshot", lambda: self.twin.claim_snapshot(kb_id, owner, now, until))

    async def release_snapshot(self, kb_id: str, owner: str) -> None:
        await through(self.gates, "release_snapshot", lambda: self.twin.release_snapshot(kb_id, owner))


class WatchedCache(KbCache):
    """The real KB cache, telling the model which KB version each call's view had (so that
    the predictions of its answer can be checked against the engine's on that version)."""

    def __init__(
        self, store: GatedPatterns, watcher: Watcher, snapshots: Snapshotter, clock: Callable[[], float]
    ) -> None:
        super().__init__(store, check_seconds=KB_CHECK_SECONDS, snapshotter=snapshots, clock=clock)
        self.watcher = watcher

    async def view(self, kb_id: str, published: int | None = None) -> KnowledgeIndex:
        index = await super().view(kb_id, published)
        self.watcher.viewed(owner(), kb_id, index.version)
        return index


class InlineEngine:
    """Stands for the engine runner: the work runs on the event loop, not on threads, so that
    the interleaving depends on the seed alone."""

    def __init__(self, max_prediction_work: int) -> None:
        self.max_work = max_prediction_work

    async def run(self, work: Callable[[Budget], T], reads: Sequence[object] = (), *, inline: bool = False) -> T:
        return work(Budget(self.max_work))


@dataclass
class Deployment:
    """One deployment: its namespace in the shared Redis, its own pattern database, and how
    to start a process on them."""

    index: int
    settings: Settings
    keys: Keys
    sessions_twin: InMemorySessionStore
    patterns_twin: InMemoryPatternStore
    gates: Gates
    sessions: GatedSessions
    patterns: GatedPatterns
    watcher: Watcher
    ack_after_commit: bool
    clock: Callable[[], float]  # the world's, in seconds: what the KB caches time their checks by
    session_ids: Callable[[], str]  # CreateSession's id generator: the scheduler's, from the history
    incarnations: int = 0

    def start_process(self, pid: int) -> Process:
        self.incarnations += 1
        # No backoff between conflict retries: asyncio.sleep(0) only yields, so no timer runs
        # and the interleaving stays the scheduler's.
        policy = Policy(backoff_max_seconds=0.0, ack_after_commit=self.ack_after_commit)
        runner = TransactionRunner(self.sessions, self.patterns, policy)
        snapshots = Snapshotter(self.patterns, SNAPSHOTS, clock=SnapshotClock(self.clock))
        cache = WatchedCache(self.patterns, self.watcher, snapshots, self.clock)
        engine = cast(EngineThreads, InlineEngine(self.settings.max_prediction_work))
        admin = KbAdmin(
            self.settings,
            versions=self.sessions,
            records=self.sessions,
            patterns=self.patterns,
            writes=self.patterns,
            runner=runner,
        )
        return Process(
            deployment=self.index,
            pid=pid,
            incarnation=self.incarnations,
            runner=runner,
            observing=Observing(self.settings, self.sessions, cache, engine, runner),
            sessions=Sessions(
                self.settings, self.sessions, self.sessions, self.sessions, runner, session_ids=self.session_ids
            ),
            relay=OutboxRelay(
                self.sessions, runner.applier.apply, after_seconds=RELAY_AFTER_SECONDS, interval_seconds=1.0
            ),
            cache=cache,
            admin=admin,
            transfer=KbTransfer(self.settings, self.sessions, self.patterns),
        )


def deployment(
    index: int,
    settings: Settings,
    keyspace: InMemoryKeyspace,
    namespace: str,
    records: RecordLimits,
    gates: Gates,
    watcher: Watcher,
    ack_after_commit: bool,
    session_ids: Callable[[], str],
) -> Deployment:
    keys = Keys(namespace)
    twin = InMemorySessionStore(records, keyspace=keyspace, keys=keys)
    patterns = InMemoryPatternStore()
    return Deployment(
        index=index,
        settings=settings,
        keys=keys,
        sessions_twin=twin,
        patterns_twin=patterns,
        gates=gates,
        sessions=GatedSessions(twin, gates, watcher),
        patterns=GatedPatterns(patterns, gates, watcher),
        watcher=watcher,
        ack_after_commit=ack_after_commit,
        clock=lambda: keyspace.now_ms() / 1000,
        session_ids=session_ids,
    )


class SnapshotClock:
    """The snapshotter's clock (``snapshotter.Clock``): the world's time. With the quiet
    period of 0 (``SNAPSHOTS``) it never has to wait, so no timer runs."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def monotonic(self) -> float:
        return self.clock()

    def time(self) -> float:
        return self.clock()

    async def sleep(self, seconds: float) -> None:
        raise AssertionError(f"a snapshotter waited {seconds} s: the simulation's policy has no quiet period")


@contextlib.contextmanager
def inline_threads() -> Iterator[None]:
    """While a history runs, what the KB caches and snapshotters would run on a thread (a
    snapshot's encoding and decoding, a large refresh) runs inline: no thread, so a seed fixes
    the whole history. (Their time is the world's: the clocks they are given.)"""

    async def inline(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    saved = asyncio.to_thread
    asyncio.to_thread = inline
    try:
        yield
    finally:
        asyncio.to_thread = saved


def task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """Every task joins its owner's process (the applier's and snapshotter's tasks inherit
    their call's context), so that a crash can cancel all of them."""
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
