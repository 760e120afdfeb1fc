"""The transaction runner: the one loop every session-changing call goes through.

load (the session, its outbox, the request id's record) → apply a left-over outbox → replay a
recorded request, or run the transition → compare-and-set (new state, new outbox, request
record) → apply the new outbox exactly once → drop it. A version conflict means another call
won: wait a moment (jittered) and run again. No locks.

It owns, in one place each: the version bump, write identity (``request_ids``), the outbox
flush, request-id records and conflict retries. It is typed against two Protocols — a session
store and a pattern store — with a Redis/MongoDB implementation (``stores/redis_sessions.py``,
``stores/mongo_patterns.py``) and an in-memory twin (``stores/memory.py``) that the replay tool
and the fast tests use. A transition gets what it needs as arguments: the loaded state and the
node's published KB version.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeAlias, TypeVar

import structlog
from google.protobuf.message import Message

from kato_grpc import request_ids
from kato_grpc.access import Caller
from kato_grpc.errors import Aborted, FailedPrecondition, NotFound, ResourceExhausted
from kato_grpc.events import NO_EVENTS, Events
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import CasResult, Loaded, PatternStore, SessionStore

R = TypeVar("R", bound=Message)
# A transition: (loaded state, the node's published KB version or None) -> (new state, response).
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


def session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} not found or expired", reason="SESSION_NOT_FOUND")


def _no_check(*_: str) -> None:
    return None


class TransactionRunner:
    def __init__(
        self,
        sessions: SessionStore,
        patterns: PatternStore,
        policy: Policy | None = None,
        *,
        check_ids: Callable[[str, str], None] = _no_check,
        events: Events = NO_EVENTS,
    ) -> None:
        self.sessions = sessions
        self.patterns = patterns
        self.policy = policy or Policy()
        self._check_ids = check_ids
        self.events = events
        self._nodes: dict[str, str] = {}  # session id -> node id (a session's node never changes)
        self._applying: set[asyncio.Future[list[storage.PatternWrite]]] = set()
        # Applies in flight by (session, outbox version): a call that finds its session's
        # outbox pending joins the apply already running instead of racing it.
        self._by_outbox: dict[tuple[str, int], asyncio.Future[list[storage.PatternWrite]]] = {}
        self._behind: set[asyncio.Task[None]] = set()  # applies after an answer (held: tasks are weak)
        self._applied_versions: dict[str, int] = {}  # node id -> the KB version its last apply here made
        self._apply_nodes: dict[asyncio.Future[list[storage.PatternWrite]], str] = {}  # in flight -> its KB
        self.pending_writes = 0  # writes of the applies in flight (a metric reads it)

    async def load(self, session_id: str, caller: Caller, request_id: str = "") -> Loaded:
        """A session (its TTL slid), or NOT_FOUND; the caller must be allowed its node."""
        self._check_ids(session_id, request_id)
        # Once a session's node is known, its KB version rides along with the load.
        loaded = await self.sessions.load(session_id, request_id, self._nodes.get(session_id))
        if loaded is None:
            self._nodes.pop(session_id, None)
            raise session_not_found(session_id)
        caller.authorize(loaded.state.node_id)
        if session_id not in self._nodes:
            if len(self._nodes) >= MAX_REMEMBERED_NODES:
                self._nodes.pop(next(iter(self._nodes)))
            self._nodes[session_id] = loaded.state.node_id
        return loaded

    async def read(self, session_id: str, caller: Caller) -> Loaded:
        """A session for reading: its outbox applied, so its learns are visible in the KB."""
        loaded = await self.load(session_id, caller)
        if loaded.outbox is not None:
            await self.apply(loaded.outbox, loaded.outbox_version)
            await self.sessions.drop_outbox(session_id, loaded.outbox_version)
        return loaded

    async def transact(
        self,
        session_id: str,
        method: str,
        request: Message,
        request_id: str,
        transition: Transition[R],
        kind: type[R],
        *,
        caller: Caller,
    ) -> R:
        fp = request_ids.fingerprint(method, request) if request_id else b""
        for attempt in range(self.policy.cas_retries):
            if attempt > 1:  # jittered backoff after an immediate retry: contention spreads out
                await asyncio.sleep(random.uniform(0, min(self.policy.backoff_max_seconds, 0.0005 * 2**attempt)))
            loaded = await self.load(session_id, caller, request_id)
            kb_version = loaded.kb_version
            if loaded.outbox is not None:  # before anything: a replay must not skip it
                await self.apply(loaded.outbox, loaded.outbox_version)
                # The version published when the load read it may predate this apply (a learn
                # answered at commit): predict from at least the version the apply made.
                applied = self._applied_versions.get(loaded.outbox.node_id)
                if applied is not None and (kb_version is None or applied > kb_version):
                    kb_version = applied
            if loaded.record is not None:
                request_ids.check_replay(loaded.record, method, fp)
                if loaded.outbox is not None:
                    await self.sessions.drop_outbox(session_id, loaded.outbox_version)
                return kind.FromString(loaded.record.response)
            new_state, respond = await transition(loaded.state, kb_version)
            new_state.version = loaded.version + 1
            response = respond(new_state) if callable(respond) else respond
            self._check_size(loaded.state, new_state)
            outbox = None
            if new_state.pending_writes:
                outbox = storage.Outbox(
                    session_id=session_id, node_id=new_state.node_id, writes=new_state.pending_writes
                )
                new_state.ClearField("pending_writes")
                request_ids.identify_writes(list(outbox.writes), session_id, request_id, fp, loaded.version)
            result = await self.sessions.compare_and_set(
                new_state,
                loaded.version,
                self.ttl_ms(new_state),
                outbox=outbox,
                clear_outbox=loaded.outbox is not None,
                request_id=request_id,
                record=request_ids.record(method, fp, response) if request_id else None,
            )
            if result == CasResult.GONE:
                raise session_not_found(session_id)
            if result == CasResult.CONFLICT:
                self.events.cas_conflict()
                continue
            if outbox is not None:
                if self.policy.ack_after_commit:
                    self._apply_behind(outbox, new_state.version)
                    return response
                refused = await self.apply(outbox, new_state.version)
                await self.sessions.drop_outbox(session_id, new_state.version)
                if refused:
                    raise _refused(refused)
            return response
        self.events.cas_exhausted()
        raise Aborted(
            f"session {session_id} changed concurrently {self.policy.cas_retries} times; retry",
            reason="CAS_RETRIES_EXHAUSTED",
        )

    def ttl_ms(self, state: storage.SessionState) -> int:
        return int((state.ttl_seconds or self.policy.default_ttl_seconds) * 1000)

    def _check_size(self, old: storage.SessionState, new: storage.SessionState) -> None:
        """A session may not grow past the byte limit (shrinking is always allowed)."""
        size = new.ByteSize() - sum(w.ByteSize() for w in new.pending_writes)
        limit = self.policy.max_session_bytes
        if size > limit and size > old.ByteSize():
            raise ResourceExhausted(
                f"the session would hold {size:,} bytes, over the limit of {limit:,} (KATO_MAX_SESSION_BYTES): "
                "learn or clear its short-term memory first",
                reason="SESSION_TOO_LARGE",
                metadata={"bytes": str(size), "limit": str(limit)},
            )

    def _apply_behind(self, outbox: storage.Outbox, version: int) -> None:
        async def run() -> None:
            try:
                await self.apply(outbox, version)
                await self.sessions.drop_outbox(outbox.session_id, version)
            except Exception as exc:  # the outbox stays in Redis: the relay applies it later
                log.warning("applying a learn behind its answer failed; the relay retries", error=repr(exc)[:300])

        task = asyncio.ensure_future(run())
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def apply(self, outbox: storage.Outbox, version: int | None = None) -> list[storage.PatternWrite]:
        """Apply an outbox's writes exactly once and publish the KB's new version. Writes that
        the pattern store refuses for good are kept as dead letters and returned (the rest
        still land).

        The store work is shielded from the caller's cancellation: a deadline that passes
        mid-transaction answers the client, but the transaction goes on to its commit. Cut
        off instead, it would stay open in MongoDB, holding its ledger entry, until the server
        reaps it (60 s) — and every other attempt to apply the same writes would wait for that.
        """
        key = (outbox.session_id, version) if version is not None else None
        running = self._by_outbox.get(key) if key is not None else None
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._apply_now(outbox))
        self._applying.add(task)
        self._apply_nodes[task] = outbox.node_id
        self.pending_writes += len(outbox.writes)
        task.add_done_callback(partial(self._applied, len(outbox.writes), key))
        task.add_done_callback(_settled)
        if key is not None:
            self._by_outbox[key] = task
        return await asyncio.shield(task)

    def _applied(
        self, writes: int, key: tuple[str, int] | None, task: asyncio.Future[list[storage.PatternWrite]]
    ) -> None:
        self._applying.discard(task)
        self._apply_nodes.pop(task, None)
        self.pending_writes -= writes
        if key is not None and self._by_outbox.get(key) is task:
            del self._by_outbox[key]

    async def settle(self, node_id: str) -> bool:
        """Wait for this process's applies in flight to the KB ``node_id``; whether there were any."""
        pending = [task for task, node in self._apply_nodes.items() if node == node_id]
        if pending:
            await asyncio.wait(pending)
        return bool(pending)

    def _note_version(self, node_id: str, version: int) -> None:
        if version > self._applied_versions.get(node_id, -1):
            if node_id not in self._applied_versions and len(self._applied_versions) >= MAX_REMEMBERED_NODES:
                self._applied_versions.pop(next(iter(self._applied_versions)))
            self._applied_versions[node_id] = version

    async def drain_applies(self, timeout: float) -> None:
        """Let applies that outlived their calls finish (shutdown), for at most ``timeout``."""
        pending = self._applying | self._behind
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _apply_now(self, outbox: storage.Outbox) -> list[storage.PatternWrite]:
        writes = list(outbox.writes)
        try:
            applied = await self.patterns.apply_many(outbox.node_id, writes)
            await self.sessions.publish_kb_version(outbox.node_id, applied.version)
            self._note_version(outbox.node_id, applied.version)
            self.events.outbox_applied(len(writes), 0)
            return []
        except Exception as exc:
            if not self.patterns.is_permanent(exc):
                raise
        refused: list[storage.PatternWrite] = []
        for write in writes:  # one by one: find the refused ones, land the others
            try:
                applied = await self.patterns.apply_many(outbox.node_id, [write])
                await self.sessions.publish_kb_version(outbox.node_id, applied.version)
                self._note_version(outbox.node_id, applied.version)
            except Exception as exc:
                if not self.patterns.is_permanent(exc):
                    raise
                await self.patterns.dead_letter(outbox.node_id, write, exc)
                log.warning(
                    "the pattern store refused a write; kept as a dead letter",
                    write_id=write.write_id,
                    node_id=outbox.node_id,
                    pattern=write.name,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                refused.append(write)
        self.events.outbox_applied(len(writes), len(refused))
        return refused


def _settled(task: asyncio.Future[list[storage.PatternWrite]]) -> None:
    """Mark an apply's error as seen: its caller got it, or — the call having ended — the
    outbox is still there and the relay retries it."""
    if not task.cancelled():
        task.exception()


def _refused(writes: list[storage.PatternWrite]) -> FailedPrecondition:
    names = ", ".join("PTRN|" + w.name for w in writes if w.name) or "vectors"
    return FailedPrecondition(
        f"the call was committed, but the knowledge base refused to store {names}; "
        "it is kept as a dead letter for operators and the session stays usable",
        reason="PATTERN_REJECTED",
        metadata={"write_ids": ",".join(w.write_id for w in writes)},
    )
