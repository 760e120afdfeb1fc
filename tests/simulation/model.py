"""The model the simulation checks the service against.

It follows the store's linearization: the twin tells it of every commit and delete the moment
it takes effect (``world.Watcher``), and it says which call made it. For each commit it runs
the pure engine (``kato_grpc/engine``) on its own state of the session — the engine folded
over the session's earlier commits, never the stored state — and records what the commit must
hold (the STM, the pattern writes) and what the call must answer. It never reads the KB to
compute that: a session's STM and its learns do not depend on the KB, only predictions do,
and those are compared once everything is applied (``Simulation.quiesce``).

From the commits it bounds each KB at every step: a pattern's frequency is at least the
learns of the commits whose outbox is gone (an outbox leaves only once applied) and at most
the learns of all commits; with no outbox left, it is exactly the committed learns — each
acknowledged learn once, plus at most the unacknowledged ones that committed.

One model per deployment. It also follows the pattern store's applies — which commits' writes
each new KB version holds, each write once, none another deployment's — so that it can say
what a KB held at any version (``kb_at``): what a cached index of that version must equal,
and what the predictions of an Observe answer computed on that version must be. And it
follows the clock: each load and commit slides a session's TTL, and a session whose TTL
lapsed is gone.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from kato_grpc import encoding, names, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.errors import FailedPrecondition
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_docs import learns
from kato_grpc.stores.protocols import Applied
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.simulation.world import Clock, Owner

EMPTY_KB = KnowledgeIndex()
MAX_COUNTER = 2**53 - 1  # engine.md D-30: no counter past it
# The session methods that go through the transaction runner (they may commit).
TRANSACTIONS = ("Observe", "Learn", "ObserveSequence", "ClearShortTermMemory")


class Violation(AssertionError):
    """An invariant broken; ``kind`` names the invariant (shrinking keeps the same kind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"[{kind}] {message}")
        self.kind = kind


@dataclass(eq=False)
class CallRecord:
    cid: int
    label: str
    session: str  # the session id
    method: str
    request: Message
    request_id: str
    caller: Caller
    commits_at_start: int  # the session's commits when the call started (a read's window)
    known: bool = True  # the deployment had the session when the call started (else: NOT_FOUND allowed)
    status: str = "running"  # running, ok, error, lost (its process crashed)
    response: Message | None = None
    error: BaseException | None = None
    commit: Commit | None = None

    @property
    def fingerprint(self) -> bytes:
        return request_ids.fingerprint(self.method, self.request)


@dataclass(eq=False)
class Commit:
    call: CallRecord
    version: int
    kb: str
    writes: list[storage.PatternWrite]  # what the engine says it learned, on the model's state
    write_ids: tuple[str, ...]  # the ids the runner gave them in the committed outbox
    expected: dict[str, object]  # what its answer must say (the KB-independent fields)
    record: bytes = b""  # the response recorded under its request id
    predictions: bytes = b""  # an Observe's answered predictions (on the KB version it read)
    acked: bool = False  # its call, or a replay of it, was answered
    learned: Counter[str] = field(default_factory=Counter)  # learns per pattern name

    def __post_init__(self) -> None:
        for w in self.writes:
            if w.name:
                self.learned[w.name] += learns(w)


@dataclass(eq=False)
class SessionModel:
    sid: str
    kb: str
    state: storage.SessionState
    version: int = 1
    ttl_ms: int = 0
    expires_at_ms: float = 0.0  # as the keyspace counts it: gone once the clock is past it
    alive: bool = True
    deleted_by: str = ""
    # The request records the store must hold: the same eviction rule (oldest first beyond
    # the count; the byte bound is never reached here).
    records: OrderedDict[str, tuple[str, bytes, Commit]] = field(default_factory=OrderedDict)
    # Every commit that recorded a request id, evicted or not (a replay may have loaded it first).
    recorded: dict[str, list[Commit]] = field(default_factory=dict)
    stm_history: list[list[list[str]]] = field(default_factory=lambda: [[]])  # STM after n commits
    commits: list[Commit] = field(default_factory=list)


