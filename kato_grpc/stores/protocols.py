"""The seams between the transaction runner and its stores (``kato_grpc/runner.py``).

Each Protocol has a real implementation (Redis: ``redis_sessions.py``; MongoDB:
``mongo_patterns.py``) and an in-memory twin (``memory_sessions.py``; ``memory.py``) for the
replay tool and fast tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kato_grpc.internal.v1 import session_pb2 as storage


@dataclass(frozen=True, slots=True)
class Loaded:
    state: storage.SessionState  # without pending writes: those are ``outbox``
    version: int
    record: storage.RequestRecord | None  # what this request_id did before, if anything
    outbox: storage.Outbox | None  # writes committed but maybe not applied yet
    outbox_version: int = 0
    kb_version: int | None = None  # the node's published KB version, when asked for


class CasResult:
    OK = 1
    CONFLICT = 0
    GONE = -1


@dataclass(frozen=True, slots=True)
class Applied:
    """How many writes of a batch this call applied, and the KB version afterwards."""

    count: int
    version: int


class SessionStore(Protocol):
    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None: ...

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
    ) -> int: ...

    async def drop_outbox(self, session_id: str, version: int) -> bool: ...

    async def publish_kb_version(self, kb_id: str, version: int) -> None: ...


# --- The session store's other faces ------------------------------------------------------
# What the server's modules call on the session store besides the runner's SessionStore, one
# concern per Protocol (architecture.md §4). ``redis_sessions.py`` and its twin
# ``memory_sessions.py`` implement every one of them (``SessionBackend``), and one contract
# suite (tests/contract/test_session_stores.py) holds both to the same behaviour; only the
# composition root (server/kato_server/app.py) names the concrete classes.


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """How many request records a session keeps (the oldest go first)."""

    count: int = 1000
    bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecordKey:
    """Names the request record of a call that has no session (CreateSession, a node's
    ClearKnowledgeBase): ``kind`` says which call, scoped by node and caller so that nobody
    else's request id can name it. The store alone decides where it keeps it."""

    kind: str
    node_id: str
    principal: str
    request_id: str


class SessionDeletion(Protocol):
    async def delete(self, session_id: str) -> bool:
        """Delete a session and its request records (True if it was there); its outbox stays
        until applied."""
        ...


class RequestRecords(Protocol):
    """Records of session-less calls, kept for ``ttl_ms`` so a retry gets the first answer."""

    async def remember(self, key: RecordKey, record: storage.RequestRecord, ttl_ms: int) -> storage.RequestRecord:
        """Record ``record`` unless a record is there already; returns the one that won."""
        ...

    async def recorded(self, key: RecordKey) -> storage.RequestRecord | None: ...

    async def forget(self, key: RecordKey) -> None: ...


class KbVersionBoard(Protocol):
    """The version each KB's writers last published: what caches and watchers poll."""

    async def kb_version(self, kb_id: str) -> int | None:
        """The highest version published for ``kb_id``; None when none is."""
        ...

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        """Raise the published version to ``version`` (a lower one changes nothing)."""
        ...


class OutboxQueue(Protocol):
    """The outboxes that may still wait to be applied (the relay's work,
    server/kato_server/relay.py). A commit with writes marks its session first; a mark has
    the store's own time as its score."""

    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        """(session id, mark score) of at most ``limit`` marks older than ``older_than_ms``,
        oldest first (ties by session id)."""
        ...

    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        """The session's outbox and the session version that wrote it; None when none is left."""
        ...

    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        """After the outbox seen at ``version`` (None: none was) was applied: drop it unless a
        newer commit replaced it, and the mark unless it was marked again since ``score``."""
        ...

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        """Remove the outbox written at ``version`` (applied); a newer one stays."""
        ...


class NamespaceClaim(Protocol):
    async def claim_namespace(self, deployment: str) -> str:
        """Bind the store's namespace to ``deployment`` unless it is bound; returns the
        deployment it is bound to (the first claim wins, for good)."""
        ...


class StoreConnection(Protocol):
    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class SessionBackend(
    SessionStore,
    SessionDeletion,
    RequestRecords,
    KbVersionBoard,
    OutboxQueue,
    NamespaceClaim,
    StoreConnection,
    Protocol,
):
    """Everything a session store implements: what the composition root builds and the
    contract suite tests. The other modules take the narrow faces above."""


# --- The pattern store ----------------------------------------------------------------------


class PatternStore(Protocol):
    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied: ...

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None: ...

    def is_permanent(self, error: BaseException) -> bool:
        """True when the store refuses a write for good (retrying cannot help)."""
        ...
