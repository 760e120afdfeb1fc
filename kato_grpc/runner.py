"""The transaction runner: the one loop every session-changing call goes through.

load (the session, its outbox, the request id's record) → apply a left-over outbox → replay a
recorded request, or run the transition → compare-and-set (new state, new outbox, request
record) → apply the new outbox exactly once (``applier.py``) → drop it. A version conflict
means another call won: wait a moment (jittered) and run again. No locks. A session this
process committed last skips the load: the transition runs on its cached state and one
``commit_or_load`` commits it only if nothing the load would have shown differs — else its
answer is the load (architecture.md §3, "One round trip").

It owns, in one place each: the version bump, write identity (``request_ids``), the outbox
flush, request-id records, conflict retries and the cache of the sessions it committed. It
is typed against two Protocols — a session store and a pattern store — with a Redis/MongoDB
implementation (``stores/redis_sessions.py``, ``stores/mongo_patterns.py``) and an in-memory
twin (``stores/memory_sessions.py``, ``stores/memory.py``) that the replay tool and the fast
tests use. A transition gets what it needs as arguments: the loaded (or cached) state and the
node's KB version to predict from.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeAlias, TypeVar

import structlog
from google.protobuf.message import Message

from kato_grpc import encoding, request_ids
from kato_grpc.access import Caller
from kato_grpc.applier import OutboxApplier
from kato_grpc.errors import Aborted, FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.session_cache import SessionCache
from kato_grpc.stores.protocols import CasResult, Loaded, PatternStore, SessionStore
from kato_grpc.stores.snapshotter import KbWritten
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry

R = TypeVar("R", bound=Message)
# A transition: (the session's state, the node's KB version to predict from) -> (new state,
# response). The version is at least every one published before the call began (0: none is);
# None: the runner does not know it yet, the transition reads it if it needs it. A transition
# never changes the state it is given (§2): the runner may hand it a cached one.
# The response may instead be a function of the committed state, for responses that show its
# version (an etag): the runner bumps the version, then calls it.
Respond: TypeAlias = R | Callable[[storage.SessionState], R]
Transition = Callable[[storage.SessionState, int | None], Awaitable[tuple[storage.SessionState, Respond[R]]]]
MAX_REMEMBERED_NODES = 100_000
log = structlog.get_logger("kato.runner")


@dataclass(frozen=True, slots=True)
class Policy:
    """How the runner retries and what it refuses."""

    cas_retries: int = 32
    backoff_max_seconds: float = 0.05
    default_ttl_seconds: int = 3600
    max_session_bytes: int = 4 * 1024 * 1024
    # Answer a call that learned once its outbox is committed in Redis, and apply it to the
    # pattern store behind the answer (KATO_LEARN_ACK=committed): the learn is durable and
    # exactly-once either way (the outbox, write ids, the relay); the session's own next call
    # applies it first if it is still pending (read-your-writes); other sessions see it once
    # applied. A refusal then becomes a dead letter the caller is not told of.
    ack_after_commit: bool = False
    # The sessions this process last committed, kept so that their next call here commits in
    # one round trip (architecture.md §3): at most this many serialized bytes and sessions.
    session_cache_bytes: int = 64 * 1024 * 1024
    session_cache_sessions: int = 10_000


def session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")


class TransactionRunner:
    def __init__(
        self,
        sessions: SessionStore,
        patterns: PatternStore,
        policy: Policy | None = None,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
        written: KbWritten | None = None,
    ) -> None:
        """``written``: see ``OutboxApplier``."""
        self.sessions = sessions
        self.patterns = patterns
        self.policy = policy or Policy()
        self.telemetry = telemetry
        self._nodes: dict[str, str] = {}  # session id -> node id (a session's node never changes)
        self._published: dict[str, int] = {}  # KB -> the highest version this process saw published
        # What this process last committed (or loaded to commit on), by session: a call on one
        # of them skips its load (architecture.md §3, "One round trip").
        self.cache = SessionCache(self.policy.session_cache_bytes, self.policy.session_cache_sessions)
        self.applier = OutboxApplier(sessions, patterns, telemetry, written)

    async def load(self, session_id: str, caller: Caller, request_id: str = "") -> Loaded:
        """A session (its TTL slid), or NOT_FOUND; the caller must be allowed its node.

        The ids were checked once, where the request came in (the service's request checks)."""
        # Once a session's node is known, its KB version rides along with the load.
        loaded = await self.sessions.load(session_id, request_id, self._nodes.get(session_id))
        if loaded is None:
            self.forget(session_id)
            raise session_not_found(session_id)
        caller.authorize(loaded.state.node_id)
        if session_id not in self._nodes:
            if len(self._nodes) >= MAX_REMEMBERED_NODES:
                self._nodes.pop(next(iter(self._nodes)))
            self._nodes[session_id] = loaded.state.node_id
        self._saw(loaded.state.node_id, loaded.kb_version)
        return loaded

    async def read(self, session_id: str, caller: Caller) -> Loaded:
        """A session for reading: its outbox applied, so its learns are visible in the KB."""
        loaded = await self.load(session_id, caller)
        if loaded.outbox is not None:
            await self.applier.apply(loaded.outbox, loaded.outbox_version)
            await self.sessions.drop_outbox(session_id, loaded.outbox_version)
            loaded = replace(loaded, kb_version=self._after_apply(loaded.outbox.node_id, loaded.kb_version))
        return loaded

    def remember(self, state: storage.SessionState) -> None:
        """A session this process created (CreateSession's commit, outside any transaction):
        its next call can skip the load too."""
        self.cache.put(state, state.version, state.ByteSize())

    def forget(self, session_id: str) -> None:
        """A session found gone (or deleted here): nothing of it is kept."""
        self._nodes.pop(session_id, None)
        self.cache.forget(session_id)

    async def transact(
        self,
        session_id: str,
        call: request_ids.Call[R],
        transition: Transition[R],
        *,
        caller: Caller,
    ) -> R:
        method, request_id, fp = call.method, call.request_id, call.fingerprint
        loaded: Loaded | None = None
        shared = False  # see SessionCache: another process changed the session lately
        for attempt in range(self.policy.cas_retries):
            if attempt > 1:  # jittered backoff after an immediate retry: contention spreads out
                await asyncio.sleep(random.uniform(0, min(self.policy.backoff_max_seconds, 0.0005 * 2**attempt)))
            before = self.cache.get(session_id)
            if attempt == 0:  # a session this process knows: commit without loading it first
                fast = await self._commit_cached(session_id, call, transition, caller)
                if isinstance(fast, _Answered):
                    return fast.response
                loaded = fast  # the session as the store holds it, when the cached copy was stale
            if loaded is not None:
                # The copy was stale: shared when another process committed the session since.
                shared = before is not None and before.version != loaded.version
            else:
                loaded = await self.load(session_id, caller, request_id)
                # Shared until a load finds the version this process left: nobody else's since.
                shared = before is not None and before.shared and before.version != loaded.version
            self.cache.put(loaded.state, loaded.version, loaded.state.ByteSize(), shared=shared)
            kb_version = loaded.kb_version
            if loaded.outbox is not None:  # before anything: a replay must not skip it
                await self.applier.apply(loaded.outbox, loaded.outbox_version)
                kb_version = self._after_apply(loaded.outbox.node_id, kb_version)
            if loaded.record is not None:
                request_ids.check_replay(loaded.record, method, fp)
                if loaded.outbox is not None:
                    await self.sessions.drop_outbox(session_id, loaded.outbox_version)
                return call.response.FromString(loaded.record.response)
            commit = await self._prepare(session_id, call, transition, loaded.state, loaded.version, kb_version)
            result = await self.sessions.compare_and_set(
                commit.state,
                loaded.version,
                self.ttl_ms(commit.state),
                outbox=commit.outbox,
                clear_outbox=loaded.outbox is not None,
                request_id=request_id,
                record=commit.record,
            )
            loaded = None
            if result == CasResult.GONE:
                self.forget(session_id)
                raise session_not_found(session_id)
            if result == CasResult.CONFLICT:
                self.telemetry.cas_conflict()
                continue
            return await self._committed(session_id, commit, shared=shared)
        self.telemetry.cas_exhausted()
        raise Aborted(
            f"session {session_id} changed concurrently {self.policy.cas_retries} times; retry",
            reason="CAS_RETRIES_EXHAUSTED",
        )

    async def _commit_cached(
        self, session_id: str, call: request_ids.Call[R], transition: Transition[R], caller: Caller
    ) -> _Answered[R] | Loaded | None:
        """The call in one round trip (architecture.md §3, "One round trip"): the transition on
        the state this process last committed, and one ``commit_or_load`` that checks, in the
        same atomic step, what the skipped load would have let ``transact`` check. Returns the
        answer; or the session as the store holds it (the cached copy was stale: ``transact``
        goes on as after a load, with no second round trip); or None: load as usual."""
        cached = self.cache.get(session_id)
        if cached is None or cached.shared:
            self.telemetry.session_cache("miss")
            return None
        node = cached.state.node_id
        try:
            caller.authorize(node)  # a session's node never changes: the cached one is its node
        except PermissionDenied:
            self.telemetry.session_cache("miss")
            return None  # the load path answers, as it answers anyone (NOT_FOUND if it is gone)
        # The transition predicts from at least every version of the node's KB published
        # before this call began (read-your-writes across processes): the highest this process
        # saw, and — checked by the store with the commit — none newer published since. A
        # store that cannot check it in the commit (a Redis Cluster: another slot) has it read
        # now, during the call, instead.
        kb_version = max(self._published.get(node, 0), self.applier.applied_version(node) or 0)
        checks = self.sessions.checks_kb_version
        if not checks:
            published = await self.sessions.kb_version(node) or 0
            self._saw(node, published)
            kb_version = max(kb_version, published)
        try:
            commit = await self._prepare(session_id, call, transition, cached.state, cached.version, kb_version)
        except Exception:
            # Only a state the store confirms may answer with an error (an etag that does not
            # match, a size limit): the cached one may be stale, so the load decides.
            self.telemetry.session_cache("miss")
            return None
        result = await self.sessions.commit_or_load(
            commit.state,
            cached.version,
            self.ttl_ms(commit.state),
            outbox=commit.outbox,
            request_id=call.request_id,
            record=commit.record,
            kb_id=node if checks else None,
            kb_version=kb_version,
        )
        if isinstance(result, Loaded):
            self.telemetry.session_cache("stale")
            caller.authorize(result.state.node_id)
            if not checks:  # what this call read of the KB's version is as fresh as a load's
                result = replace(result, kb_version=kb_version)
            self._saw(node, result.kb_version)
            return result
        if result == CasResult.GONE:
            self.telemetry.session_cache("stale")
            self.forget(session_id)
            raise session_not_found(session_id)
        self.telemetry.session_cache("hit")
        return _Answered(await self._committed(session_id, commit))

    async def _prepare(
        self,
        session_id: str,
        call: request_ids.Call[R],
        transition: Transition[R],
        state: storage.SessionState,
        version: int,
        kb_version: int | None,
    ) -> _Commit[R]:
        """Run the transition on ``state`` (stored at ``version``) and make what its commit
        writes: the state at the next version, the outbox of its learns with their ids, the
        request's record."""
        new_state, respond = await transition(state, kb_version)
        new_state.version = version + 1
        response = respond(new_state) if callable(respond) else respond
        size = self._check_size(state, new_state)
        outbox = None
        if new_state.pending_writes:
            outbox = storage.Outbox(session_id=session_id, node_id=new_state.node_id, writes=new_state.pending_writes)
            new_state.ClearField("pending_writes")
            request_ids.identify_writes(list(outbox.writes), session_id, call.request_id, call.fingerprint, version)
        record = request_ids.record(call.method, call.fingerprint, response) if call.request_id else None
        return _Commit(new_state, response, outbox, record, size)

    async def _committed(self, session_id: str, commit: _Commit[R], *, shared: bool = False) -> R:
        """After the commit: the state cached, its outbox applied exactly once (or behind the
        answer), the answer."""
        version = commit.state.version
        self.cache.put(commit.state, version, commit.size, shared=shared)
        if commit.outbox is not None:
            if self.policy.ack_after_commit:
                self.applier.apply_behind(commit.outbox, version)
                return commit.response
            refused = await self.applier.apply(commit.outbox, version)
            await self.sessions.drop_outbox(session_id, version)
            if refused:
                raise _refused(refused)
        return commit.response

    def _after_apply(self, kb_id: str, version: int | None) -> int | None:
        """The KB version to predict from after applying a loaded outbox: the version published
        when the load read it may predate this apply (a learn answered at commit), so at least
        the version the apply made (read-your-writes, for reads as for changes)."""
        applied = self.applier.applied_version(kb_id)
        if applied is not None and (version is None or applied > version):
            return applied
        return version

    def _saw(self, kb_id: str, version: int | None) -> None:
        """A version of ``kb_id`` read as published (versions only move forward)."""
        if version is not None and version > self._published.get(kb_id, 0):
            if kb_id not in self._published and len(self._published) >= MAX_REMEMBERED_NODES:
                self._published.pop(next(iter(self._published)))
            self._published[kb_id] = version

    def ttl_ms(self, state: storage.SessionState) -> int:
        return int((state.ttl_seconds or self.policy.default_ttl_seconds) * 1000)

    def _check_size(self, old: storage.SessionState, new: storage.SessionState) -> int:
        """A session may not grow past the byte limit (shrinking is always allowed). Its copy
        of the last predictions never makes it: they are what the KB made of the STM, not
        what the client sent, so the lowest ranked are left out of the copy until the session
        fits (GetCognitionData shows what is kept; the call's own answer has them all)."""
        pending = sum(w.ByteSize() for w in new.pending_writes)  # stored apart (the outbox)
        size = new.ByteSize() - pending
        limit = self.policy.max_session_bytes
        if size > limit:
            encoding.cut_predictions(new, limit + pending)
            size = new.ByteSize() - pending
        if size > limit and size > old.ByteSize():
            raise ResourceExhausted(
                f"the session would hold {size:,} bytes, over the limit of {limit:,} (KATO_MAX_SESSION_BYTES): "
                "learn or clear its short-term memory first",
                reason="SESSION_TOO_LARGE",
                metadata={"bytes": str(size), "limit": str(limit)},
            )
        return size


@dataclass(frozen=True, slots=True)
class _Commit(Generic[R]):
    """What one execution of a call writes, and answers once it is committed."""

    state: storage.SessionState  # at the new version, its learns moved to ``outbox``
    response: R
    outbox: storage.Outbox | None
    record: storage.RequestRecord | None  # with a request id: what a retry gets back
    size: int  # the state's serialized bytes


@dataclass(frozen=True, slots=True)
class _Answered(Generic[R]):
    response: R


def _refused(writes: list[storage.PatternWrite]) -> FailedPrecondition:
    names = ", ".join("PTRN|" + w.name for w in writes if w.name) or "vectors"
    return FailedPrecondition(
        f"the call was committed, but the knowledge base refused to store {names}; "
        "it is kept as a dead letter for operators and the session stays usable",
        reason="PATTERN_REJECTED",
        metadata={"write_ids": ",".join(w.write_id for w in writes)},
    )