def stm_of(state: storage.SessionState) -> list[list[str]]:
    return [list(e.symbols) for e in state.stm]


def write_shape(write: storage.PatternWrite) -> tuple[object, ...]:
    """What a write says, without its id."""
    return (
        write.name,
        tuple(tuple(e.symbols) for e in write.events),
        tuple(sorted(write.symbol_counts.items())),
        learns(write),
    )


class Model:
    def __init__(self, deployment: int, record_limit: int, limits: processor.StmLimits, clock: Clock) -> None:
        self.deployment = deployment
        self.record_limit = record_limit
        self.limits = limits
        self.clock = clock
        self.sessions: dict[str, SessionModel] = {}
        self.calls: dict[str, CallRecord] = {}  # by label
        self.commits_by_ids: dict[tuple[str, ...], Commit] = {}
        self.kb_commits: dict[str, list[Commit]] = {}
        self.kb_learns: dict[str, Counter[str]] = {}  # every committed learn, per KB and pattern
        self.broken: Violation | None = None  # the first violation seen inside a store operation
        # The pattern store's applies: each write id once (the deployment's ledger), and per
        # KB the writes each new version added, in version order.
        self.write_commits: dict[str, Commit] = {}
        self.applied_ids: set[str] = set()
        self.kb_log: dict[str, list[tuple[int, list[storage.PatternWrite]]]] = {}
        self._kb_at: dict[tuple[str, int], InMemoryKnowledgeBase] = {}
        self.views: dict[str, tuple[str, int]] = {}  # call label -> (KB, version) its last view read

    def now_ms(self) -> float:
        return self.clock() * 1000  # as InMemoryKeyspace.now_ms counts

    def add_session(self, state: storage.SessionState, ttl_ms: int) -> None:
        s = self.sessions[state.session_id] = SessionModel(state.session_id, state.node_id, storage.SessionState())
        s.state.CopyFrom(state)
        s.ttl_ms, s.expires_at_ms = ttl_ms, self.now_ms() + ttl_ms

    def _keep(self, violation: Violation) -> Violation:
        """Kept: the code under test may swallow what a store operation raises."""
        self.broken = self.broken or violation
        return violation

    # --- the clock -------------------------------------------------------------------------

    def loaded(self, owner: Owner, session_id: str, found: bool) -> None:
        """A load took effect: it slid the session's TTL (and starts a new attempt: what the
        call viewed before is not what this attempt computes on)."""
        self.views.pop(owner.label, None)
        if not found:
            return
        s = self.sessions.get(session_id)
        if s is None or not s.alive:
            raise self._keep(
                Violation("deployment", f"{owner.label} loaded {session_id}, no live session of deployment "
                          f"{self.deployment}")
            )  # fmt: skip
        s.expires_at_ms = self.now_ms() + s.ttl_ms

    def lapse(self) -> list[str]:
        """The sessions whose TTL lapsed by now (as Redis's rule: gone once the clock is past
        the expiry)."""
        now = self.now_ms()
        gone = [sid for sid, s in sorted(self.sessions.items()) if s.alive and now > s.expires_at_ms]
        for sid in gone:
            self.expire(sid, by="expiry")
        return gone

    # --- what the engine says a call does -------------------------------------------------

    def step(self, call: CallRecord, state: storage.SessionState) -> tuple[storage.SessionState, dict[str, object]]:
        """The session after ``call`` on ``state`` and the KB-independent fields of its answer
        (the use cases' rules, ``server/kato_server/observing.py``); the learns are left in
        ``pending_writes``."""
        node, req = state.node_id, call.request
        if isinstance(req, svc.ObserveRequest):
            r = processor.observe(
                state, req.observation, EMPTY_KB, unique_id=req.observation.unique_id, limits=self.limits
            )
            return r.state, {
                "stm_length": r.stm_length,
                "time": r.time,
                "unique_id": r.unique_id,
                "auto_learned_pattern": names.pattern(node, r.auto_learned_pattern or ""),
            }
        if isinstance(req, svc.LearnRequest):
            learned = processor.learn(state)  # FailedPrecondition on an empty STM, like the call
            status = svc.LEARN_STATUS_LEARNED if learned.pattern_name else svc.LEARN_STATUS_INSUFFICIENT_DATA
            return learned.state, {"status": status, "pattern": names.pattern(node, learned.pattern_name)}
        if isinstance(req, svc.ObserveSequenceRequest):
            ids = [o.unique_id for o in req.observations]
            seq = processor.observe_sequence(
                state,
                req.observations,
                EMPTY_KB,
                unique_ids=ids,
                limits=self.limits,
                clear_stm_between=req.clear_stm_between,
                learn_after_each=req.learn_after_each,
                learn_after=frozenset(req.learn_after),
            )
            auto: list[str] = []
            for s in seq.steps:
                if s.observed.auto_learned_pattern:
                    auto.append(names.pattern(node, s.observed.auto_learned_pattern))
                if s.learned_after is not None:
                    auto.append(names.pattern(node, s.learned_after))
            new, final = seq.state, ""
            if req.learn_at_end and new.stm:
                at_end = processor.learn(new)
                new = at_end.state
                auto.append(names.pattern(node, at_end.pattern_name))
                final = names.pattern(node, at_end.pattern_name)
            return new, {
                "initial_stm_length": len(state.stm),
                "final_stm_length": len(new.stm),
                "auto_learned_patterns": auto,
                "final_learned_pattern": final,
            }
        assert isinstance(req, svc.ClearShortTermMemoryRequest), type(req)
        return processor.clear_stm(state), {}

    # --- the store's linearization (world.Watcher) ------------------------------------------

    def committed(
        self,
        owner: Owner,
        state: storage.SessionState,
        outbox: storage.Outbox | None,
        request_id: str,
        record: storage.RequestRecord | None,
        ttl_ms: int,
    ) -> None:
        try:
            self._committed(owner, state, outbox, request_id, record, ttl_ms)
        except Violation as violation:
            raise self._keep(violation) from None

    def _committed(
        self,
        owner: Owner,
        state: storage.SessionState,
        outbox: storage.Outbox | None,
        request_id: str,
        record: storage.RequestRecord | None,
        ttl_ms: int,
    ) -> None:
        call = self.calls.get(owner.label)
        if call is None or call.method not in TRANSACTIONS:
            raise Violation("commit", f"{owner.label} committed session {state.session_id} but is no session call")
        s = self.sessions.get(state.session_id)
        if s is None:
            raise Violation("deployment", f"{call.label} committed {state.session_id}, not deployment "
                            f"{self.deployment}'s")  # fmt: skip
        if not s.alive:
            raise Violation("commit", f"{call.label} committed {s.sid} after it was deleted or expired")
        if call.session != s.sid:
            raise Violation("commit", f"{call.label} on {call.session} committed {s.sid}")
        if call.caller.nodes is not None and s.kb not in call.caller.nodes:
            raise Violation(
                "authorization", f"{call.label} committed {s.sid} of {s.kb}, which its caller may not touch"
            )
        if call.commit is not None:
            raise Violation("commit", f"{call.label} committed twice")
        if request_id and request_id in s.records:
            raise Violation(
                "request-id", f"{call.label} executed request id {request_id!r} again while {s.sid} still records it"
            )
        if state.version != s.version + 1:
            raise Violation("commit", f"{call.label} committed version {state.version} after {s.version}")
        try:
            expected_state, answer = self.step(call, s.state)
        except FailedPrecondition as exc:
            raise Violation("engine", f"{call.label} committed, but the engine refuses it: {exc}") from exc
        writes = list(expected_state.pending_writes)
        expected_state.ClearField("pending_writes")
        if stm_of(state) != stm_of(expected_state) or state.time != expected_state.time:
            raise Violation(
                "session",
                f"{call.label} committed STM {stm_of(state)} (time {state.time}) on {s.sid}; "
                f"the engine on the acknowledged history gives {stm_of(expected_state)} (time {expected_state.time})",
            )
        stored = list(outbox.writes) if outbox is not None else []
        if [write_shape(w) for w in stored] != [write_shape(w) for w in writes]:
            raise Violation(
                "outbox",
                f"{call.label} committed writes {[w.name for w in stored]}, the engine {[w.name for w in writes]}",
            )
        ids = tuple(w.write_id for w in stored)
        if ids and (len(set(ids)) != len(ids) or not all(ids)):
            raise Violation("write-id", f"{call.label} committed write ids {ids}")
        if ttl_ms != s.ttl_ms:
            raise Violation("session", f"{call.label} committed {s.sid} with a TTL of {ttl_ms} ms, not {s.ttl_ms}")
        commit = Commit(call, state.version, s.kb, writes, ids, answer)
        if isinstance(call.request, svc.ObserveRequest) and call.request.return_predictions:
            commit.predictions = self._observe_predictions(call, s)
        if request_id:
            if record is None:
                raise Violation("request-id", f"{call.label} committed request id {request_id!r} without its record")
            commit.record = record.response
            s.records[request_id] = (call.method, call.fingerprint, commit)
            while len(s.records) > self.record_limit:
                s.records.popitem(last=False)
            s.recorded.setdefault(request_id, []).append(commit)
        if ids:
            self.commits_by_ids[ids] = commit
            for write_id in ids:
                self.write_commits[write_id] = commit
        self.kb_commits.setdefault(s.kb, []).append(commit)
        self.kb_learns.setdefault(s.kb, Counter()).update(commit.learned)
        s.version, s.state = state.version, expected_state
        s.expires_at_ms = self.now_ms() + ttl_ms
        s.commits.append(commit)
        s.stm_history.append(stm_of(expected_state))
        call.commit = commit

    def deleted(self, owner: Owner, session_id: str) -> None:
        call = self.calls.get(owner.label)
        if call is None or call.method != "DeleteSession" or call.session != session_id:
            raise self._keep(
                Violation("delete", f"{owner.label} deleted session {session_id} but is not its DeleteSession")
            )
        self.expire(session_id, by=call.label)

    def expire(self, session_id: str, by: str) -> None:
        s = self.sessions[session_id]
        s.alive, s.deleted_by = False, by
        s.records.clear()  # the records live in the session's hash

    # --- answers ---------------------------------------------------------------------------

    def answered(self, call: CallRecord) -> None:
        """Check a call's answer (or error) against the model."""
        if call.session not in self.sessions:  # a session of the other deployment: none of that id here
            code, reason = getattr(call.error, "code", ""), getattr(call.error, "reason", "")
            if call.status == "ok" or (code, reason) not in (
                ("NOT_FOUND", "SESSION_NOT_FOUND"),
                ("UNAVAILABLE", "STORE_UNAVAILABLE"),
            ):
                raise Violation(
                    "deployment",
                    f"{call.label} ({call.method}) on {call.session}, which deployment {self.deployment} never "
                    f"had, ended {call.status} {call.error!r}",
                )
            return
        s = self.sessions[call.session]
        allowed = call.caller.nodes is None or s.kb in call.caller.nodes
        if call.status == "ok":
            if not allowed:
                raise Violation(
                    "authorization", f"{call.label} answered on {s.sid} of {s.kb}, which its caller may not touch"
                )
            self._answered_ok(call, s)
            return
        error = call.error
        reason = getattr(error, "reason", "")
        code = getattr(error, "code", "")
        if code == "UNAVAILABLE" and reason == "STORE_UNAVAILABLE":
            return  # an injected failure
        if code == "NOT_FOUND" and reason == "SESSION_NOT_FOUND":
            if s.alive and call.known:
                raise Violation("session", f"{call.label} got NOT_FOUND, but {s.sid} is alive")
            return
        if code == "PERMISSION_DENIED":
            if allowed:
                raise Violation("authorization", f"{call.label} was refused {s.sid}, which its caller may touch")
            return
        if code == "ALREADY_EXISTS" and reason == "REQUEST_ID_REUSED":
            used = s.recorded.get(call.request_id, [])
            if not any((c.call.method, c.call.fingerprint) != (call.method, call.fingerprint) for c in used):
                raise Violation(
                    "request-id", f"{call.label} was refused request id {call.request_id!r}, never used otherwise"
                )
            return
        if code == "FAILED_PRECONDITION" and reason == "STM_EMPTY" and call.method == "Learn":
            window = s.stm_history[call.commits_at_start :]
            if not any(not stm for stm in window):
                raise Violation(
                    "engine", f"{call.label} was refused for an empty STM; {s.sid}'s was never empty meanwhile"
                )
            return
        if code == "ABORTED" and reason == "CAS_RETRIES_EXHAUSTED":
            return
        raise Violation("error", f"{call.label} ({call.method}) failed unexpectedly: {error!r}")

    def _answered_ok(self, call: CallRecord, s: SessionModel) -> None:
        response = call.response
        assert response is not None
        if call.method in TRANSACTIONS:
            commit = call.commit
            if commit is None:  # a replay: the recorded answer of an earlier execution
                same = [
                    c
                    for c in s.recorded.get(call.request_id, [])
                    if (c.call.method, c.call.fingerprint) == (call.method, call.fingerprint)
                ]
                replayed = [c for c in same if type(response).FromString(c.record) == response]
                if not call.request_id or not replayed:
                    raise Violation(
                        "lost-write", f"{call.label} ({call.method}) was answered, but nothing of it committed"
                    )
                commit = replayed[-1]
            commit.acked = True
            if commit.predictions:
                assert isinstance(response, svc.ObserveResponse)
                shown = svc.ObserveResponse(
                    predictions=response.predictions, future_potentials=response.future_potentials
                )
                if shown.SerializeToString() != commit.predictions:
                    engine = svc.ObserveResponse.FromString(commit.predictions)
                    raise Violation(
                        "predictions",
                        f"{call.label} answered predictions {_names(shown)}; the engine on {s.sid}'s state and "
                        f"{s.kb} at the version its call read {_names(engine)} (or other values)",
                    )
            for key, value in commit.expected.items():
                got = getattr(response, key)
                got = list(got) if key == "auto_learned_patterns" else got
                if got != value:
                    raise Violation("answer", f"{call.label} answered {key}={got!r}; the engine says {value!r}")
        elif call.method == "DeleteSession":
            if s.alive or s.deleted_by != call.label:
                raise Violation("delete", f"{call.label} answered, but did not delete {s.sid}")
        elif call.method == "GetShortTermMemory":
            assert isinstance(response, svc.GetShortTermMemoryResponse)
            got = [list(e.symbols) for e in response.events]
            if got not in s.stm_history[call.commits_at_start :]:
                raise Violation("session", f"{call.label} read STM {got}, never {s.sid}'s while the call ran")

    # --- bounds on the KBs -------------------------------------------------------------------

    def kb_bounds(self, kb: str, pending: set[tuple[str, ...]]) -> tuple[Counter[str], Counter[str]]:
        """(lower, upper) learns per pattern of a KB: upper counts every commit, lower those
        whose outbox (its write ids) is no longer pending."""
        upper = self.kb_learns.get(kb, Counter())
        lower = Counter(upper)
        for ids in pending:
            commit = self.commits_by_ids[ids]
            if commit.kb == kb:
                lower.subtract(commit.learned)
        return lower, upper

    def acked_learns(self, kb: str) -> tuple[Counter[str], Counter[str]]:
        """(acknowledged, unacknowledged) committed learns per pattern of a KB."""
        acked: Counter[str] = Counter()
        unacked: Counter[str] = Counter()
        for commit in self.kb_commits.get(kb, []):
            (acked if commit.acked else unacked).update(commit.learned)
        return acked, unacked

    # --- the pattern store's applies and the KB at each version ---------------------------

    def applied(self, kb: str, writes: Sequence[storage.PatternWrite], applied: Applied) -> None:
        try:
            self._applied(kb, writes, applied)
        except Violation as violation:
            raise self._keep(violation) from None

    def _applied(self, kb: str, writes: Sequence[storage.PatternWrite], applied: Applied) -> None:
        new: dict[str, storage.PatternWrite] = {}
        for w in writes:
            commit = self.write_commits.get(w.write_id)
            if commit is None:
                raise Violation("deployment", f"write {w.write_id} applied to deployment {self.deployment}'s "
                                f"{kb}: no commit of this deployment wrote it")  # fmt: skip
            if commit.kb != kb:
                raise Violation("learn", f"write {w.write_id} of {commit.kb} applied to {kb}")
            if w.write_id not in self.applied_ids:
                new.setdefault(w.write_id, w)
        if applied.count != len(new):
            raise Violation("learn", f"{kb} applied {applied.count} writes of a batch with {len(new)} new ones")
        if not new:
            return
        log = self.kb_log.setdefault(kb, [])
        if applied.version != (log[-1][0] if log else 0) + 1:
            raise Violation("learn", f"{kb} moved to version {applied.version} after {log[-1][0] if log else 0}")
        self.applied_ids.update(new)
        log.append((applied.version, list(new.values())))

    def kb_version(self, kb: str) -> int:
        log = self.kb_log.get(kb)
        return log[-1][0] if log else 0

    def kb_at(self, kb: str, version: int) -> InMemoryKnowledgeBase:
        """What ``kb`` held at ``version``: the applied writes up to it, each batch one change."""
        found = self._kb_at.get((kb, version))
        if found is None:
            found = InMemoryKnowledgeBase()
            for v, writes in self.kb_log.get(kb, []):
                if v > version:
                    break
                found.commit(writes)
            found.version = version
            self._kb_at[(kb, version)] = found
        return found

    def viewed(self, owner: Owner, kb: str, version: int) -> None:
        if version > self.kb_version(kb):
            raise self._keep(Violation("cache", f"{owner.label} viewed {kb} at {version}, past its version"))
        self.views[owner.label] = (kb, version)

    def _observe_predictions(self, call: CallRecord, s: SessionModel) -> bytes:
        """The predictions an Observe answers: the engine on the model's state of the session
        and the KB at the version the call read (none read: the empty KB)."""
        req = call.request
        assert isinstance(req, svc.ObserveRequest)
        viewed = self.views.get(call.label)
        kb: KnowledgeView = EMPTY_KB
        if viewed is not None:
            if viewed[0] != s.kb:
                raise Violation("cache", f"{call.label} on {s.sid} of {s.kb} read {viewed[0]}")
            kb = self.kb_at(*viewed)
        r = processor.observe(s.state, req.observation, kb, unique_id=req.observation.unique_id, limits=self.limits)
        out = svc.ObserveResponse()
        encoding.add_predictions(r.predictions, names.pattern_prefix(s.kb), out.predictions, out.future_potentials)
        return out.SerializeToString()


def _names(response: svc.ObserveResponse | svc.GetPredictionsResponse) -> list[str]:
    return [p.pattern.rsplit("/", 1)[-1][:12] for p in response.predictions]
