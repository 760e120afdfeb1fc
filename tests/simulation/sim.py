"""The scheduler: seeded histories of actions, run against the world, checked after every step.

A history is a list of actions (``Action``), each plain data, so that a failing history can
be replayed and shrunk without its seed. ``generate`` draws the next action from the seed and
the world as it is (which gates wait, which calls ran); ``Simulation.execute`` performs one
and lets every task run until all wait at a gate again (``world.settle``); then the calls
that ended are checked against the model and the invariants are checked against the stores.
Every history ends with ``Quiesce``: all gates opened, the relay run until no outbox is left,
and the KBs and predictions compared with the pure engine's on the model's state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from kato_grpc import encoding, names
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.settings import Settings
from kato_grpc.stores.memory import InMemoryKnowledgeBase, InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import RecordLimits
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.simulation.model import MAX_COUNTER, CallRecord, Model, Violation, stm_of
from tests.simulation.world import (
    FAIL_AFTER,
    FAIL_BEFORE,
    OK,
    OWNER,
    GatedPatterns,
    GatedSessions,
    Gates,
    Owner,
    Process,
    World,
    settle,
    task_factory,
)

PROCESSES = 2
KBS = ("kb0", "kb1", "kb2")
# Tenants: the runner authorizes a session's node on every load. One may touch kb0 and kb1,
# one kb2, one (authentication off) every KB.
TENANTS: tuple[frozenset[str] | None, ...] = (frozenset({"kb0", "kb1"}), frozenset({"kb2"}), None)
SYMBOLS = ("a", "b", "c", "d", "e", "f")
RECORD_LIMIT = 3  # request records a session keeps: small, so that ids are evicted and reused
MAX_SESSIONS = 6
MAX_IN_FLIGHT = 6
HISTORY_STEPS = 150


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSession:
    session: int
    kb: int
    max_pattern_length: int  # 0: no auto-learn
    rolling: bool
    process_predictions: bool


@dataclass(frozen=True)
class Call:
    cid: int
    pid: int
    session: int
    tenant: int
    method: str
    # Observe: ((symbols,), uid); ObserveSequence: (events, uid, learn_at_end, learn_after_each)
    body: tuple[Any, ...]
    request_id: str = ""


@dataclass(frozen=True)
class Open:
    key: str  # the gate (world.Gate.key)
    decision: str  # OK, FAIL_BEFORE, FAIL_AFTER


@dataclass(frozen=True)
class Crash:
    pid: int


@dataclass(frozen=True)
class Relay:
    pid: int
    n: int


@dataclass(frozen=True)
class Expire:
    session: int  # its state goes as a TTL expiry would take it; its outbox stays


@dataclass(frozen=True)
class Quiesce:
    pass


Action = NewSession | Call | Open | Crash | Relay | Expire | Quiesce


def session_id(n: int) -> str:
    return f"s-{n:032x}"


def request_for(call: Call) -> Message:
    name = names.session(session_id(call.session))
    if call.method == "Observe":
        (symbols,), uid = call.body[0], call.body[1]
        return svc.ObserveRequest(
            name=name, observation=pb.Observation(strings=[symbols], unique_id=uid), request_id=call.request_id
        )
    if call.method == "ObserveSequence":
        events, uid, at_end, after_each = call.body
        return svc.ObserveSequenceRequest(
            name=name,
            observations=[pb.Observation(strings=list(e), unique_id=f"{uid}-{i}") for i, e in enumerate(events)],
            learn_at_end=at_end,
            learn_after_each=after_each,
            request_id=call.request_id,
        )
    if call.method == "Learn":
        return svc.LearnRequest(name=name, request_id=call.request_id)
    if call.method == "ClearShortTermMemory":
        return svc.ClearShortTermMemoryRequest(name=name, request_id=call.request_id)
    if call.method == "DeleteSession":
        return svc.DeleteSessionRequest(name=name)
    return svc.GetSessionRequest(name=name)  # the reads: GetShortTermMemory, GetPredictions


# --- the simulation -----------------------------------------------------------------------------


@functools.cache
def settings() -> Settings:
    """The service's defaults (and any KATO_* in the environment), read once."""
    return Settings()


