"""The scheduler: seeded histories of actions, run against the world, checked after every step.

A history is a list of actions (``Action``), each plain data, so that a failing history can
be replayed and shrunk without its seed. ``generate`` draws the next action from the seed and
the world as it is (which gates wait, which calls ran); ``Simulation.execute`` performs one
and lets every task run until all wait at a gate again (``world.settle``); then the calls
that ended are checked against the models and the invariants are checked against the stores.
Every history ends with ``Quiesce``: all gates opened, the clock moved past the relay's grace
and the caches' staleness bound, the relays run until no outbox is left, and the KBs, the
caches (warm and cold) and the predictions compared with the pure engine's on the models'
state.
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
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf import field_mask_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from kato_grpc import encoding, names
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.kb_cache import KbCache
from kato_grpc.stores.memory_sessions import InMemoryKeyspace
from kato_grpc.stores.protocols import RecordLimits
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.simulation.model import (
    KB_CALLS,
    MAX_COUNTER,
    CallRecord,
    Model,
    Violation,
    import_pattern,
    kb_content,
    stm_of,
)
from tests.simulation.world import (
    FAIL_AFTER,
    FAIL_BEFORE,
    KB_CHECK_SECONDS,
    OK,
    OWNER,
    RELAY_AFTER_SECONDS,
    Clock,
    Deployment,
    Gates,
    Owner,
    Process,
    deployment,
    inline_threads,
    settle,
    task_factory,
)

DEPLOYMENTS = ("alpha", "beta")  # their namespaces on the one Redis
PROCESSES = 2  # per deployment
KBS = ("kb0", "kb1", "kb2")  # in each deployment: the same names, different databases
# Tenants: the runner authorizes a session's node on every load. One may touch kb0 and kb1,
# one kb2, one (authentication off) every KB.
TENANTS: tuple[frozenset[str] | None, ...] = (frozenset({"kb0", "kb1"}), frozenset({"kb2"}), None)
SYMBOLS = ("a", "b", "c", "d", "e", "f")
RECORD_LIMIT = 3  # request records a session keeps: small, so that ids are evicted and reused
MAX_SESSIONS = 6  # live, per deployment
MAX_IN_FLIGHT = 8
TTLS = (10, 60, 600, 3600)  # seconds: some lapse within a history, some never
HISTORY_STEPS = 150


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    cid: int
    deployment: int  # the process's
    pid: int
    session: int
    tenant: int
    method: str
    # Sessions are numbered per deployment (both deployments have the same session ids). The
    # body, by method:
    #   CreateSession: (kb, max_pattern_length (0: no auto-learn), rolling, process_predictions,
    #     ttl_seconds); ``session`` is the id its execution draws (CreateSession's generator)
    #   Observe: ((symbols,), uid, return_predictions)
    #   ObserveSequence: (events, uid, learn_at_end, learn_after_each, return_predictions)
    #   ObserveStream: (events, uid, return_predictions): one batch of a stream's messages
    #   UpdateSession: (max_pattern_length, rolling, ttl_seconds, etag, mask paths)
    #   ClearKnowledgeBase: ("session",), or ("kb", kb): a call on a KB (``session`` 0)
    #   ImportKnowledgeBase: (kb, import_id, ((batch, ((events, frequency), ...)), ...))
    #   DeletePattern: (kb, sha1); UpdatePattern: (kb, sha1, frequency, ((emotive, value),),
    #     ((key, (value,)),), mask paths)
    body: tuple[Any, ...]
    request_id: str = ""

    @property
    def on_kb(self) -> bool:
        """A call on a KB, not a session."""
        return self.method in KB_CALLS and self.body[0] != "session"

    @property
    def on_session(self) -> bool:
        """A call on an existing session."""
        return not self.on_kb and self.method != "CreateSession"


@dataclass(frozen=True)
class Open:
    key: str  # the gate (world.Gate.key)
    decision: str  # OK, FAIL_BEFORE, FAIL_AFTER


@dataclass(frozen=True)
class Crash:
    deployment: int
    pid: int


@dataclass(frozen=True)
class Relay:
    deployment: int
    pid: int
    n: int


@dataclass(frozen=True)
class Tick:
    ms: int  # the world's clock moves on: TTLs lapse, marks fall due, caches check MongoDB


@dataclass(frozen=True)
class ColdLoad:
    deployment: int
    kb: int  # a fresh KB cache loads it (snapshot and changes): it must equal the model's


@dataclass(frozen=True)
class Quiesce:
    pass


Action = Call | Open | Crash | Relay | Tick | ColdLoad | Quiesce


def session_id(n: int) -> str:
    return f"s-{n:032x}"


def request_for(call: Call) -> Message:
    if call.on_kb:
        return kb_request_for(call)
    if call.method == "CreateSession":
        kb, max_pattern_length, rolling, process_predictions, ttl_seconds = call.body
        config = pb.SessionConfig(
            max_pattern_length=max_pattern_length,
            stm_mode=pb.STM_MODE_ROLLING if rolling else pb.STM_MODE_CLEAR,
            process_predictions=process_predictions,
        )
        return svc.CreateSessionRequest(
            session=svc.Session(knowledge_base=names.knowledge_base(KBS[kb]), config=config, ttl_seconds=ttl_seconds),
            request_id=call.request_id,
        )
    name = names.session(session_id(call.session))
    if call.method == "Observe":
        (symbols,), uid, with_predictions = call.body
        return svc.ObserveRequest(
            name=name,
            observation=pb.Observation(strings=[symbols], unique_id=uid),
            request_id=call.request_id,
            return_predictions=with_predictions,
        )
    if call.method == "ObserveSequence":
        events, uid, at_end, after_each, with_predictions = call.body
        return svc.ObserveSequenceRequest(
            name=name,
            observations=[pb.Observation(strings=list(e), unique_id=f"{uid}-{i}") for i, e in enumerate(events)],
            learn_at_end=at_end,
            learn_after_each=after_each,
            request_id=call.request_id,
            return_predictions=with_predictions,
        )
    if call.method == "ObserveStream":  # the batch the stream's messages make (stream.batches)
        events, uid, with_predictions = call.body
        return svc.ObserveSequenceRequest(
            name=name,
            observations=[pb.Observation(strings=list(e), unique_id=f"{uid}-{i}") for i, e in enumerate(events)],
            return_predictions=with_predictions,
        )
    if call.method == "Learn":
        return svc.LearnRequest(name=name, request_id=call.request_id)
    if call.method == "ClearShortTermMemory":
        return svc.ClearShortTermMemoryRequest(name=name, request_id=call.request_id)
    if call.method == "DeleteSession":
        return svc.DeleteSessionRequest(name=name)
    if call.method == "ClearKnowledgeBase":
        return svc.ClearKnowledgeBaseRequest(session=name, request_id=call.request_id)
    if call.method == "UpdateSession":
        max_pattern_length, rolling, ttl_seconds, etag, paths = call.body
        config = pb.SessionConfig(
            max_pattern_length=max_pattern_length, stm_mode=pb.STM_MODE_ROLLING if rolling else pb.STM_MODE_CLEAR
        )
        return svc.UpdateSessionRequest(
            session=svc.Session(name=name, config=config, ttl_seconds=ttl_seconds, etag=etag),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            request_id=call.request_id,
        )
    return svc.GetSessionRequest(name=name)  # the reads: GetShortTermMemory, GetPredictions


def kb_request_for(call: Call) -> Message:
    """The request of a call on a KB (an import's first message: the others are ``import_messages``)."""
    kb = KBS[call.body[1] if call.method == "ClearKnowledgeBase" else call.body[0]]
    if call.method == "ClearKnowledgeBase":
        return svc.ClearKnowledgeBaseRequest(knowledge_base=names.knowledge_base(kb), request_id=call.request_id)
    if call.method == "ImportKnowledgeBase":
        return import_messages(call)[0]
    pattern = names.pattern(kb, call.body[1])
    if call.method == "DeletePattern":
        return svc.DeletePatternRequest(name=pattern)
    _, _, frequency, emotives, metadata, paths = call.body
    update = svc.UpdatePatternRequest(
        pattern=pb.Pattern(name=pattern, frequency=frequency, emotives=[pb.EmotiveRecord(values=dict(emotives))]
                           if emotives else []),
    )  # fmt: skip
    for key, values in metadata:
        update.pattern.metadata[key].extend(list(values))
    update.update_mask.paths.extend(paths)
    return update


def import_messages(call: Call) -> list[svc.ImportKnowledgeBaseRequest]:
    kb, import_id, batches = call.body
    return [
        svc.ImportKnowledgeBaseRequest(
            knowledge_base=names.knowledge_base(KBS[kb]),
            import_id=import_id,
            batch=batch,
            patterns=[svc.ExportedPattern(pattern=import_pattern(p)) for p in patterns],
        )
        for batch, patterns in batches
    ]


# --- the simulation -----------------------------------------------------------------------------


@functools.cache
def settings() -> Settings:
    """The service's defaults (and any KATO_* in the environment), read once; sessions may
    live as briefly as the shortest TTL drawn, so that some lapse within a history."""
    return Settings(min_ttl_seconds=min(TTLS))


@dataclass(eq=False)
class Dep:
    """A deployment as the scheduler sees it: its stores, its model, its processes."""

    world: Deployment
    model: Model
    procs: list[Process]
    verified: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # cache checks done
    bounded: dict[str, tuple[object, ...]] = field(default_factory=dict)  # KB checks done


def _differ(a: tuple[object, ...], b: tuple[object, ...]) -> str:
    parts = ("patterns", "symbol statistics", "totals")
    return ", ".join(p for p, x, y in zip(parts, a, b, strict=True) if x != y)


class Simulation:
    def __init__(self, ack_after_commit: bool) -> None:
        self.settings = settings()
        self.clock = Clock()
        self.keyspace = InMemoryKeyspace(self.clock)  # one Redis for both deployments
        self.gates = Gates()
        limits = processor.StmLimits(self.settings.max_stm_events, self.settings.max_stm_symbols)
        self.deps: list[Dep] = []
        for d, namespace in enumerate(DEPLOYMENTS):
            model = Model(d, RECORD_LIMIT, limits, self.clock)
            world = deployment(
                d,
                self.settings,
                self.keyspace,
                namespace,
                RecordLimits(count=RECORD_LIMIT),
                self.gates,
                model,
                ack_after_commit,
                self._session_id,
            )
            self.deps.append(Dep(world, model, [world.start_process(pid) for pid in range(PROCESSES)]))
        self.created: dict[str, str] = {}  # CreateSession's label -> the id it draws
        self.running: dict[str, tuple[CallRecord, Model, asyncio.Task[Any]]] = {}
        self.calls: list[Call] = []  # every call started (for retries)
        self.relays = 0

    def procs(self) -> list[Process]:
        return [p for dep in self.deps for p in dep.procs]

    def spawn(self, proc: Process, label: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(OWNER.set, Owner(proc, label))
        task = asyncio.get_running_loop().create_task(work, context=context)
        if not label.startswith("c"):  # a relay pass: its failure is the relay's to log, not ours
            task.add_done_callback(_seen)
        return task

    def _session_id(self) -> str:
        """CreateSession's id generator: the id the history gave the call that draws it (a
        session id is random in the service; here the seed decides it)."""
        return self.created[OWNER.get(None).label]  # type: ignore[union-attr]

    async def execute(self, action: Action) -> None:
        """One step: the action, every task run to its next gate, the ends of calls checked."""
        if isinstance(action, Call):
            self._call(action)
        elif isinstance(action, Open):
            gate = self.gates.find(action.key)
            if gate is not None:  # in a shrunk history the gate may never come
                gate.future.set_result(action.decision)
        elif isinstance(action, Crash):
            self._crash(action.deployment, action.pid)
        elif isinstance(action, Relay):
            proc = self.deps[action.deployment].procs[action.pid]
            self.spawn(proc, f"r{action.n}", proc.relay.run_once())
        elif isinstance(action, Tick):
            self.clock.now += action.ms / 1000
        elif isinstance(action, ColdLoad):
            await self._cold_load(self.deps[action.deployment], KBS[action.kb])
        else:
            await self.quiesce()
            return
        await settle()
        self._ended()
        for dep in self.deps:
            if dep.model.broken is not None:
                raise dep.model.broken
        await self.check()

    def _call(self, call: Call) -> None:
        model = self.deps[call.deployment].model
        sid = session_id(call.session) if call.on_session else ""
        s = model.sessions.get(sid)
        body = call.body
        if call.method == "CreateSession":
            self.created[f"c{call.cid}"] = session_id(call.session)
            body = (session_id(call.session), *body)
        nodes = TENANTS[call.tenant]
        caller = Caller(nodes=nodes, principal=f"t{call.tenant}")
        request = request_for(call)
        label = f"c{call.cid}"
        record = CallRecord(
            call.cid,
            label,
            sid,
            call.method,
            request,
            call.request_id,
            caller,
            commits_at_start=len(s.commits) if s is not None else 0,
            known=s is not None or not call.on_session,
            kb=KBS[call.body[1] if call.method == "ClearKnowledgeBase" else call.body[0]] if call.on_kb else "",
            body=body,
        )
        model.calls[label] = record
        self.calls.append(call)
        proc = self.deps[call.deployment].procs[call.pid]
        work = self._import(proc, call, caller) if call.method == "ImportKnowledgeBase" else None
        task = self.spawn(proc, label, work or self._run(proc, sid, call.method, request, caller))
        self.running[label] = (record, model, task)

    @staticmethod
    async def _import(proc: Process, call: Call, caller: Caller) -> Message:
        """An ImportKnowledgeBase stream: its messages one after the other, then its end."""
        stream = proc.transfer.start_import(caller)
        for message in import_messages(call):
            await stream.add(message)
        return await stream.finish()

    @staticmethod
    async def _run(proc: Process, sid: str, method: str, request: Message, caller: Caller) -> Message:
        if isinstance(request, svc.CreateSessionRequest):
            return await proc.sessions.create_session(request, caller)
        if isinstance(request, svc.ClearKnowledgeBaseRequest):
            await proc.admin.clear_knowledge_base(request, caller)
            return svc.ClearKnowledgeBaseResponse()
        if isinstance(request, svc.DeletePatternRequest):
            await proc.admin.delete_pattern(request, caller)
            return Empty()
        if isinstance(request, svc.UpdatePatternRequest):
            return await proc.admin.update_pattern(request, caller)
        o = proc.observing
        if isinstance(request, svc.ObserveRequest):
            return await o.observe(request, caller)
        if method == "ObserveStream":
            assert isinstance(request, svc.ObserveSequenceRequest)
            messages = [
                svc.ObserveRequest(name=request.name, observation=o, return_predictions=request.return_predictions)
                for o in request.observations
            ]
            return svc.ObserveSequenceResponse(results=await o.observe_batch(messages, caller))
        if isinstance(request, svc.ObserveSequenceRequest):
            return await o.observe_sequence(request, caller)
        if isinstance(request, svc.LearnRequest):
            return await o.learn(request, caller)
        if isinstance(request, svc.ClearShortTermMemoryRequest):
            return await o.clear_stm(request, caller)
        if isinstance(request, svc.DeleteSessionRequest):
            await proc.sessions.delete_session(request, caller)
            return Empty()
        if isinstance(request, svc.UpdateSessionRequest):
            return await proc.sessions.update_session(request, caller)
        if method == "GetShortTermMemory":
            return await o.get_stm(sid, caller)
        return await o.get_predictions(sid, caller)

    def _crash(self, d: int, pid: int) -> None:
        """The process dies between two store operations: its tasks are cancelled wherever
        they wait (none is answered), a new incarnation takes its place on the same stores."""
        dep = self.deps[d]
        proc = dep.procs[pid]
        proc.dead = True
        for task in list(proc.tasks):
            task.cancel()
        dep.procs[pid] = dep.world.start_process(pid)

    def _ended(self) -> None:
        """Check the calls that ended, in the order they started."""
        for label, (record, model, task) in list(self.running.items()):
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
            model.answered(record)

    # --- invariants -----------------------------------------------------------------------------

    async def check(self) -> None:
        namespaces = tuple(f"{dep.world.keys.namespace}:" for dep in self.deps)
        stray = sorted(k for k in self.keyspace._values if not k.startswith(namespaces))  # the Redis's keys
        if stray:
            raise Violation("deployment", f"keys outside every deployment's namespace: {stray}")
        for dep in self.deps:
            await self._check_deployment(dep)

    async def _check_deployment(self, dep: Dep) -> None:
        model, twin = dep.model, dep.world.sessions_twin
        model.lapse()  # TTLs that lapsed by the clock
        marked = {sid for sid, _ in await twin.due_outboxes(-(10**12), 10**9)}
        if not marked <= set(model.sessions):
            raise Violation(
                "deployment", f"deployment {model.deployment}'s due queue marks {sorted(marked - set(model.sessions))}"
            )
        pending: set[tuple[str, ...]] = set()
        for sid in sorted(model.sessions):
            s = model.sessions[sid]
            outbox = twin.outbox(sid)
            if outbox is not None:
                ids = tuple(w.write_id for w in outbox.writes)
                if ids not in model.commits_by_ids:
                    raise Violation("outbox", f"{sid} holds an outbox no commit wrote: {ids}")
                if sid not in marked:
                    raise Violation("outbox", f"{sid} of deployment {model.deployment} holds an unmarked outbox")
                pending.add(ids)
            stored = twin._session(sid)  # as stored, without sliding its TTL as a load would
            if not s.alive:
                if stored is not None:
                    raise Violation("session", f"{sid} is still stored after it was {s.deleted_by or 'deleted'}")
                continue
            if stored is None:
                raise Violation("session", f"{sid} is gone, but no call deleted it and its TTL did not lapse")
            state = storage.SessionState.FromString(stored.blob)
            if stored.version != s.version or stm_of(state) != stm_of(s.state):
                raise Violation(
                    "session",
                    f"{sid} holds version {stored.version} STM {stm_of(state)}; "
                    f"the model {s.version} {stm_of(s.state)}",
                )
        for kb_id in KBS:
            self._check_kb(dep, kb_id, pending, await twin.kb_version(kb_id) or 0)
            self._check_caches(dep, kb_id)

    def _check_kb(self, dep: Dep, kb_id: str, pending: set[tuple[str, ...]], published: int) -> None:
        model = dep.model
        kb = dep.world.patterns_twin.kb(kb_id)
        mine = sorted(ids for ids in pending if model.commits_by_ids[ids].kb == kb_id)
        seen = (kb.version, len(model.kb_commits.get(kb_id, ())), published, tuple(mine), model.kb_version(kb_id))
        if dep.bounded.get(kb_id) == seen:
            return  # nothing it is checked against moved since the last step
        dep.bounded[kb_id] = seen
        if kb.version != model.kb_version(kb_id):
            raise Violation("learn", f"{kb_id} is at version {kb.version}; its changes made {model.kb_version(kb_id)}")
        content, want = kb_content(kb), model.content_at(kb_id, kb.version)
        if content != want:
            raise Violation(
                "kb",
                f"{model.deployment}/{kb_id} at version {kb.version} differs from what its changes make: "
                f"{_differ(content, want)}",
            )
        lower, upper = model.kb_bounds(kb_id, pending)
        real = {p.name: p.frequency for p in kb.all_patterns()}
        for name in sorted(set(real) | set(lower)):
            got = real.get(name, 0)
            if not lower[name] <= got <= upper[name]:
                where = "crossed into" if upper[name] == 0 else "in"
                raise Violation(
                    "learn",
                    f"pattern {name[:12]} {where} {model.deployment}/{kb_id} has frequency {got}; the commits "
                    f"allow {lower[name]}..{upper[name]} (applied outboxes .. all, since its last reset)",
                )
            if got > MAX_COUNTER:
                raise Violation("bound", f"pattern {name[:12]} in {kb_id} counts {got}, past 2^53 - 1")
        lost = model.unapplied(kb_id, pending)
        if lost:
            raise Violation("learn", f"{kb_id}: the outbox of {lost[0].call.label}'s commit is gone, its writes "
                            "never applied")  # fmt: skip
        totals = kb.totals()
        if model.totals_exact(kb_id) and (
            totals.total_pattern_frequencies != sum(real.values()) or totals.total_unique_patterns != len(real)
        ):
            raise Violation("bound", f"{kb_id}'s totals {totals} disagree with its patterns")
        if published > kb.version:
            raise Violation("bound", f"{kb_id}'s published version {published} is past its version {kb.version}")

    def _check_caches(self, dep: Dep, kb_id: str) -> None:
        """Every process's cached index of a KB equals the KB at the index's version."""
        for proc in dep.procs:
            index = proc.cache._indexes.get(kb_id)  # what the process serves now
            if index is None:
                continue
            key = (proc.pid, kb_id)
            if dep.verified.get(key) == (id(index), index.version):
                continue
            want = dep.model.content_at(kb_id, index.version)
            got = kb_content(index)
            if got != want:
                raise Violation(
                    "cache",
                    f"process {dep.model.deployment}.{proc.pid}'s cache of {kb_id} at version {index.version} "
                    f"differs from the KB at that version: {_differ(got, want)}",
                )
            dep.verified[key] = (id(index), index.version)

    async def _cold_load(self, dep: Dep, kb_id: str) -> KnowledgeIndex:
        """A fresh cache on the same stores (a process's cold start): the newest snapshot and
        what changed after it, equal to the KB at the version it loaded."""
        index = await KbCache(dep.world.patterns_twin, clock=dep.world.clock).view(kb_id)
        want = dep.model.content_at(kb_id, index.version)
        got = kb_content(index)
        if got != want:
            raise Violation(
                "cache",
                f"a cold load of {dep.model.deployment}/{kb_id} at version {index.version} differs from the KB: "
                f"{_differ(got, want)}",
            )
        return index

    async def quiesce(self) -> None:
        """Let everything finish with no fault, relay what is left, and compare the whole KBs,
        the caches and every live session's predictions with the engine's on the models' state."""
        await self._drain()
        # Past the relay's grace (every mark due) and the caches' staleness bound (D-8).
        self.clock.now += max(RELAY_AFTER_SECONDS, KB_CHECK_SECONDS) + 0.001
        for dep in self.deps:
            proc = dep.procs[0]
            for _ in range(3):
                if not await dep.world.sessions_twin.due_outboxes(-(10**12), 1):
                    break
                self.relays += 1
                await self._finish(proc, f"rq{self.relays}", proc.relay.run_once())
        await self._drain()  # what the relay started (snapshots)
        await self.check()
        for dep in self.deps:
            model = dep.model
            left = sorted(sid for sid in model.sessions if dep.world.sessions_twin.outbox(sid) is not None)
            if left:
                raise Violation("learn", f"deployment {model.deployment}: outboxes left after the relay ran: {left}")
            for kb_id in KBS:
                self._check_kb_exactly(dep, kb_id)
                cold = await self._cold_load(dep, kb_id)
                for proc in dep.procs:
                    warm = await self._finish(proc, f"qv{kb_id}", proc.cache.view(kb_id))
                    if warm.version != cold.version or kb_content(warm) != kb_content(cold):
                        raise Violation(
                            "cache",
                            f"process {model.deployment}.{proc.pid}'s warm {kb_id} (version {warm.version}) differs "
                            f"from a cold load (version {cold.version}): {_differ(kb_content(warm), kb_content(cold))}",
                        )
            await self._drain()
            for sid in sorted(model.sessions):
                s = model.sessions[sid]
                if not s.alive:
                    continue
                proc = dep.procs[0]
                got = await self._finish(proc, f"qp{sid}", proc.observing.get_predictions(sid, Caller()))
                expected = svc.GetPredictionsResponse()
                result = processor.predictions(s.state, model.kb_at(s.kb, model.kb_version(s.kb)))
                encoding.add_predictions(
                    result, names.pattern_prefix(s.kb), expected.predictions, expected.future_potentials
                )
                if got != expected:
                    raise Violation(
                        "predictions",
                        f"{sid} predicts {_names(got)}; the engine on the model's state {_names(expected)} "
                        "(or the same patterns with other values)",
                    )

    async def _drain(self) -> None:
        await settle()
        self._ended()
        for _ in range(10_000):
            if not self.gates.pending:
                return
            self.gates.pending[0].future.set_result(OK)
            await settle()
            self._ended()
        raise Violation("liveness", "calls still running after 10,000 gates opened")

    async def _finish(self, proc: Process, label: str, work: Coroutine[Any, Any, Any]) -> Any:
        task = self.spawn(proc, label, work)
        await settle()
        while not task.done():
            self.gates.pending[0].future.set_result(OK)
            await settle()
        self._ended()
        return task.result()

    def _check_kb_exactly(self, dep: Dep, kb_id: str) -> None:
        """No outbox left: each pattern holds exactly what its last reset, the imports since
        and every commit not applied before that reset make — every committed learn once."""
        model = dep.model
        real = {p.name: p.frequency for p in dep.world.patterns_twin.kb(kb_id).all_patterns()}
        lower, upper = model.kb_bounds(kb_id, set())
        assert lower == upper
        if real != {name: n for name, n in upper.items() if n or name in real}:
            diff = sorted(
                (n[:12], real.get(n, 0), upper[n]) for n in set(real) | set(upper) if real.get(n, 0) != upper[n]
            )
            raise Violation("learn", f"{kb_id} after the relay: (pattern, frequency, committed learns) {diff}")
        lost = model.unapplied(kb_id, set())
        if lost:
            raise Violation("learn", f"{kb_id} after the relay: {lost[0].call.label}'s learns never applied")


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
        self.next_session = [0] * len(DEPLOYMENTS)
        self.next_call = 0
        self.next_relay = 0
        self.next_uid = 0

    def draw(self, sim: Simulation) -> Action:
        rng = self.rng
        live = [len([s for s in dep.model.sessions.values() if s.alive]) for dep in sim.deps]
        known = any(dep.model.sessions for dep in sim.deps)
        creating = any(r.method == "CreateSession" for r, _, _ in sim.running.values())
        choices: list[tuple[float, Callable[[], Action]]] = [
            (0.4 if min(live) < MAX_SESSIONS else 0.0, lambda: self._new_session(sim)),
            (8.0 if sim.gates.pending else 0.0, lambda: self._open(sim)),
            (4.0 if known and len(sim.running) < MAX_IN_FLIGHT else 0.0, lambda: self._call(sim)),
            (1.5 if sim.calls and len(sim.running) < MAX_IN_FLIGHT else 0.0, lambda: self._retry(sim)),
            (0.5, self._relay),
            (0.1, lambda: Crash(rng.randrange(len(DEPLOYMENTS)), rng.randrange(PROCESSES))),
            (0.5, self._tick),
            (0.05, lambda: ColdLoad(rng.randrange(len(DEPLOYMENTS)), rng.randrange(len(KBS)))),
            (0.06, Quiesce),
        ]
        if not known:  # the first session first
            return self._open(sim) if creating and sim.gates.pending else self._new_session(sim)
        total = sum(w for w, _ in choices)
        pick = rng.uniform(0, total)
        for weight, make in choices:
            if pick < weight:
                return make()
            pick -= weight
        return Quiesce()

    def _new_session(self, sim: Simulation) -> Action:
        rng = self.rng
        room = [d for d, dep in enumerate(sim.deps) if sum(s.alive for s in dep.model.sessions.values()) < MAX_SESSIONS]
        d = rng.choice(room or [0])
        self.next_call += 1
        kb = rng.randrange(len(KBS))
        return Call(
            cid=self.next_call,
            deployment=d,
            pid=rng.randrange(PROCESSES),
            session=self._next_session(d),
            tenant=self._tenant(KBS[kb]),
            method="CreateSession",
            body=self._session_body(kb),
            request_id=f"r{self.next_call}" if rng.random() < 0.7 else "",
        )

    def _next_session(self, d: int) -> int:
        self.next_session[d] += 1
        return self.next_session[d]

    def _session_body(self, kb: int) -> tuple[Any, ...]:
        rng = self.rng
        return (kb, rng.choice((0, 0, 2, 3)), rng.random() < 0.5, rng.random() < 0.7, rng.choice(TTLS))

    def _tick(self) -> Action:
        rng = self.rng
        return Tick(rng.randint(100, 2_500) if rng.random() < 0.9 else rng.randint(4_000, 40_000))

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
            return ((rng.choice(SYMBOLS),), uid, rng.random() < 0.5)
        if method == "ObserveSequence":
            events = tuple((rng.choice(SYMBOLS),) for _ in range(rng.randint(1, 3)))
            return (events, uid, rng.random() < 0.5, rng.random() < 0.3, rng.random() < 0.5)
        if method == "ObserveStream":
            return (tuple((rng.choice(SYMBOLS),) for _ in range(rng.randint(1, 4))), uid, rng.random() < 0.5)
        if method == "UpdateSession":  # (max_pattern_length, rolling, ttl_seconds, etag, mask paths)
            paths = rng.choice((("config.max_pattern_length",), ("config.stm_mode",), ("ttl_seconds",),
                                ("config.max_pattern_length", "ttl_seconds")))  # fmt: skip
            etag = str(rng.randint(1, 8)) if rng.random() < 0.3 else ""  # now and then one, mostly stale
            return (rng.choice((0, 2, 3)), rng.random() < 0.5, rng.choice(TTLS), etag, paths)
        return ()

    def _call(self, sim: Simulation) -> Action:
        rng = self.rng
        method = rng.choices(
            ("Observe", "Learn", "ObserveSequence", "ClearShortTermMemory", "DeleteSession", "GetShortTermMemory",
             "GetPredictions", "ClearKnowledgeBase", "ImportKnowledgeBase", "DeletePattern", "UpdatePattern",
             "ObserveStream", "UpdateSession"),
            weights=(7, 3, 2, 0.4, 0.15, 0.5, 0.5, 0.5, 0.4, 0.2, 0.2, 1, 0.3),
        )[0]  # fmt: skip
        self.next_call += 1
        if method in KB_CALLS and (method != "ClearKnowledgeBase" or rng.random() < 0.5):
            return self._kb_call(sim, method)
        d = rng.choice([d for d, dep in enumerate(sim.deps) if dep.model.sessions])
        sessions = sorted(sim.deps[d].model.sessions.values(), key=lambda s: (not s.alive, s.sid))
        alive = [s for s in sessions if s.alive]
        s = rng.choice(alive if alive and rng.random() < 0.95 else sessions)
        no_id = ("DeleteSession", "GetShortTermMemory", "GetPredictions", "ObserveStream")  # (a stream's batch: none)
        rid = f"r{self.next_call}" if method not in no_id else ""
        if rid and rng.random() < 0.3:
            rid = ""
        # Now and then the other deployment's process: a client pointed at the wrong one finds
        # a session of that id there only if that deployment made one.
        if rng.random() < 0.03:
            d = 1 - d
        return Call(
            cid=self.next_call,
            deployment=d,
            pid=rng.randrange(PROCESSES),
            session=int(s.sid[2:], 16),
            tenant=self._tenant(s.kb),
            method=method,
            body=("session",) if method == "ClearKnowledgeBase" else self._body(method),
            request_id=rid,
        )

    def _kb_call(self, sim: Simulation, method: str) -> Action:
        """A call on a KB: a wipe of one named (with a request id, or none), an import, a
        pattern's deletion or update."""
        rng = self.rng
        d, kb = rng.randrange(len(DEPLOYMENTS)), rng.randrange(len(KBS))
        if method in ("DeletePattern", "UpdatePattern") and rng.random() < 0.8:  # mostly a KB with patterns
            held = [(d, k) for d, dep in enumerate(sim.deps) for k, kb_id in enumerate(KBS)
                    if dep.model.kb(kb_id).pattern_count()]  # fmt: skip
            d, kb = rng.choice(held) if held else (d, kb)
        rid = f"r{self.next_call}" if method == "ClearKnowledgeBase" and rng.random() < 0.7 else ""
        return Call(
            self.next_call, d, rng.randrange(PROCESSES), 0, self._tenant(KBS[kb]), method,
            self._kb_body(sim.deps[d].model, method, kb), rid,
        )  # fmt: skip

    def _kb_body(self, model: Model, method: str, kb: int) -> tuple[Any, ...]:
        rng = self.rng
        if method == "ClearKnowledgeBase":
            return ("kb", kb)
        if method == "ImportKnowledgeBase":
            batches = tuple(
                (n, tuple(self._imported_pattern() for _ in range(rng.randint(1, 2))))
                for n in sorted(rng.sample(range(4), rng.randint(1, 3)))
            )
            return (kb, f"i{self.next_call}", batches)
        # A pattern the KB holds, one it held or another KB holds, or (now and then) none.
        held = sorted(p.name for p in model.kb(KBS[kb]).all_patterns())
        known = sorted({n for k in model.kbs.values() for n in (p.name for p in k.all_patterns())} | set(held))
        if held and rng.random() < 0.8:
            sha1 = rng.choice(held)
        elif known and rng.random() < 0.8:
            sha1 = rng.choice(known)
        else:
            sha1 = f"{rng.getrandbits(160):040x}"
        if method == "DeletePattern":
            return (kb, sha1)
        paths: tuple[str, ...] = rng.choice(
            (("frequency",), ("frequency",), ("metadata",), ("emotives", "frequency"), ("*",))
        )  # ("*": all three, AIP-134 — what the request leaves empty is emptied)
        every = paths == ("*",)
        return (
            kb, sha1, rng.randint(1, 5),
            (("e", float(rng.randint(0, 3))),) if "emotives" in paths or (every and rng.random() < 0.5) else (),
            (("k", (rng.choice(("x", "y")),)),) if "metadata" in paths or (every and rng.random() < 0.5) else (),
            paths,
        )  # fmt: skip

    def _imported_pattern(self) -> tuple[tuple[tuple[str, ...], ...], int]:
        """Events of single symbols as learned ones are (so that imports and learns meet in
        one pattern), sometimes an event of two; at least two symbols (D-22)."""
        rng = self.rng
        events = tuple(
            tuple(sorted(rng.sample(SYMBOLS, 2 if rng.random() < 0.15 else 1))) for _ in range(rng.randint(2, 3))
        )
        return (events, rng.randint(1, 3))

    def _retry(self, sim: Simulation) -> Action:
        """A client retry: an earlier call again — unanswered ones most — with its request id,
        on either process of its deployment: the same request, or (a client bug, or an id
        whose record was forgotten) another body or another method. An import again is its
        import id again: resumed, or (a client bug) with other patterns."""
        rng = self.rng
        unanswered = [
            c for c in sim.calls if sim.deps[c.deployment].model.calls[f"c{c.cid}"].status in ("error", "lost")
        ]
        pool = unanswered if unanswered and rng.random() < 0.7 else sim.calls
        old = rng.choice(pool[-20:])
        self.next_call += 1
        method, body = old.method, old.body
        roll = rng.random()
        session = old.session
        if method == "CreateSession":  # another execution draws another id
            session = self._next_session(old.deployment)
            if old.request_id and roll < 0.15:
                body = self._session_body(body[0])
        elif method == "ImportKnowledgeBase" and roll < 0.2:
            kb, import_id, _ = body
            body = (kb, import_id, self._kb_body(sim.deps[old.deployment].model, method, kb)[2])
        elif old.request_id and old.on_kb and roll < 0.15:
            body = ("kb", rng.randrange(len(KBS)))  # the same id on another KB: another scope
        elif old.request_id and old.on_session and roll < 0.15:
            body = ("session",) if method == "ClearKnowledgeBase" else self._body(method)
        elif old.request_id and old.on_session and roll < 0.25:
            method = rng.choice(("Observe", "Learn", "ObserveSequence", "ClearShortTermMemory", "ClearKnowledgeBase"))
            body = ("session",) if method == "ClearKnowledgeBase" else self._body(method)
        pid = rng.randrange(PROCESSES)
        return Call(self.next_call, old.deployment, pid, session, old.tenant, method, body, old.request_id)

    def _relay(self) -> Action:
        self.next_relay += 1
        return Relay(self.rng.randrange(len(DEPLOYMENTS)), self.rng.randrange(PROCESSES), self.next_relay)


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
        with inline_threads():
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
        for proc in sim.procs():
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
