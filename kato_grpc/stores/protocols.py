"""The seams between the service and its stores (architecture.md §4).

Each Protocol has a real implementation (Redis: ``redis_sessions.py``; MongoDB: the
``mongo_*.py`` classes that ``mongo_store.py`` builds from one client) and an in-memory twin
(``memory_sessions.py``, ``memory.py``) for the replay tool and fast tests; the contract suite
(``tests/contract/``) runs the same tests against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.index import SymbolChange


@dataclass(frozen=True, slots=True)
class Loaded:
    state: storage.SessionState  # without pending writes: those are ``outbox``
    version: int
    record: storage.RequestRecord | None  # what this request_id did before, if anything
    outbox: storage.Outbox | None  # writes committed but maybe not applied yet
    outbox_version: int = 0
    # The node's published KB version when asked for (0: none is published); None: not asked.
    kb_version: int | None = None


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
        """Commit ``state`` as ``compare_and_set`` does, if the session is as a load that the
        caller skipped would have shown it (architecture.md §3, "One round trip"): it exists
        (not deleted, not expired), its version is ``expected_version``, no outbox is pending,
        nothing is recorded for ``request_id`` and — with ``kb_id`` — the KB's published
        version is at most ``kb_version`` (none published counts as 0). Returns
        ``CasResult.OK``; ``CasResult.GONE`` when there is no session; otherwise, committing
        nothing, what ``load(session_id, request_id, kb_id)`` returns (the TTL slid as a load
        slides it) — one atomic step, one round trip either way. Only a store whose
        ``checks_kb_version`` is true takes a ``kb_id``."""
        ...

    @property
    def checks_kb_version(self) -> bool:
        """Whether ``commit_or_load`` can check a KB's published version in its atomic step
        (a Redis Cluster cannot: the KB's key lives in another slot)."""
        ...

    async def kb_version(self, kb_id: str) -> int | None: ...

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


# A MongoDB logical session id, as ``TransactionLeases`` records it: 16 bytes (a UUID).
LSID_BYTES = 16


class TransactionLeases(Protocol):
    """Which MongoDB sessions each serving process may leave a transaction open in, under a
    lease per process (``transaction_owners.py`` says why; the reaper,
    server/kato_server/reaper.py, ends a lapsed process's sessions). One object per process:
    it knows its own process and the sessions it registered. Not part of ``SessionBackend``:
    the real one is ``TransactionOwners`` on the same Redis, the twin
    ``memory_sessions.InMemoryTransactionLeases`` on the same ``InMemoryKeyspace``."""

    async def register(self, session_id: bytes) -> None:
        """Before a transaction in ``session_id`` (MongoDB's ``before_transaction`` hook):
        recorded as this process's, once, and the lease renewed."""
        ...

    async def renew(self) -> None:
        """Renew this process's lease, with the sessions it holds (registering it again after
        it was taken for dead while it stalled)."""
        ...

    async def dead(self) -> dict[str, list[bytes]]:
        """The other processes of the namespace whose lease lapsed, with their sessions."""
        ...

    async def forget(self, process: str) -> None:
        """A lapsed process whose sessions were ended: no longer listed."""
        ...

    async def leave(self) -> None:
        """At a graceful stop, once no transaction of this process is left: its sessions and
        lease are removed (it is never taken for dead)."""
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


# --- The pattern side, one Protocol per concern (issue 22) ---------------------------------
#
# What the use cases (``server/kato_server/``) and the KB cache call on the pattern store,
# each given only the concern it uses. ``PatternStore`` above is the runner's. The real
# classes are MongoDB's (``mongo_store.py`` builds them from one client), the twin is
# ``memory.InMemoryPatternStore``; ``tests/contract/test_pattern_stores.py`` holds them to
# one contract. The values they exchange come first.


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A KB snapshot as stored (``snapshot.py`` encodes and decodes the blob)."""

    version: int
    blob: bytes


@dataclass(slots=True)
class KbChanges:
    """What changed in a KB since a version (or everything, when ``full``)."""

    version: int
    full: bool
    totals: Totals  # vocabulary_size 0: the cache counts the symbols itself
    patterns: list[PatternRecord] = field(default_factory=list)
    symbol_changes: list[SymbolChange] = field(default_factory=list)
    vectors: list[tuple[str, list[float]]] = field(default_factory=list)
    # A full load's starting point: what changed is then what changed after it.
    snapshot: StoredSnapshot | None = None
    snapshot_patterns: bool = True  # False: its patterns are stale, ``patterns`` holds all of them


@dataclass(frozen=True, slots=True)
class KbEvent:
    version: int
    kind: str  # learned, relearned, updated, deleted, cleared
    name: str  # the pattern's bare name ("" for a wipe)


class KbReads(Protocol):
    """The KB cache's reads (``kb_cache.py``): the version, and what changed since one."""

    async def kb_version(self, kb_id: str) -> int:
        """The KB's version: monotonic, 0 for a KB never written, moved on by a wipe."""
        ...

    async def changes_since(
        self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None, *, snapshots: bool = True
    ) -> KbChanges:
        """Everything that changed after ``since``, all of it read at the one version it
        names; or a full load (``since`` 0, or after a wipe, delete, update or compaction
        past ``since``) from the newest snapshot not older than the last wipe
        (``snapshots``) and what changed after it. Records share one-symbol events through
        ``singles``. DataLoss when the log was compacted into a snapshot that is gone."""
        ...


@dataclass(frozen=True, slots=True)
class KbSummary:
    """A knowledge base as stored: its id, version and totals (no KB cache loaded for it)."""

    kb_id: str
    version: int
    totals: Totals


class PatternReads(Protocol):
    """What is stored, read without loading a KB cache: single patterns, pages of them, and
    the knowledge bases themselves."""

    async def get_pattern(self, kb_id: str, name: str) -> PatternRecord | None: ...

    async def list_patterns(self, kb_id: str, after: str, limit: int) -> list[PatternRecord]:
        """At most ``limit`` patterns whose name sorts after ``after``, in name order."""
        ...

    async def list_knowledge_bases(self, after: str, limit: int, among: frozenset[str] | None) -> list[KbSummary]:
        """At most ``limit`` knowledge bases whose id sorts after ``after``, in id order; only
        those in ``among`` unless it is None. A KB is listed once it was first written (its
        version is past 0): a wipe leaves it listed, empty."""
        ...


class KbWrites(Protocol):
    """Administrative changes. Each is one version (and one ``kb_events`` entry) from which
    caches reload the KB whole; each returns that version or what it changed."""

    async def clear(self, kb_id: str, wipe_id: str = "") -> int:
        """Wipe the KB (patterns, statistics, totals, vectors, snapshots); the version moves
        on, the ledger and the event log stay. Returns the new version. With ``wipe_id`` the
        wipe happens once: the ledger records the id in the wipe's transaction, and a wipe
        whose id it holds changes nothing and returns the KB's version."""
        ...

    async def delete_pattern(self, kb_id: str, name: str) -> int | None:
        """Remove a pattern (statistics and totals stay); the new version, None if absent."""
        ...

    async def update_pattern(
        self,
        kb_id: str,
        name: str,
        *,
        frequency: int | None,
        emotives: Sequence[Mapping[str, float]] | None,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> tuple[PatternRecord, int] | None:
        """Set the fields given (None: kept); the pattern after it and the KB's new version
        (to publish, as a delete's), None if absent."""
        ...


class KbTransferStore(Protocol):
    """Moving a KB (``kb_transfer.py``): its stored counts, its patterns and vectors through
    one cursor each, and an import's batches applied once each."""

    async def kb_summary(self, kb_id: str) -> tuple[int, Totals, int]:
        """(version, totals, vector count) as stored."""
        ...

    def pattern_rows(self, kb_id: str, size: int) -> AsyncIterator[Sequence[object]]:
        """Every pattern of the KB, ``size`` at a time, as the store holds them (decoded by
        ``exported``, which may run on another thread)."""
        ...

    def exported(self, row: object) -> tuple[PatternRecord, dict[str, float]]:
        """A row of ``pattern_rows``: the pattern and what its learns added to affinity."""
        ...

    def vector_batches(self, kb_id: str, size: int) -> AsyncIterator[list[tuple[str, list[float]]]]: ...

    async def apply_batch(self, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        """Apply writes that are only ever applied together, whole or not at all, once per
        ``batch_id``. CounterLimit (nothing applied) past the bounds of engine.md D-30."""
        ...


class KbEventLog(Protocol):
    """The watch log (``kb_watch.py``)."""

    async def kb_version(self, kb_id: str) -> int: ...

    async def events_since(self, kb_id: str, since: int, limit: int) -> list[KbEvent]:
        """The committed changes after version ``since`` in version order, from at most
        ``limit`` versions (a batch's learns are one version, never split)."""
        ...


class KbSnapshots(Protocol):
    """KB snapshots (``snapshotter.py`` writes them, ``changes_since`` reads), which KBs lack
    one, and the claim that keeps two processes from loading a KB for one at once."""

    async def latest_snapshot_version(self, kb_id: str) -> int:
        """The newest complete snapshot's version (0: none)."""
        ...

    async def save_snapshot(self, kb_id: str, version: int, blob: bytes) -> bool:
        """Store one, dropping older ones; False when one of this version is stored already."""
        ...

    async def compact_log(self, kb_id: str, version: int) -> int:
        """Drop the symbol log up to ``version`` (a stored snapshot holds it): a full load
        then needs a snapshot at least that new. Returns how many log entries went."""
        ...

    async def snapshots_due(self, min_patterns: int, kb_ids: Sequence[str] | None = None) -> dict[str, int]:
        """KB id -> version of each KB (of ``kb_ids``, or every KB) that counts at least
        ``min_patterns`` patterns (``total_unique_patterns``) and whose newest complete snapshot
        is older than its version (none, or one from before its last change or wipe)."""
        ...

    async def claim_snapshot(self, kb_id: str, owner: str, now: float, until: float) -> bool:
        """Hold the KB's snapshot claim until ``until`` (wall-clock seconds) — taking it, or
        extending it when ``owner`` holds it — unless another owner's claim lasts past ``now``.
        True: ``owner`` holds it. The caller says what time it is, so every store compares
        times alike (a test's too)."""
        ...

    async def release_snapshot(self, kb_id: str, owner: str) -> None:
        """Drop the KB's snapshot claim if ``owner`` holds it."""
        ...


class DeploymentIdentity(Protocol):
    async def deployment_id(self) -> str:
        """This pattern database's id, made at its first use and never changed: what a Redis
        namespace is bound to (architecture.md §4)."""
        ...


class TransactionSessions(Protocol):
    async def end_sessions(self, session_ids: Sequence[bytes]) -> None:
        """End these store sessions, aborting any transaction a dead process left open in
        them (``transaction_owners.py``)."""
        ...
