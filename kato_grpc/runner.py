"""The transaction runner: the one loop every session-changing call goes through.

load (the session, its outbox, the request id's record) → apply a left-over outbox → replay a
recorded request, or run the transition → compare-and-set (new state, new outbox, request
record) → apply the new outbox exactly once (``applier.py``) → drop it. A version conflict
means another call won: wait a moment (jittered) and run again. No locks.

It owns, in one place each: the version bump, write identity (``request_ids``), the outbox
flush, request-id records and conflict retries. It is typed against two Protocols — a session
store and a pattern store — with a Redis/MongoDB implementation (``stores/redis_sessions.py``,
``stores/mongo_patterns.py``) and an in-memory twin (``stores/memory_sessions.py``,
``stores/memory.py``) that the replay tool
and the fast tests use. A transition gets what it needs as arguments: the loaded state and the
node's published KB version.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import structlog
from google.protobuf.message import Message

from kato_grpc import request_ids
from kato_grpc.access import Caller
from kato_grpc.applier import OutboxApplier
from kato_grpc.errors import Aborted, FailedPrecondition, NotFound, ResourceExhausted
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import CasResult, Loaded, PatternStore, SessionStore
from kato_grpc.stores.snapshotter import KbWritten
from kato_grpc.telemetry import NO_TELEMETRY, Telemetry

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
        self.applier = OutboxApplier(sessions, patterns, telemetry, written)

    async def load(self, session_id: str, caller: Caller, request_id: str = "") -> Loaded:
        """A session (its TTL slid), or NOT_FOUND; the caller must be allowed its node.

        The ids were checked once, where the request came in (the service's request checks)."""
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
            await self.applier.apply(loaded.outbox, loaded.outbox_version)
            await self.sessions.drop_outbox(session_id, loaded.outbox_version)
        return loaded

    async def transact(
        self,
        session_id: str,
        call: request_ids.Call[R],
        transition: Transition[R],
        *,
        caller: Caller,
    ) -> R:
        method, request_id, fp = call.method, call.request_id, call.fingerprint
        for attempt in range(self.policy.cas_retries):
            if attempt > 1:  # jittered backoff after an immediate retry: contention spreads out
                await asyncio.sleep(random.uniform(0, min(self.policy.backoff_max_seconds, 0.0005 * 2**attempt)))
            loaded = await self.load(session_id, caller, request_id)
            kb_version = loaded.kb_version
            if loaded.outbox is not None:  # before anything: a replay must not skip it
                await self.applier.apply(loaded.outbox, loaded.outbox_version)
                # The version published when the load read it may predate this apply (a learn
                # answered at commit): predict from at least the version the apply made.
                applied = self.applier.applied_version(loaded.outbox.node_id)
                if applied is not None and (kb_version is None or applied > kb_version):
                    kb_version = applied
            if loaded.record is not None:
                request_ids.check_replay(loaded.record, method, fp)
                if loaded.outbox is not None:
                    await self.sessions.drop_outbox(session_id, loaded.outbox_version)
                return call.response.FromString(loaded.record.response)
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
                self.telemetry.cas_conflict()
                continue
            if outbox is not None:
                if self.policy.ack_after_commit:
                    self.applier.apply_behind(outbox, new_state.version)
                    return response
                refused = await self.applier.apply(outbox, new_state.version)
                await self.sessions.drop_outbox(session_id, new_state.version)
                if refused:
                    raise _refused(refused)
            return response
        self.telemetry.cas_exhausted()
        raise Aborted(
            f"session {session_id} changed concurrently {self.policy.cas_retries} times; retry",
            reason="CAS_RETRIES_EXHAUSTED",
        )

    def ttl_ms(self, state: storage.SessionState) -> int:
        return int((state.ttl_seconds or self.policy.default_ttl_seconds) * 1000)

    def _check_size(self, old: storage.SessionState, new: storage.SessionState) -> None:
        """A session may not grow past the byte limit (shrinking is always allowed). Its copy
        of the last predictions never makes it: they are what the KB made of the STM, not
        what the client sent, so the lowest ranked are left out of the copy until the session
        fits (GetCognitionData shows what is kept; the call's own answer has them all)."""
        size = new.ByteSize() - sum(w.ByteSize() for w in new.pending_writes)
        limit = self.policy.max_session_bytes
        if size > limit and new.last_predictions:
            kept = len(new.last_predictions)
            while kept and size > limit:
                kept -= 1
                size -= _field_bytes(new.last_predictions[kept])
            del new.last_predictions[kept:]
            size = new.ByteSize() - sum(w.ByteSize() for w in new.pending_writes)
        if size > limit and size > old.ByteSize():
            raise ResourceExhausted(
                f"the session would hold {size:,} bytes, over the limit of {limit:,} (KATO_MAX_SESSION_BYTES): "
                "learn or clear its short-term memory first",
                reason="SESSION_TOO_LARGE",
                metadata={"bytes": str(size), "limit": str(limit)},
            )


def _field_bytes(message: Message) -> int:
    """What one element of a repeated message field adds to its parent: tag, length, body."""
    body = message.ByteSize()
    return 1 + _varint_bytes(body) + body


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _refused(writes: list[storage.PatternWrite]) -> FailedPrecondition:
    names = ", ".join("PTRN|" + w.name for w in writes if w.name) or "vectors"
    return FailedPrecondition(
        f"the call was committed, but the knowledge base refused to store {names}; "
        "it is kept as a dead letter for operators and the session stays usable",
        reason="PATTERN_REJECTED",
        metadata={"write_ids": ",".join(w.write_id for w in writes)},
    )
