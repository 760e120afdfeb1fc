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
committed learn once. A pattern's count starts again at its last *reset*: the wipe of its KB
(ClearKnowledgeBase), its deletion (DeletePattern: from 0) or an UpdatePattern that sets its
frequency (from that); the commits applied before the reset went with it, the commits
applied after it count again — those still pending at the reset too. No document says what
a wipe does to learns committed before it and still pending (another session's outbox, one
the relay has yet to apply): the KB keeps no generation, and exactly once (README, "The
outbox outlives its session") makes such a learn land once, whenever it lands, so in the
wiped KB. Only a session's own clear-all applies its outbox before the wipe (kb_admin.py),
which the model checks. Imported batches add their patterns' frequencies (docs/formats.md:
an imported pattern is `frequency` learns).

One model per deployment. It also follows the pattern store's changes — which commits' writes
each new KB version holds (each write once, none another deployment's), and every wipe,
imported batch, pattern deletion and update, each one version — so that it can say what a KB
held at any version (``kb_at``, ``content_at``): what the KB itself must hold at its version,
what a cached index of that version must equal, and what the predictions of an Observe answer
computed on that version must be. It decides on its own whether such a change may take
effect and what it does (a wipe once per request id, an import's batch once per knowledge
base, caller, import id and batch, a delete or update only of a pattern the KB holds), and
checks the store's answer against that. And it follows the clock: each load and commit slides
a session's TTL, and a session whose TTL lapsed is gone.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from kato_grpc import encoding, names, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import importing, processor
from kato_grpc.engine.config import effective_config
from kato_grpc.engine.knowledge import KnowledgeView, PatternRecord, Totals
from kato_grpc.engine.records import canonical_values
from kato_grpc.errors import Aborted, FailedPrecondition
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.stores.mongo_docs import learns
from kato_grpc.stores.protocols import Applied, RecordKey
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.simulation.world import Clock, Owner

EMPTY_KB = KnowledgeIndex()
MAX_COUNTER = 2**53 - 1  # engine.md D-30: no counter past it
# The session methods that go through the transaction runner (they may commit). A
# ClearKnowledgeBase of a session commits its STM cleared; one of a KB names no session.
TRANSACTIONS = (
    "Observe", "Learn", "ObserveSequence", "ClearShortTermMemory", "ClearKnowledgeBase", "ObserveStream",
    "UpdateSession",
)  # fmt: skip
# The calls on a knowledge base rather than a session (CallRecord.kb names it).
KB_CALLS = ("ImportKnowledgeBase", "DeletePattern", "UpdatePattern", "ClearKnowledgeBase")


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
    kb: str = ""  # a call on a KB (no session): the KB its request names
    body: tuple[object, ...] = ()  # the action's body (an import's batches, a pattern change)
    status: str = "running"  # running, ok, error, lost (its process crashed)
    response: Message | None = None
    error: BaseException | None = None
    commit: Commit | None = None
    wiped: list[int] = field(default_factory=list)  # the KB versions its wipes made
    batches: list[bool] = field(default_factory=list)  # each batch it gave the store: applied (or already)
    changed: list[int | None] = field(default_factory=list)  # its deletes or updates: the version (None: no pattern)
    pattern: pb.Pattern | None = None  # what its update must answer
    summary: tuple[int, Totals] | None = None  # the KB's version and totals its import read at the end
    created: str = ""  # CreateSession: the session it made

    @property
    def fingerprint(self) -> bytes:
        return request_ids.fingerprint(self.method, self.request)

    @property
    def wipe_scope(self) -> tuple[str, ...]:
        """What a ClearKnowledgeBase's request id is scoped by (kb_admin.py): the session's
        records, or (the KB, the caller) for a KB named."""
        if self.session:
            return ("session", self.session, self.request_id)
        return ("kb", self.kb, self.caller.principal or "", self.request_id)


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
    applied_version: int | None = None  # the KB version whose change applied its writes

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


@dataclass(frozen=True)
class KbChange:
    """One change of a KB as the pattern store linearized it: each makes one version."""

    kind: str  # learn, import, clear, delete, update
    writes: tuple[storage.PatternWrite, ...] = ()  # learn, import
    name: str = ""  # delete, update
    update: tuple[int | None, list[dict[str, float]] | None, dict[str, list[str]] | None] | None = None

    def apply(self, kb: InMemoryKnowledgeBase, version: int) -> None:
        """The change on the model's own KB (``InMemoryKnowledgeBase``: the reference
        semantics of each change); it must make exactly ``version``."""
        if self.kind == "learn":
            kb.commit(list(self.writes))
        elif self.kind == "import":
            kb.commit(list(self.writes), batch_id=f"import@{version}")
        elif self.kind == "clear":
            kb.clear()
        elif self.kind == "delete":
            kb.delete(self.name)
        else:
            assert self.update is not None
            frequency, emotives, metadata = self.update
            kb.update(self.name, frequency, emotives, metadata)
        assert kb.version == version, (self, kb.version, version)


def kb_content(kb: KnowledgeIndex) -> tuple[object, ...]:
    """What a KnowledgeView answers, in one comparable value: its patterns (frequencies,
    events, emotives, metadata), symbol statistics and totals."""
    patterns = sorted(
        (r.name, r.frequency, r.events, tuple(tuple(sorted(e.items())) for e in r.emotives),
         tuple(sorted(r.metadata.items())))
        for r in kb.all_patterns()
    )  # fmt: skip
    symbols = [
        (name, st.frequency, st.pattern_member_frequency, tuple(sorted(st.affinity.items())))
        for name, st in kb.symbols_after(None, 1_000_000)
    ]
    return (tuple(patterns), tuple(symbols), kb.totals())


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
        self.kb_log: dict[str, list[tuple[int, KbChange]]] = {}
        self._kb_at: dict[tuple[str, int], InMemoryKnowledgeBase] = {}
        self.views: dict[str, tuple[str, int]] = {}  # call label -> (KB, version) its last view read
        # The model's own KB at its latest version (the log folded as it grows) and what it
        # held at each version (``kb_content``).
        self.kbs: dict[str, InMemoryKnowledgeBase] = {}
        self.contents: dict[tuple[str, int], tuple[object, ...]] = {}
        # Wipes by request id (``CallRecord.wipe_scope``): the calls that wiped; and a KB
        # wipe's request record (its key) and when it lapses.
        self.wipes: dict[tuple[str, ...], list[str]] = {}
        self.wipe_records: dict[tuple[str, ...], float] = {}
        # CreateSession's request records by scope (KB, caller, request id): the session each
        # names and when it lapses (with the session's TTL), and every (session, fingerprint)
        # one of them ever named.
        self.create_records: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.create_recorded: dict[tuple[str, str, str], set[tuple[str, bytes]]] = {}
        # Imported batches: identity (KB, caller, import id, batch) <-> the store's ledger id.
        self.batch_ids: dict[str, tuple[str, str, str, int]] = {}
        self.batch_ledger: dict[tuple[str, str, str, int], str] = {}
        self.imported_batches: set[tuple[str, str, str, int]] = set()

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

    def step(
        self, call: CallRecord, state: storage.SessionState, version: int = 0
    ) -> tuple[storage.SessionState, dict[str, object]]:
        """The session after ``call`` on ``state`` (at ``version``) and the KB-independent fields
        of its answer (the use cases' rules, ``server/kato_server/observing.py``); the learns
        are left in ``pending_writes``."""
        node, req = state.node_id, call.request
        if call.method == "ObserveStream":  # a batch of a stream's observations: Observes, one by one
            assert isinstance(req, svc.ObserveSequenceRequest)
            batch = processor.observe_sequence(
                state, req.observations, EMPTY_KB, unique_ids=[o.unique_id for o in req.observations],
                limits=self.limits,
            )  # fmt: skip
            results = [
                (o.stm_length, o.time, o.unique_id, names.pattern(node, o.auto_learned_pattern or ""))
                for o in (step.observed for step in batch.steps)
            ]
            return batch.state, {"results": results}
        if isinstance(req, svc.UpdateSessionRequest):
            return self._update_session(req, state, version)
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
        # ClearShortTermMemory, and a ClearKnowledgeBase's commit (the session's STM cleared)
        assert isinstance(req, svc.ClearShortTermMemoryRequest | svc.ClearKnowledgeBaseRequest), type(req)
        return processor.clear_stm(state), {}

    @staticmethod
    def _update_session(
        req: svc.UpdateSessionRequest, state: storage.SessionState, version: int
    ) -> tuple[storage.SessionState, dict[str, object]]:
        """UpdateSession (AIP-134, AIP-154): refused on a stale etag; the masked config
        parameters take the request's value (or their default when it leaves one unset), the
        TTL the request's; the answer shows the saved session (its etag the new version)."""
        given = req.session
        if given.etag and given.etag != str(version):
            raise Aborted("stale etag", reason="ETAG_MISMATCH")
        paths = list(req.update_mask.paths)
        config = pb.SessionConfig()
        config.CopyFrom(state.config)
        for path in paths:
            if path.startswith("config."):
                config.ClearField(path[len("config.") :])  # type: ignore[arg-type]
                if given.config.HasField(path[len("config.") :]):  # type: ignore[arg-type]
                    setattr(config, path[len("config.") :], getattr(given.config, path[len("config.") :]))
        new = processor.update_config(state, config)
        if "ttl_seconds" in paths:
            new.ttl_seconds = given.ttl_seconds
        return new, {
            "config": effective_config(new.config),
            "ttl_seconds": new.ttl_seconds,
            "etag": str(version + 1),
            "stm_length": len(new.stm),
            "time": new.time,
        }

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
            expected_state, answer = self.step(call, s.state, s.version)
        except (FailedPrecondition, Aborted) as exc:
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
        if ttl_ms != expected_state.ttl_seconds * 1000:  # (UpdateSession may change it)
            raise Violation("session", f"{call.label} committed {s.sid} with a TTL of {ttl_ms} ms, not "
                            f"{expected_state.ttl_seconds} s")  # fmt: skip
        commit = Commit(call, state.version, s.kb, writes, ids, answer)
        if isinstance(call.request, svc.ObserveRequest) and call.request.return_predictions:
            commit.predictions = self._observe_predictions(call, s)
        if isinstance(call.request, svc.ObserveSequenceRequest) and call.request.return_predictions:
            commit.predictions = self._sequence_predictions(call, s)
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
        s.ttl_ms, s.expires_at_ms = ttl_ms, self.now_ms() + ttl_ms
        s.commits.append(commit)
        s.stm_history.append(stm_of(expected_state))
        call.commit = commit

    # --- CreateSession -----------------------------------------------------------------------

    def created(self, owner: Owner, state: storage.SessionState, ttl_ms: int) -> None:
        try:
            self._created(owner, state, ttl_ms)
        except Violation as violation:
            raise self._keep(violation) from None

    def _created(self, owner: Owner, state: storage.SessionState, ttl_ms: int) -> None:
        """A session was made: by a CreateSession, with the id its execution drew, the
        engine's new session of the requested KB and config, the requested TTL, version 1."""
        call = self.calls.get(owner.label)
        if call is None or call.method != "CreateSession":
            raise Violation("session", f"{owner.label} created {state.session_id} but is no CreateSession")
        req = call.request
        assert isinstance(req, svc.CreateSessionRequest)
        kb = names.parse_knowledge_base(req.session.knowledge_base)
        if call.caller.nodes is not None and kb not in call.caller.nodes:
            raise Violation("authorization", f"{call.label} created a session of {kb}, which its caller may not touch")
        expected = processor.new_session(str(call.body[0]), kb or "", req.session.config)
        if (state.session_id, state.node_id, state.config, state.version, stm_of(state), state.ttl_seconds) != (
            expected.session_id, expected.node_id, expected.config, 1, [], req.session.ttl_seconds
        ) or ttl_ms != req.session.ttl_seconds * 1000:  # fmt: skip
            raise Violation("session", f"{call.label} created {state.session_id} of {state.node_id} (TTL {ttl_ms} "
                            f"ms), not what it asked for")  # fmt: skip
        if state.session_id in self.sessions:
            raise Violation("session", f"{call.label} created {state.session_id} again")
        if call.created:
            raise Violation("session", f"{call.label} created two sessions")
        self.add_session(state, ttl_ms)
        call.created = state.session_id

    def forgot(self, owner: Owner, key: RecordKey) -> None:
        if key.kind == "create":
            self.create_records.pop((key.node_id, key.principal, key.request_id), None)

    def _remembered_create(self, key: RecordKey, winner: storage.RequestRecord, ttl_ms: int) -> None:
        """The first record of a scope wins while it lives (RequestRecords.remember)."""
        scope = (key.node_id, key.principal, key.request_id)
        sid = winner.response.decode()
        kept = self.create_records.get(scope)
        if kept is not None and self.now_ms() > kept[1]:
            kept = None  # lapsed
        if kept is None:
            kept = self.create_records[scope] = (sid, self.now_ms() + ttl_ms)
        if kept[0] != sid:
            raise self._keep(Violation("request-id", f"{scope} records {kept[0]}; the store answered {sid}"))
        self.create_recorded.setdefault(scope, set()).add((sid, winner.fingerprint))

    def _answered_create(self, call: CallRecord) -> None:
        """A CreateSession's answer: the session it made, or — a retry of its request id (its
        scope: KB, caller) — the one an execution of the same request made, while alive."""
        req = call.request
        assert isinstance(req, svc.CreateSessionRequest)
        kb = names.parse_knowledge_base(req.session.knowledge_base) or ""
        allowed = call.caller.nodes is None or kb in call.caller.nodes
        scope = (kb, call.caller.principal or "", call.request_id)
        recorded = self.create_recorded.get(scope, set()) if call.request_id else set()
        if call.status != "ok":
            code, reason = getattr(call.error, "code", ""), getattr(call.error, "reason", "")
            if (code, reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE") or (code == "PERMISSION_DENIED" and not allowed):
                return
            if (code, reason) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED") and any(
                fp != call.fingerprint for _, fp in recorded
            ):
                return
            if (code, reason) == ("NOT_FOUND", "SESSION_NOT_FOUND") and call.request_id:
                return  # the session a concurrent retry made (and recorded) was deleted or lapsed meanwhile
            raise Violation("error", f"{call.label} (CreateSession) failed unexpectedly: {call.error!r}")
        if not allowed:
            raise Violation("authorization", f"{call.label} created a session of {kb} for a caller not allowed it")
        assert isinstance(call.response, svc.Session)
        sid = names.parse_session(call.response.name) or ""
        s = self.sessions.get(sid)
        if s is None or s.kb != kb:
            raise Violation("session", f"{call.label} answered {call.response.name}, no session of {kb} made here")
        # Not its own (or its own given up for a concurrent retry's): the one its scope records.
        if (sid != call.created or s.deleted_by == call.label) and (sid, call.fingerprint) not in recorded:
            raise Violation("request-id", f"{call.label} answered {sid}, neither made by it nor recorded for its "
                            "request id")  # fmt: skip

    def deleted(self, owner: Owner, session_id: str) -> None:
        call = self.calls.get(owner.label)
        if call is not None and call.method == "CreateSession" and call.created == session_id:
            # A concurrent retry of its request id recorded its own first: this one goes.
            self.expire(session_id, by=call.label)
            return
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
        if call.method == "CreateSession":
            self._answered_create(call)
            return
        if not call.session:
            self._answered_kb(call)
            return
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
        if code == "ABORTED" and reason == "ETAG_MISMATCH" and isinstance(call.request, svc.UpdateSessionRequest):
            etag = call.request.session.etag  # stale at some version the session had while the call ran
            versions = range(1 + call.commits_at_start, 2 + len(s.commits))
            if not etag or all(etag == str(v) for v in versions):
                raise Violation("session", f"{call.label} was refused etag {etag!r}; {s.sid} was at it all along")
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
            if commit.predictions and isinstance(response, svc.ObserveSequenceResponse):
                steps = svc.ObserveSequenceResponse(
                    results=[
                        svc.ObserveResponse(predictions=r.predictions, future_potentials=r.future_potentials)
                        for r in response.results
                    ]
                )
                if steps.SerializeToString() != commit.predictions:
                    engine_steps = svc.ObserveSequenceResponse.FromString(commit.predictions)
                    raise Violation(
                        "predictions",
                        f"{call.label} ({call.method}) answered step predictions "
                        f"{[_names(r) for r in steps.results]}; the engine on {s.sid}'s state and {s.kb} at the "
                        f"version its call read {[_names(r) for r in engine_steps.results]} (or other values)",
                    )
            elif commit.predictions:
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
            if call.method == "ClearKnowledgeBase" and not call.wiped and call.wipe_scope not in self.wipes:
                raise Violation("clear", f"{call.label} answered, but {s.kb} was never wiped for it")
            for key, value in commit.expected.items():
                got = getattr(response, key)
                got = list(got) if key == "auto_learned_patterns" else got
                if key == "results":
                    assert isinstance(response, svc.ObserveSequenceResponse)
                    got = [(r.stm_length, r.time, r.unique_id, r.auto_learned_pattern) for r in response.results]
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
        """(lower, upper) frequency per pattern of a KB: from its last reset (the KB's wipe,
        the pattern's deletion, an update of its frequency: the count it starts again from)
        plus what was imported since, plus the learns of every commit not applied before that
        reset — all of them for upper, those whose outbox (its write ids) is no longer pending
        for lower."""
        base: dict[str, int] = {}
        since: dict[str, int] = {}  # pattern -> the version of its last reset (delete, update)
        cleared = 0
        imported: Counter[str] = Counter()
        for version, change in self.kb_log.get(kb, []):
            if change.kind == "clear":
                cleared = version
                base.clear()
                since.clear()
                imported.clear()
            elif change.kind == "delete" or (change.kind == "update" and change.update and change.update[0]):
                base[change.name] = change.update[0] or 0 if change.update else 0
                since[change.name] = version
                imported.pop(change.name, None)
            elif change.kind == "import":
                for w in change.writes:
                    if w.name:
                        imported[w.name] += learns(w)
        upper: Counter[str] = Counter(base)
        upper.update(imported)
        lower = Counter(upper)
        for commit in self.kb_commits.get(kb, []):
            for name, n in commit.learned.items():
                applied = commit.applied_version
                if applied is not None and applied <= since.get(name, cleared):
                    continue  # applied before the reset: gone with it
                upper[name] += n
                if commit.write_ids not in pending:
                    lower[name] += n
        return lower, upper

    def unapplied(self, kb: str, pending: set[tuple[str, ...]]) -> list[Commit]:
        """The commits on ``kb`` whose outbox is gone but no apply of the store's took their
        writes: learns lost."""
        return [c for c in self.kb_commits.get(kb, []) if c.writes and c.applied_version is None
                and c.write_ids not in pending]  # fmt: skip

    # --- the pattern store's applies and the KB at each version ---------------------------

    def applied(self, kb: str, writes: Sequence[storage.PatternWrite], applied: Applied) -> None:
        try:
            self._applied(kb, writes, applied)
        except Violation as violation:
            raise self._keep(violation) from None

    def _applied(self, kb: str, writes: Sequence[storage.PatternWrite], applied: Applied) -> None:
        new: dict[str, storage.PatternWrite] = {}
        commits: list[Commit] = []
        for w in writes:
            commit = self.write_commits.get(w.write_id)
            if commit is None:
                raise Violation("deployment", f"write {w.write_id} applied to deployment {self.deployment}'s "
                                f"{kb}: no commit of this deployment wrote it")  # fmt: skip
            if commit.kb != kb:
                raise Violation("learn", f"write {w.write_id} of {commit.kb} applied to {kb}")
            if w.write_id not in self.applied_ids:
                new.setdefault(w.write_id, w)
                commits.append(commit)
        if applied.count != len(new):
            raise Violation("learn", f"{kb} applied {applied.count} writes of a batch with {len(new)} new ones")
        if not new:
            return
        self._change(kb, applied.version, KbChange("learn", tuple(new.values())), "learn")
        self.applied_ids.update(new)
        for commit in commits:
            if commit.applied_version is None:
                commit.applied_version = applied.version

    def _change(self, kb: str, version: int, change: KbChange, kind: str) -> None:
        """A change of ``kb`` took effect at ``version``: the next one, always."""
        if version != self.kb_version(kb) + 1:
            raise Violation(kind, f"{kb} moved to version {version} after {self.kb_version(kb)} ({change.kind})")
        self.kb_log.setdefault(kb, []).append((version, change))
        model_kb = self.kb(kb)
        change.apply(model_kb, version)
        self.contents[(kb, version)] = kb_content(model_kb)

    def kb(self, kb: str) -> InMemoryKnowledgeBase:
        """The model's own KB at its latest version."""
        found = self.kbs.get(kb)
        if found is None:
            found = self.kbs[kb] = InMemoryKnowledgeBase()
        return found

    def content_at(self, kb: str, version: int) -> tuple[object, ...]:
        if version == 0:
            return kb_content(EMPTY_KB)
        return self.contents[(kb, version)]

    def kb_version(self, kb: str) -> int:
        log = self.kb_log.get(kb)
        return log[-1][0] if log else 0

    def kb_at(self, kb: str, version: int) -> InMemoryKnowledgeBase:
        """What ``kb`` held at ``version``: its changes up to it folded, each one version."""
        found = self._kb_at.get((kb, version))
        if found is None:
            found = InMemoryKnowledgeBase()
            for v, change in self.kb_log.get(kb, []):
                if v > version:
                    break
                change.apply(found, v)
            found.version = version
            self._kb_at[(kb, version)] = found
        return found

    def totals_exact(self, kb: str) -> bool:
        """D-6 (total frequency = the patterns' frequencies summed, unique patterns = their
        number) holds until a pattern is deleted or updated: README says UpdatePattern leaves
        the totals as they are, and DeletePattern does too (memory.py, mongo_admin.py;
        undocumented — a finding of the simulation's, reported, not encoded as D-6)."""
        for _, change in reversed(self.kb_log.get(kb, [])):
            if change.kind == "clear":
                return True
            if change.kind in ("delete", "update"):
                return False
        return True

    def viewed(self, owner: Owner, kb: str, version: int) -> None:
        if version > self.kb_version(kb):
            raise self._keep(Violation("cache", f"{owner.label} viewed {kb} at {version}, past its version"))
        self.views[owner.label] = (kb, version)

    # --- the other changes of a KB: wipes, imports, pattern deletes and updates ------------

    def _kb_call(self, owner: Owner, method: str, kb: str, what: str) -> CallRecord:
        """The call that made a change of ``kb``: one of ``method``, on that KB, allowed it."""
        call = self.calls.get(owner.label)
        if call is None or call.method != method:
            raise Violation("kb", f"{owner.label} {what} {kb}, but is no {method}")
        target = call.kb
        if call.session:
            s = self.sessions.get(call.session)
            if s is None:
                raise Violation("deployment", f"{call.label} {what} deployment {self.deployment}'s {kb} for "
                                f"{call.session}, no session of this deployment")  # fmt: skip
            target = s.kb
        if target != kb:
            raise Violation("kb", f"{call.label} {what} {kb}; its request names {target}")
        if call.caller.nodes is not None and kb not in call.caller.nodes:
            raise Violation("authorization", f"{call.label} {what} {kb}, which its caller may not touch")
        return call

    def cleared(self, owner: Owner, kb: str, version: int) -> None:
        try:
            self._cleared(owner, kb, version)
        except Violation as violation:
            raise self._keep(violation) from None

    def _cleared(self, owner: Owner, kb: str, version: int) -> None:
        """A wipe took effect. The API's promise (kato_service.proto): a request id makes the
        call safe to retry — "the knowledge base is wiped once". So a second wipe for one
        request id is refused unless the service may have forgotten the id as documented: a
        session's records keep its last ids (README: an older one runs as a new call), a KB's
        record lapses after KATO_MAX_TTL_SECONDS."""
        call = self._kb_call(owner, "ClearKnowledgeBase", kb, "wiped")
        if call.request_id:
            scope = call.wipe_scope
            earlier = self.wipes.get(scope, [])
            if earlier and not self._wipe_forgotten(call, scope):
                raise Violation(
                    "request-id",
                    f"{call.label} wiped {kb} again for request id {call.request_id!r}, which {earlier[0]} "
                    "used to wipe it (the API: wiped once per request id)",
                )
            self.wipes.setdefault(scope, []).append(call.label)
        if call.session:
            # kb_admin.py: a session's learns committed before its clear-all land before the
            # wipe, never after it (its outbox is applied first).
            for commit in self.sessions[call.session].commits[: call.commits_at_start]:
                if commit.writes and commit.applied_version is None:
                    raise Violation(
                        "clear",
                        f"{call.label} wiped {kb} before the learns {call.session} committed before the call "
                        f"({commit.call.label}) were applied: they land in the wiped KB",
                    )
        self._change(kb, version, KbChange("clear"), "kb")
        call.wiped.append(version)

    def _wipe_forgotten(self, call: CallRecord, scope: tuple[str, ...]) -> bool:
        if call.session:  # an execution that wiped recorded the id, and the session evicted it since
            s = self.sessions[call.session]
            recorded = any(c.call.method == "ClearKnowledgeBase" for c in s.recorded.get(call.request_id, []))
            return recorded and call.request_id not in s.records
        lapses = self.wipe_records.get(scope)
        return lapses is not None and self.now_ms() > lapses

    def remembered(self, owner: Owner, key: RecordKey, winner: storage.RequestRecord, ttl_ms: int) -> None:
        """A request record by key (RequestRecords) took effect: a KB wipe's (``kbreq``)."""
        if key.kind == "create":
            self._remembered_create(key, winner, ttl_ms)
        if key.kind == "kbreq":
            scope = ("kb", key.node_id, key.principal, key.request_id)
            self.wipe_records.setdefault(scope, self.now_ms() + ttl_ms)

    def imported(
        self, owner: Owner, kb: str, batch_id: str, writes: Sequence[storage.PatternWrite], applied: Applied
    ) -> None:
        try:
            self._imported(owner, kb, batch_id, writes, applied)
        except Violation as violation:
            raise self._keep(violation) from None

    def _imported(
        self, owner: Owner, kb: str, batch_id: str, writes: Sequence[storage.PatternWrite], applied: Applied
    ) -> None:
        """An import's batch reached the store. docs/formats.md: each message is a batch the
        server applies once per (knowledge base, caller, import_id, batch) — a retried or
        resumed import, or the same ids with other patterns, never counts twice; the ledger
        outlives a wipe. Its writes are the engine's for the batch's patterns."""
        call = self._kb_call(owner, "ImportKnowledgeBase", kb, "imported into")
        _, import_id, batches = call.body
        assert isinstance(batches, tuple) and isinstance(import_id, str)
        if len(call.batches) >= len(batches):
            raise Violation("import", f"{call.label} applied more batches than its stream holds")
        batch, patterns = batches[len(call.batches)]  # a stream stops at its first failed batch
        identity = (kb, call.caller.principal or "", import_id, batch)
        expected = [importing.pattern_write(import_pattern(p), {}, "pattern") for p in patterns]
        if [write_shape(w) for w in writes] != [write_shape(w) for w in expected]:
            raise Violation("import", f"{call.label}'s batch {batch} gave the store writes other than its patterns'")
        if self.batch_ids.setdefault(batch_id, identity) != identity:
            raise Violation("import", f"{call.label}'s batch {identity} and {self.batch_ids[batch_id]} share the "
                            f"ledger id {batch_id}: one of them is never applied")  # fmt: skip
        if self.batch_ledger.setdefault(identity, batch_id) != batch_id:
            raise Violation("import", f"{call.label}'s batch {identity} has two ledger ids: it may apply twice")
        new = identity not in self.imported_batches
        if applied.count != (len(writes) if new else 0):
            raise Violation(
                "import", f"{call.label}'s batch {identity} applied {applied.count} writes; "
                f"{'it was never applied' if new else 'it was applied before'}"
            )  # fmt: skip
        if new:
            self._change(kb, applied.version, KbChange("import", tuple(writes)), "import")
            self.imported_batches.add(identity)
        call.batches.append(new)

    def summarized(self, owner: Owner, kb: str, version: int, totals: Totals) -> None:
        """The counts an import answers with (``KbTransfer.stored``): the KB's, as of now."""
        call = self.calls.get(owner.label)
        if call is None or call.method != "ImportKnowledgeBase":
            return
        model = self.kb(kb).totals()
        if version != self.kb_version(kb) or (totals.total_unique_patterns, totals.total_pattern_frequencies) != (
            model.total_unique_patterns,
            model.total_pattern_frequencies,
        ):
            raise self._keep(Violation("import", f"{call.label} read {kb} at {version} with {totals}; the model: "
                                       f"{self.kb_version(kb)} with {model}"))  # fmt: skip
        call.summary = (version, totals)

    def pattern_deleted(self, owner: Owner, kb: str, name: str, version: int | None) -> None:
        try:
            call = self._kb_call(owner, "DeletePattern", kb, "deleted a pattern of")
            self._pattern_changed(call, kb, name, version, KbChange("delete", name=name))
        except Violation as violation:
            raise self._keep(violation) from None

    def pattern_updated(
        self,
        owner: Owner,
        kb: str,
        name: str,
        change: tuple[int | None, list[dict[str, float]] | None, dict[str, list[str]] | None],
        result: tuple[PatternRecord, int] | None,
    ) -> None:
        try:
            call = self._kb_call(owner, "UpdatePattern", kb, "updated a pattern of")
            if change != update_of(call):
                raise Violation("kb", f"{call.label} asked the store for {change}; its request says {update_of(call)}")
            self._pattern_changed(call, kb, name, result[1] if result else None, KbChange("update", name=name,
                                                                                         update=change))  # fmt: skip
            if result is not None:
                call.pattern = encoding.pattern_proto(_found(self.kb(kb).pattern(name)), kb)
        except Violation as violation:
            raise self._keep(violation) from None

    def _pattern_changed(self, call: CallRecord, kb: str, name: str, version: int | None, change: KbChange) -> None:
        """A delete or an update changes the pattern if the KB holds it (as the model says),
        else nothing (NOT_FOUND): one version either way."""
        if name != call.body[1]:
            raise Violation("kb", f"{call.label} changed pattern {name[:12]}; its request names {call.body[1]}")
        held = self.kb(kb).pattern(name) is not None
        if held != (version is not None):
            raise Violation(
                "kb", f"{call.label}: {kb} {'holds' if held else 'does not hold'} {name[:12]}, but the store "
                f"{'changed it' if version is not None else 'found none'}"
            )  # fmt: skip
        if version is not None:
            self._change(kb, version, change, "kb")
        call.changed.append(version)

    def _answered_kb(self, call: CallRecord) -> None:
        """A call on a KB (no session): its answer, or its error, against what took effect."""
        allowed = call.caller.nodes is None or call.kb in call.caller.nodes
        code, reason = getattr(call.error, "code", ""), getattr(call.error, "reason", "")
        if call.status != "ok":
            if code == "UNAVAILABLE" and reason == "STORE_UNAVAILABLE":
                return  # an injected failure
            if code == "PERMISSION_DENIED" and not allowed:
                return
            if (code, reason) == ("NOT_FOUND", "PATTERN_NOT_FOUND") and call.changed and call.changed[-1] is None:
                return
            raise Violation("error", f"{call.label} ({call.method} on {call.kb}) failed unexpectedly: {call.error!r}")
        if not allowed:
            raise Violation("authorization", f"{call.label} answered on {call.kb}, which its caller may not touch")
        response = call.response
        if call.method == "ClearKnowledgeBase":
            if not call.wiped and not (call.request_id and call.wipe_scope in self.wipes):
                raise Violation("clear", f"{call.label} answered, but {call.kb} was never wiped for it")
        elif call.method == "DeletePattern":
            if not call.changed or call.changed[-1] is None:
                raise Violation("kb", f"{call.label} answered, but deleted nothing")
        elif call.method == "UpdatePattern":
            if not call.changed or call.changed[-1] is None or response != call.pattern:
                raise Violation("kb", f"{call.label} answered {response}; the update made {call.pattern}")
        else:
            assert isinstance(response, svc.ImportKnowledgeBaseResponse)
            _, _, batches = call.body
            assert isinstance(batches, tuple)
            applied = [b for b, new in zip(batches, call.batches, strict=False) if new]
            got = (response.batches, response.applied_batches, response.patterns)
            want = (len(batches), len(applied), sum(len(p) for _, p in applied))
            if got != want or len(call.batches) != len(batches) or call.summary is None:
                raise Violation(
                    "import", f"{call.label} answered (batches, applied, patterns) {got}; it applied {want}"
                )
            version, totals = call.summary
            kb = response.knowledge_base
            if (kb.version, kb.pattern_count, kb.total_pattern_frequencies) != (
                version, totals.total_unique_patterns, totals.total_pattern_frequencies
            ):  # fmt: skip
                raise Violation("import", f"{call.label} answered {call.kb} as {kb}; it read {call.summary}")

    def _viewed_kb(self, call: CallRecord, s: SessionModel) -> KnowledgeView:
        """The KB at the version the call's view read (none read: the empty KB)."""
        viewed = self.views.get(call.label)
        if viewed is None:
            return EMPTY_KB
        if viewed[0] != s.kb:
            raise Violation("cache", f"{call.label} on {s.sid} of {s.kb} read {viewed[0]}")
        return self.kb_at(*viewed)

    def _sequence_predictions(self, call: CallRecord, s: SessionModel) -> bytes:
        """Each step's predictions an ObserveSequence (or a stream's batch) answers: the
        engine's over the steps on the model's state and the one KB version the call read."""
        req = call.request
        assert isinstance(req, svc.ObserveSequenceRequest)
        stream = call.method == "ObserveStream"
        r = processor.observe_sequence(
            s.state,
            req.observations,
            self._viewed_kb(call, s),
            unique_ids=[o.unique_id for o in req.observations],
            limits=self.limits,
            clear_stm_between=False if stream else req.clear_stm_between,
            learn_after_each=False if stream else req.learn_after_each,
            learn_after=frozenset() if stream else frozenset(req.learn_after),
        )
        out = svc.ObserveSequenceResponse()
        for step in r.steps:
            shown = out.results.add()
            encoding.add_predictions(
                step.observed.predictions, names.pattern_prefix(s.kb), shown.predictions, shown.future_potentials
            )
        return out.SerializeToString()

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


def import_pattern(pattern: tuple[tuple[tuple[str, ...], ...], int]) -> pb.Pattern:
    """An imported pattern of an action's body: (events, frequency)."""
    events, frequency = pattern
    return pb.Pattern(events=[pb.Event(symbols=list(e)) for e in events], frequency=frequency)


def update_of(call: CallRecord) -> tuple[int | None, list[dict[str, float]] | None, dict[str, list[str]] | None]:
    """What an UpdatePattern asks the store to set (AIP-134: the fields its mask names), as
    the model reads its request."""
    _, _, frequency, emotives, _, paths = call.body
    assert isinstance(paths, tuple) and isinstance(emotives, tuple) and isinstance(frequency, int)
    fields = {"frequency", "emotives", "metadata"} if paths == ("*",) else set(paths)
    request = call.request
    assert isinstance(request, svc.UpdatePatternRequest)
    return (
        frequency if "frequency" in fields else None,
        ([dict(emotives)] if emotives else []) if "emotives" in fields else None,
        {k: canonical_values(v, k) for k, v in request.pattern.metadata.items()} if "metadata" in fields else None,
    )


def _found(record: PatternRecord | None) -> PatternRecord:
    assert record is not None
    return record


def _names(response: svc.ObserveResponse | svc.GetPredictionsResponse) -> list[str]:
    return [p.pattern.rsplit("/", 1)[-1][:12] for p in response.predictions]