class Simulation:
    def __init__(self, ack_after_commit: bool) -> None:
        self.settings = settings()
        self.model = Model(
            RECORD_LIMIT, processor.StmLimits(self.settings.max_stm_events, self.settings.max_stm_symbols)
        )
        twin = InMemorySessionStore(RecordLimits(count=RECORD_LIMIT), clock=lambda: 0.0)  # TTLs never lapse alone
        patterns = InMemoryPatternStore()
        gates = Gates()
        self.world = World(
            settings=self.settings,
            sessions_twin=twin,
            patterns_twin=patterns,
            gates=gates,
            sessions=GatedSessions(twin, gates, self.model),
            patterns=GatedPatterns(patterns, gates),
            ack_after_commit=ack_after_commit,
        )
        self.procs = [self.world.start_process(pid) for pid in range(PROCESSES)]
        self.kbs = {kb_id: patterns.kb(kb_id) for kb_id in KBS}  # the twin keeps these objects
        self.running: dict[str, tuple[CallRecord, asyncio.Task[Any]]] = {}
        self.calls: list[Call] = []  # every call started (for retries)
        self.relays = 0

    @property
    def gates(self) -> Gates:
        return self.world.gates

    def spawn(self, proc: Process, label: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(OWNER.set, Owner(proc, label))
        task = asyncio.get_running_loop().create_task(work, context=context)
        if not label.startswith("c"):  # a relay pass: its failure is the relay's to log, not ours
            task.add_done_callback(_seen)
        return task

    async def execute(self, action: Action) -> None:
        """One step: the action, every task run to its next gate, the ends of calls checked."""
        if isinstance(action, NewSession):
            await self._new_session(action)
        elif isinstance(action, Call):
            self._call(action)
        elif isinstance(action, Open):
            gate = self.gates.find(action.key)
            if gate is not None:  # in a shrunk history the gate may never come
                gate.future.set_result(action.decision)
        elif isinstance(action, Crash):
            self._crash(action.pid)
        elif isinstance(action, Relay):
            proc = self.procs[action.pid]
            self.spawn(proc, f"r{action.n}", proc.relay.run_once())
        elif isinstance(action, Expire):
            sid = session_id(action.session)
            s = self.model.sessions.get(sid)
            if s is not None and s.alive and await self.world.sessions_twin.delete(sid):
                self.model.expire(sid, by="expiry")
        else:
            await self.quiesce()
            return
        await settle()
        self._ended()
        if self.model.broken is not None:
            raise self.model.broken
        await self.check()

    async def _new_session(self, action: NewSession) -> None:
        sid = session_id(action.session)
        if sid in self.model.sessions:
            return
        config = pb.SessionConfig(
            max_pattern_length=action.max_pattern_length,
            stm_mode=pb.STM_MODE_ROLLING if action.rolling else pb.STM_MODE_CLEAR,
            process_predictions=action.process_predictions,
        )
        state = processor.new_session(sid, KBS[action.kb], config)
        state.version, state.ttl_seconds = 1, 3600
        # CreateSession is not on the learn path: the session is made directly in the twin.
        await self.world.sessions_twin.compare_and_set(state, None, 3_600_000)
        self.model.add_session(state)

    def _call(self, call: Call) -> None:
        sid = session_id(call.session)
        s = self.model.sessions.get(sid)
        if s is None:
            return
        nodes = TENANTS[call.tenant]
        caller = Caller(nodes=nodes, principal=f"t{call.tenant}")
        request = request_for(call)
        label = f"c{call.cid}"
        record = CallRecord(
            call.cid, label, sid, call.method, request, call.request_id, caller, commits_at_start=len(s.commits)
        )
        self.model.calls[label] = record
        self.calls.append(call)
        proc = self.procs[call.pid]
        self.running[label] = (record, self.spawn(proc, label, self._run(proc, sid, call.method, request, caller)))

    @staticmethod
    async def _run(proc: Process, sid: str, method: str, request: Message, caller: Caller) -> Message:
        o = proc.observing
        if isinstance(request, svc.ObserveRequest):
            return await o.observe(request, caller)
        if isinstance(request, svc.ObserveSequenceRequest):
            return await o.observe_sequence(request, caller)
        if isinstance(request, svc.LearnRequest):
            return await o.learn(request, caller)
        if isinstance(request, svc.ClearShortTermMemoryRequest):
            return await o.clear_stm(request, caller)
        if isinstance(request, svc.DeleteSessionRequest):
            await proc.sessions.delete_session(request, caller)
            return Empty()
        if method == "GetShortTermMemory":
            return await o.get_stm(sid, caller)
        return await o.get_predictions(sid, caller)

    def _crash(self, pid: int) -> None:
        """The process dies between two store operations: its tasks are cancelled wherever
        they wait (none is answered), a new incarnation takes its place on the same stores."""
        proc = self.procs[pid]
        proc.dead = True
        for task in list(proc.tasks):
            task.cancel()
        self.procs[pid] = self.world.start_process(pid)

    def _ended(self) -> None:
        """Check the calls that ended, in the order they started."""
        for label, (record, task) in list(self.running.items()):
            if not task.done():
                continue
            del self.running[label]
            if task.cancelled():
                record.status = "lost"
                continue
            error = task.exception()
            if error is None:
                record.status, record.response = "ok", task.result()
            elif isinstance(error, Violation):
                raise error
            else:
                record.status, record.error = "error", error
            self.model.answered(record)

    # --- invariants -----------------------------------------------------------------------------

    async def check(self) -> None:
        twin = self.world.sessions_twin
        pending: set[tuple[str, ...]] = set()
        for sid in sorted(self.model.sessions):
            s = self.model.sessions[sid]
            outbox = twin.outbox(sid)
            if outbox is not None:
                ids = tuple(w.write_id for w in outbox.writes)
                if ids not in self.model.commits_by_ids:
                    raise Violation("outbox", f"{sid} holds an outbox no commit wrote: {ids}")
                pending.add(ids)
            loaded = await twin.load(sid)  # (slides a TTL that never lapses here)
            if not s.alive:
                if loaded is not None:
                    raise Violation("session", f"{sid} is still stored after it was deleted or expired")
                continue
            if loaded is None:
                raise Violation("session", f"{sid} is gone, but no call deleted it and it did not expire")
            if loaded.version != s.version or stm_of(loaded.state) != stm_of(s.state):
                raise Violation(
                    "session",
                    f"{sid} holds version {loaded.version} STM {stm_of(loaded.state)}; "
                    f"the model {s.version} {stm_of(s.state)}",
                )
        for kb_id in KBS:
            self._check_kb(kb_id, pending, await twin.kb_version(kb_id) or 0)

    def _check_kb(self, kb_id: str, pending: set[tuple[str, ...]], published: int) -> None:
        kb = self.kbs[kb_id]
        lower, upper = self.model.kb_bounds(kb_id, pending)
        real = {p.name: p.frequency for p in kb.all_patterns()}
        for name in sorted(set(real) | set(lower)):
            got = real.get(name, 0)
            if not lower[name] <= got <= upper[name]:
                where = "crossed into" if upper[name] == 0 else "in"
                raise Violation(
                    "learn",
                    f"pattern {name[:12]} {where} {kb_id} has frequency {got}; the commits allow "
                    f"{lower[name]}..{upper[name]} (applied outboxes .. all)",
                )
            if got > MAX_COUNTER:
                raise Violation("bound", f"pattern {name[:12]} in {kb_id} counts {got}, past 2^53 - 1")
        totals = kb.totals()
        if totals.total_pattern_frequencies != sum(real.values()) or totals.total_unique_patterns != len(real):
            raise Violation("bound", f"{kb_id}'s totals {totals} disagree with its patterns")
        if published > kb.version:
            raise Violation("bound", f"{kb_id}'s published version {published} is past its version {kb.version}")

    async def quiesce(self) -> None:
        """Let everything finish with no fault, relay what is left, and compare the whole KBs
        and every live session's predictions with the engine's on the model's state."""
        await settle()
        self._ended()
        for _ in range(10_000):
            if not self.gates.pending:
                break
            self.gates.pending[0].future.set_result(OK)
            await settle()
            self._ended()
        else:
            raise Violation("liveness", "calls still running after 10,000 gates opened")
        proc = self.procs[0]
        for _ in range(3):
            if not self.world.sessions.due:
                break
            self.relays += 1
            await self._finish(proc, f"rq{self.relays}", proc.relay.run_once())
        await self.check()
        left = sorted(sid for sid in self.model.sessions if self.world.sessions_twin.outbox(sid) is not None)
        if left:
            raise Violation("learn", f"outboxes left after the relay ran: {left}")
        for kb_id in KBS:
            self._check_kb_exactly(kb_id)
        for sid in sorted(self.model.sessions):
            s = self.model.sessions[sid]
            if s.alive:
                got = await self._finish(proc, f"qp{sid}", proc.observing.get_predictions(sid, Caller()))
                expected = svc.GetPredictionsResponse()
                result = processor.predictions(s.state, self._model_kb(s.kb))
                encoding.add_predictions(
                    result, names.pattern_prefix(s.kb), expected.predictions, expected.future_potentials
                )
                if got != expected:
                    raise Violation(
                        "predictions",
                        f"{sid} predicts {_names(got)}; the engine on the model's state {_names(expected)} "
                        "(or the same patterns with other values)",
                    )

    async def _finish(self, proc: Process, label: str, work: Coroutine[Any, Any, Any]) -> Any:
        task = self.spawn(proc, label, work)
        await settle()
        while not task.done():
            self.gates.pending[0].future.set_result(OK)
            await settle()
        self._ended()
        return task.result()

    def _model_kb(self, kb_id: str) -> InMemoryKnowledgeBase:
        """The KB the committed learns make, each applied once (in commit order)."""
        kb = InMemoryKnowledgeBase()
        for commit in self.model.kb_commits.get(kb_id, []):
            for write in commit.writes:
                kb.apply(write)
        return kb

    def _check_kb_exactly(self, kb_id: str) -> None:
        kb = self.kbs[kb_id]
        real = {p.name: (p.frequency, p.events) for p in kb.all_patterns()}
        model = self._model_kb(kb_id)
        expected = {p.name: (p.frequency, p.events) for p in model.all_patterns()}
        if real != expected:
            diff = sorted(
                (n[:12], real.get(n, (0,))[0], expected.get(n, (0,))[0])
                for n in set(real) | set(expected)
                if real.get(n) != expected.get(n)
            )
            raise Violation("learn", f"{kb_id} after the relay: (pattern, frequency, committed learns) {diff}")
        acked, unacked = self.model.acked_learns(kb_id)
        for name, (frequency, _) in sorted(real.items()):
            if not acked[name] <= frequency <= acked[name] + unacked[name]:
                raise Violation("learn", f"{name[:12]} in {kb_id}: {frequency} learns, {acked[name]} acknowledged")
        for name, count in sorted(acked.items()):
            if count and name not in real:
                raise Violation("learn", f"{name[:12]}: {count} acknowledged learns, not in {kb_id}")
        symbols = kb.symbols_after(None, 10_000)
        if symbols != model.symbols_after(None, 10_000) or kb.totals() != model.totals():
            raise Violation("learn", f"{kb_id}'s symbol statistics or totals differ from the committed learns'")


def _names(response: svc.GetPredictionsResponse) -> list[str]:
    return [p.pattern.rsplit("/", 1)[-1][:12] for p in response.predictions]


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The service logs every injected failure it survives; the simulation makes thousands."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**saved)


# --- drawing a history ---------------------------------------------------------------------------


class Generator:
    """Draws actions from a seed, looking at the simulation as it is."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_session = 0
        self.next_call = 0
        self.next_relay = 0
        self.next_uid = 0

    def draw(self, sim: Simulation) -> Action:
        rng = self.rng
        live = [s for _, s in sorted(sim.model.sessions.items()) if s.alive]
        choices: list[tuple[float, Callable[[], Action]]] = [
            (0.4 if len(live) < MAX_SESSIONS else 0.0, self._new_session),
            (8.0 if sim.gates.pending else 0.0, lambda: self._open(sim)),
            (4.0 if sim.model.sessions and len(sim.running) < MAX_IN_FLIGHT else 0.0, lambda: self._call(sim)),
            (1.5 if sim.calls and len(sim.running) < MAX_IN_FLIGHT else 0.0, lambda: self._retry(sim)),
            (0.5, self._relay),
            (0.1, lambda: Crash(rng.randrange(PROCESSES))),
            (0.08 if live else 0.0, lambda: Expire(int(rng.choice(live).sid[2:], 16))),
            (0.06, Quiesce),
        ]
        if not sim.model.sessions:
            return self._new_session()
        total = sum(w for w, _ in choices)
        pick = rng.uniform(0, total)
        for weight, make in choices:
            if pick < weight:
                return make()
            pick -= weight
        return Quiesce()

    def _new_session(self) -> Action:
        rng = self.rng
        self.next_session += 1
        return NewSession(
            session=self.next_session,
            kb=rng.randrange(len(KBS)),
            max_pattern_length=rng.choice((0, 0, 2, 3)),
            rolling=rng.random() < 0.5,
            process_predictions=rng.random() < 0.7,
        )

    def _open(self, sim: Simulation) -> Action:
        gate = self.rng.choice(sim.gates.pending)  # any of them: the others stall meanwhile
        roll = self.rng.random()
        return Open(gate.key, FAIL_BEFORE if roll < 0.03 else FAIL_AFTER if roll < 0.06 else OK)

    def _tenant(self, kb: str) -> int:
        allowed = [t for t, nodes in enumerate(TENANTS) if nodes is None or kb in nodes]
        if self.rng.random() < 0.05:  # now and then a caller the session's KB is not for
            return self.rng.randrange(len(TENANTS))
        return self.rng.choice(allowed)

    def _body(self, method: str) -> tuple[Any, ...]:
        rng = self.rng
        self.next_uid += 1
        uid = f"u{self.next_uid}"
        if method == "Observe":
            return ((rng.choice(SYMBOLS),), uid)
        if method == "ObserveSequence":
            events = tuple((rng.choice(SYMBOLS),) for _ in range(rng.randint(1, 3)))
            return (events, uid, rng.random() < 0.5, rng.random() < 0.3)
        return ()

    def _call(self, sim: Simulation) -> Action:
        rng = self.rng
        sessions = sorted(sim.model.sessions.values(), key=lambda s: (not s.alive, s.sid))
        alive = [s for s in sessions if s.alive]
        s = rng.choice(alive if alive and rng.random() < 0.95 else sessions)
        method = rng.choices(
            ("Observe", "Learn", "ObserveSequence", "ClearShortTermMemory", "DeleteSession", "GetShortTermMemory",
             "GetPredictions"),
            weights=(8, 2.5, 2, 0.4, 0.15, 0.5, 0.5),
        )[0]  # fmt: skip
        self.next_call += 1
        rid = f"r{self.next_call}" if method not in ("DeleteSession", "GetShortTermMemory", "GetPredictions") else ""
        if rid and rng.random() < 0.3:
            rid = ""
        return Call(
            cid=self.next_call,
            pid=rng.randrange(PROCESSES),
            session=int(s.sid[2:], 16),
            tenant=self._tenant(s.kb),
            method=method,
            body=self._body(method),
            request_id=rid,
        )

    def _retry(self, sim: Simulation) -> Action:
        """A client retry: an earlier call again — unanswered ones most — with its request id:
        the same request, or (a client bug, or an id whose record was forgotten) another body
        or another method."""
        rng = self.rng
        unanswered = [c for c in sim.calls if sim.model.calls[f"c{c.cid}"].status in ("error", "lost")]
        pool = unanswered if unanswered and rng.random() < 0.7 else sim.calls
        old = rng.choice(pool[-20:])
        self.next_call += 1
        method, body = old.method, old.body
        roll = rng.random()
        if old.request_id and roll < 0.15:
            body = self._body(method)
        elif old.request_id and roll < 0.25:
            method = rng.choice(("Observe", "Learn", "ObserveSequence", "ClearShortTermMemory"))
            body = self._body(method)
        return Call(self.next_call, rng.randrange(PROCESSES), old.session, old.tenant, method, body, old.request_id)

    def _relay(self) -> Action:
        self.next_relay += 1
        return Relay(self.rng.randrange(PROCESSES), self.next_relay)


# --- running histories ----------------------------------------------------------------------------


@dataclass
class Outcome:
    actions: list[Action]  # what ran, up to and including the failing step
    violation: Violation | None
    steps: int  # actions executed


def _mode(seed: int) -> bool:
    """Half the histories answer learns at the commit (KATO_LEARN_ACK=committed)."""
    return seed % 2 == 1


async def _history(ack_after_commit: bool, next_action: Callable[[Simulation], Action | None]) -> Outcome:
    loop = asyncio.get_running_loop()
    loop.set_task_factory(task_factory)
    sim = Simulation(ack_after_commit)
    actions: list[Action] = []
    try:
        while True:
            action = next_action(sim)
            if action is None:
                action = Quiesce()
                actions.append(action)
                await sim.execute(action)
                return Outcome(actions, None, len(actions))
            actions.append(action)
            await sim.execute(action)
    except Violation as violation:
        return Outcome(actions, violation, len(actions))
    finally:
        for proc in sim.procs:
            proc.dead = True
            for task in list(proc.tasks):
                task.cancel()
        await asyncio.sleep(0)


def run_seed(seed: int, steps: int = HISTORY_STEPS) -> Outcome:
    """One history drawn from ``seed``: ``steps`` actions, then a final Quiesce."""
    generator = Generator(seed)
    drawn = 0

    def next_action(sim: Simulation) -> Action | None:
        nonlocal drawn
        drawn += 1
        return generator.draw(sim) if drawn <= steps else None

    return asyncio.run(_history(_mode(seed), next_action))


def replay(actions: Sequence[Action], ack_after_commit: bool) -> Outcome:
    """Run a given history (then a final Quiesce)."""
    todo = list(actions)
    if todo and isinstance(todo[-1], Quiesce):
        todo.pop()
    it = iter(todo)
    return asyncio.run(_history(ack_after_commit, lambda _sim: next(it, None)))


def shrink(actions: list[Action], kind: str, ack_after_commit: bool, seconds: float = 60.0) -> list[Action]:
    """The shortest history found (delta debugging: drop chunks, then single actions) that
    still breaks the same invariant."""
    deadline = time.monotonic() + seconds
    best = list(actions) if actions and isinstance(actions[-1], Quiesce) else [*actions, Quiesce()]
    chunks = 2
    while len(best) > 1 and time.monotonic() < deadline:
        size = max(1, (len(best) - 1) // chunks)
        shrunk = False
        for start in range(0, len(best) - 1, size):
            candidate = best[:start] + best[start + size :]
            outcome = replay(candidate, ack_after_commit)
            if outcome.violation is not None and outcome.violation.kind == kind:
                best = outcome.actions
                shrunk = True
                break
            if time.monotonic() >= deadline:
                break
        if shrunk:
            chunks = max(chunks - 1, 2)
        elif size == 1:
            break
        else:
            chunks = min(chunks * 2, len(best))
    return best


def report(seed: int, outcome: Outcome, shrink_seconds: float = 60.0) -> str:
    violation = outcome.violation
    assert violation is not None
    shortest = shrink(outcome.actions, violation.kind, _mode(seed), shrink_seconds)
    again = replay(shortest, _mode(seed)).violation
    lines = [
        f"seed {seed}: step {outcome.steps}: {violation}",
        f"shortest history found ({len(shortest)} steps; it fails with: {again}):",
        *(f"  {i + 1:4}  {a!r}" for i, a in enumerate(shortest)),
        f"again: make simulate SEED={seed} STEPS={outcome.steps} LENGTH={outcome.steps}",
    ]
    return "\n".join(lines)


@dataclass
class Summary:
    histories: int
    steps: int
    seconds: float
    failure: str | None
    steps_before_failure: int  # all steps run up to and including the failing one


def simulate(
    first_seed: int,
    histories: int,
    steps: int,
    budget_seconds: float | None = None,
    shrink_seconds: float = 60.0,
) -> Summary:
    """Histories of ``steps`` actions from seeds first_seed, first_seed + 1, ... (at most
    ``histories``; and no new one after ``budget_seconds``); stops at the first failure."""
    started = time.monotonic()
    total = 0
    for n in range(histories):
        if budget_seconds is not None and time.monotonic() - started > budget_seconds:
            return Summary(n, total, time.monotonic() - started, None, total)
        seed = first_seed + n
        outcome = run_seed(seed, steps)
        total += outcome.steps
        if outcome.violation is not None:
            elapsed = time.monotonic() - started
            return Summary(n + 1, total, elapsed, report(seed, outcome, shrink_seconds), total)
    return Summary(histories, total, time.monotonic() - started, None, total)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="the first history's seed (then seed+1, ...)")
    parser.add_argument("--steps", type=int, default=300_000, help="steps to run in all")
    parser.add_argument("--length", type=int, default=HISTORY_STEPS, help="steps per history")
    args = parser.parse_args(argv)
    histories = max(1, -(-args.steps // args.length))
    with quiet_logs():
        summary = simulate(args.seed, histories, args.length)
    rate = f"{summary.steps / summary.seconds:,.0f} steps/s, {summary.histories / summary.seconds:,.1f} histories/s"
    print(f"{summary.histories} histories, {summary.steps} steps in {summary.seconds:.1f} s ({rate})")
    if summary.failure is not None:
        print(f"FAILED after {summary.steps_before_failure} steps\n{summary.failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
