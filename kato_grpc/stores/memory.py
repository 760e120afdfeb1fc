"""The pattern side in memory: the reference semantics of applying a PatternWrite, and the twin
of every MongoDB class of ``mongo_store.py`` (``InMemoryPatternStore``: each Protocol of the
pattern side in ``protocols.py``).

Used by the replay tool, by unit tests of the core and of the use cases, and held to the same
contract as the MongoDB store (``tests/contract/test_pattern_stores.py``): a batch applies
whole or not at all, the ledger makes each write (or an import's batch) apply once, a KB's
version moves by one per committed change and never back (a wipe included), counters stay
within engine.md D-30 and what a pattern accumulates within D-31, every change is one
``kb_events`` entry that a wipe keeps, a snapshot from before a wipe is never loaded, a KB is
due a snapshot while it has enough patterns and none as new as itself, and a snapshot claim is
one owner's until it lapses (the caller says the time).
Not shared between processes and not durable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kato_grpc.engine import importing
from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.engine.records import kept_affinity, merge_metadata, window_emotives
from kato_grpc.errors import CounterLimit, DataLoss, StoreRefused
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.index import KnowledgeIndex, SymbolChange
from kato_grpc.stores.mongo_docs import learns
from kato_grpc.stores.protocols import Applied, KbChanges, KbEvent, KbSummary, StoredSnapshot

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kb_id: str
    write: storage.PatternWrite
    error: str


class InMemoryKnowledgeBase(KnowledgeIndex):
    """One node's KB: the index the engine reads, plus what the MongoDB store keeps beside its
    documents — a ledger of applied write ids (exactly once), the version each pattern last
    changed at, the symbol-statistics log, the event log, the affinity each pattern's learns
    added (exports), the marks a refresh reads (``reload``, ``cleared``, ``compacted``) and
    the newest snapshot."""

    def __init__(self, ledger: set[str] | None = None) -> None:
        """``ledger``: the applied write ids, shared by the KBs of one store (a write id is
        unique per execution: the MongoDB ledger is the deployment's, not a KB's)."""
        super().__init__()
        self._applied: set[str] = set() if ledger is None else ledger
        self.changed_at: dict[str, int] = {}  # pattern -> version of its last learn
        self.affinity_kept: dict[str, dict[str, float]] = {}  # pattern -> its learns' affinity (D-31)
        self.symbol_log: list[tuple[int, SymbolChange]] = []
        self.vector_log: dict[str, tuple[list[float], int]] = {}  # name -> (values, version), first kept
        self.events: list[KbEvent] = []
        self.reload_version = 0  # the last change a refresh cannot replay (wipe, delete, update)
        self.cleared_version = 0
        self.compacted_through = 0  # the symbol log is gone up to here
        self.snapshots: dict[int, bytes] = {}

    def apply(self, write: storage.PatternWrite) -> bool:
        """Apply a PatternWrite once, as a change of its own; a write id seen before is
        ignored. True if applied."""
        return self.commit([write]) == 1

    def commit(self, writes: Sequence[storage.PatternWrite], batch_id: str | None = None) -> int:
        """Apply writes as one change (one version), each once: ``batch_id`` makes them one
        ledger entry, applied all or none; otherwise each write's id is its own. CounterLimit,
        with nothing applied, past the bounds of D-30. Returns how many writes it applied."""
        if batch_id is not None:
            todo = [] if batch_id in self._applied else list(writes)
        else:
            unique: dict[str, storage.PatternWrite] = {}  # an id repeated in a batch: once, like a retry
            for w in writes:
                unique.setdefault(w.write_id or f"anon-{len(unique)}", w)
            todo = [w for w in unique.values() if not (w.write_id and w.write_id in self._applied)]
        if not todo:
            return 0
        self.check_counters(todo)  # before any change: all or nothing, like the store's transaction
        self._applied.update([batch_id] if batch_id is not None else [w.write_id for w in todo if w.write_id])
        self.version += 1
        learned: list[KbEvent] = []
        for w in todo:
            for pv in w.vectors:
                self.vector_log.setdefault(pv.name, (list(pv.vector.values), self.version))
                self.put_vector(pv.name, pv.vector.values)
            if w.name:
                is_new = self._learn(w)
                learned.append(KbEvent(self.version, "learned" if is_new else "relearned", w.name))
        self.events += learned
        return len(todo)

    def check_counters(self, writes: Sequence[storage.PatternWrite]) -> None:
        """CounterLimit when the writes would take a counter past the bound an import may
        raise it to (D-30)."""
        if not any(w.frequency for w in writes):
            return
        frequencies = {w.name: p.frequency for w in writes if (p := self.pattern(w.name)) is not None}
        symbols = sum(stats.frequency for _, stats in self.symbols_after(None, self.symbol_count()))
        importing.check_counters(
            writes, importing.Counters(frequencies, self.totals().total_pattern_frequencies, symbols)
        )

    def _learn(self, write: storage.PatternWrite) -> bool:
        """One learn (an import's pattern: ``frequency`` of them); True if it made the pattern."""
        old = self.pattern(write.name)
        is_new = old is None
        incoming = [dict(r.values) for r in write.emotives]
        metadata = {k: list(v.values) for k, v in write.metadata.items()}
        if old is None:
            record = PatternRecord.build(
                write.name,
                [list(e.symbols) for e in write.events],
                learns(write),
                window_emotives([], incoming, write.persistence),
                merge_metadata({}, metadata),
                self.singles,
            )
        else:
            record = PatternRecord.build(
                old.name,
                old.events,
                old.frequency + learns(write),
                window_emotives(old.emotives, incoming, write.persistence),
                merge_metadata(old.metadata, metadata),
                self.singles,
            )
        self.put_pattern(record)
        self.changed_at[write.name] = self.version
        kept = self.affinity_kept.setdefault(write.name, {})
        for key, value in kept_affinity(kept, write.affinity_delta).items():
            kept[key] = kept.get(key, 0.0) + value
        change = SymbolChange(counts=dict(write.symbol_counts), is_new=is_new, affinity=dict(write.affinity_delta))
        self.apply_symbol_change(change)
        self.symbol_log.append((self.version, change))
        t = self.totals()
        self.set_totals(
            Totals(
                total_unique_patterns=t.total_unique_patterns + (1 if is_new else 0),
                total_pattern_frequencies=t.total_pattern_frequencies + learns(write),
                vocabulary_size=self.symbol_count(),
            )
        )
        return is_new

    def _reload_change(self, kind: str, name: str = "") -> int:
        """A change a refresh cannot replay: a new version from which caches reload whole."""
        self.version += 1
        self.reload_version = self.version
        self.events.append(KbEvent(self.version, kind, name))
        return self.version

    def clear(self) -> int:
        """ClearKnowledgeBase: all data goes, the version moves on (architecture.md §4).

        The ledger of applied write ids stays, so a late retry of an old write cannot
        resurrect a pattern into the wiped KB; so do the events (a watcher behind the wipe
        still sees what came before). Returns the new version."""
        self.reset()
        self.changed_at.clear()
        self.affinity_kept.clear()
        self.symbol_log.clear()
        self.vector_log.clear()
        self.snapshots.clear()
        self.cleared_version = self._reload_change("cleared")
        return self.version

    def delete(self, name: str) -> int | None:
        """Remove a pattern; symbol statistics and totals stay (engine.md §5.4)."""
        if self.pattern(name) is None:
            return None
        kept = [r for r in self.all_patterns() if r.name != name]
        self.drop_patterns()
        for record in kept:
            self.put_pattern(record)
        del self.changed_at[name]
        self.affinity_kept.pop(name, None)
        return self._reload_change("deleted", name)

    def update(
        self,
        name: str,
        frequency: int | None,
        emotives: Sequence[Mapping[str, float]] | None,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> PatternRecord | None:
        """Set the fields given; totals stay as they are (as the store's update leaves them)."""
        old = self.pattern(name)
        if old is None:
            return None
        record = PatternRecord.build(
            name,
            old.events,
            old.frequency if frequency is None else frequency,
            old.emotives if emotives is None else [dict(r) for r in emotives],
            old.metadata if metadata is None else {k: sorted(set(v)) for k, v in sorted(metadata.items()) if v},
            self.singles,
        )
        self.put_pattern(record)
        self._reload_change("updated", name)
        return record

    def changes_since(self, since: int, singles: dict[str, tuple[str]] | None, snapshots: bool) -> KbChanges:
        """``KbReads.changes_since`` of this KB (the same rules as ``mongo_reads.py``)."""
        full = since <= 0 or since > self.version or self.reload_version > since or self.compacted_through > since
        totals = self.totals()
        changes = KbChanges(
            version=self.version,
            full=full,
            totals=Totals(totals.total_unique_patterns, totals.total_pattern_frequencies),
        )
        after = patterns_after = since
        if full:
            after = patterns_after = 0
            stored = self.latest_snapshot(self.cleared_version, self.version) if snapshots else None
            if stored is not None:
                changes.snapshot = stored
                after = stored.version
                changes.snapshot_patterns = stored.version >= self.reload_version
                patterns_after = after if changes.snapshot_patterns else 0
            elif self.compacted_through > self.cleared_version:
                raise DataLoss(
                    f"its symbol log up to version {self.compacted_through} was compacted into a snapshot that is "
                    "missing",
                    reason="KB_SNAPSHOT_UNREADABLE",
                )
        changes.patterns = [_copy(r, singles) for r in self.all_patterns() if self.changed_at[r.name] > patterns_after]
        changes.symbol_changes = [c for v, c in self.symbol_log if after < v <= self.version]
        changes.vectors = [(n, list(values)) for n, (values, v) in self.vector_log.items() if after < v <= self.version]
        return changes

    def latest_snapshot(self, at_least: int, at_most: int) -> StoredSnapshot | None:
        versions = [v for v in self.snapshots if at_least <= v <= at_most]
        return StoredSnapshot(max(versions), self.snapshots[max(versions)]) if versions else None


def _copy(record: PatternRecord, singles: dict[str, tuple[str]] | None) -> PatternRecord:
    """A record as a load builds it (sharing the loading index's one-symbol events)."""
    return PatternRecord.build(record.name, record.events, record.frequency, record.emotives, record.metadata, singles)


class InMemoryPatternStore:
    """The pattern side's in-memory twin: one InMemoryKnowledgeBase per node. Implements
    ``PatternStore``, ``KbReads``, ``PatternReads``, ``KbWrites``, ``KbTransferStore``,
    ``KbEventLog``, ``KbSnapshots``, ``DeploymentIdentity`` and ``TransactionSessions``."""

    def __init__(self) -> None:
        self._kbs: dict[str, InMemoryKnowledgeBase] = {}
        self._ledger: set[str] = set()
        self._deployment = uuid.uuid4().hex
        self.dead_letters: dict[str, DeadLetter] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # KB -> (owner, until) of its snapshot claim

    def kb(self, kb_id: str) -> InMemoryKnowledgeBase:
        kb = self._kbs.get(kb_id)
        if kb is None:
            kb = self._kbs[kb_id] = InMemoryKnowledgeBase(self._ledger)
        return kb

    # --- PatternStore (the runner) -----------------------------------------------------

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        kb = self.kb(kb_id)
        return Applied(kb.commit(writes), kb.version)

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        self.dead_letters.setdefault(write.write_id, DeadLetter(kb_id, write, f"{type(error).__name__}: {error}"))

    def is_permanent(self, error: BaseException) -> bool:
        return isinstance(error, StoreRefused | CounterLimit)

    # --- KbReads, PatternReads, KbEventLog --------------------------------------------

    async def kb_version(self, kb_id: str) -> int:
        return self.kb(kb_id).version

    async def changes_since(
        self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None, *, snapshots: bool = True
    ) -> KbChanges:
        try:
            return self.kb(kb_id).changes_since(since, singles, snapshots)
        except DataLoss as exc:
            raise DataLoss(f"knowledge base {kb_id}: {exc.message}", reason=exc.reason) from None

    async def get_pattern(self, kb_id: str, name: str) -> PatternRecord | None:
        return self.kb(kb_id).pattern(name)

    async def list_patterns(self, kb_id: str, after: str, limit: int) -> list[PatternRecord]:
        return sorted((r for r in self.kb(kb_id).all_patterns() if r.name > after), key=lambda r: r.name)[:limit]

    async def list_knowledge_bases(self, after: str, limit: int, among: frozenset[str] | None) -> list[KbSummary]:
        # ``kb`` makes a KB on any read: only one ever written (version past 0) exists.
        ids = sorted(k for k, kb in self._kbs.items() if kb.version > 0 and k > after and (among is None or k in among))
        out = []
        for kb_id in ids[:limit]:
            totals = self._kbs[kb_id].totals()
            summary = Totals(totals.total_unique_patterns, totals.total_pattern_frequencies)
            out.append(KbSummary(kb_id, self._kbs[kb_id].version, summary))
        return out

    async def events_since(self, kb_id: str, since: int, limit: int) -> list[KbEvent]:
        versions: set[int] = set()
        out: list[KbEvent] = []
        for event in self.kb(kb_id).events:
            if event.version <= since:
                continue
            if event.version not in versions:
                if len(versions) == limit:
                    break
                versions.add(event.version)
            out.append(event)
        return out

    # --- KbWrites -------------------------------------------------------------------------

    async def clear(self, kb_id: str, wipe_id: str = "") -> int:
        kb = self.kb(kb_id)
        if wipe_id:
            if wipe_id in self._ledger:
                return kb.version  # wiped once already
            self._ledger.add(wipe_id)
        return kb.clear()

    async def delete_pattern(self, kb_id: str, name: str) -> int | None:
        return self.kb(kb_id).delete(name)

    async def update_pattern(
        self,
        kb_id: str,
        name: str,
        *,
        frequency: int | None,
        emotives: Sequence[Mapping[str, float]] | None,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> tuple[PatternRecord, int] | None:
        kb = self.kb(kb_id)
        record = kb.update(name, frequency, emotives, metadata)
        return None if record is None else (record, kb.version)

    # --- KbTransferStore ------------------------------------------------------------------

    async def kb_summary(self, kb_id: str) -> tuple[int, Totals, int]:
        kb = self.kb(kb_id)
        totals = kb.totals()
        return kb.version, Totals(totals.total_unique_patterns, totals.total_pattern_frequencies), len(kb.vector_log)

    def pattern_rows(self, kb_id: str, size: int) -> AsyncIterator[Sequence[object]]:
        kb = self.kb(kb_id)
        rows = [(r, dict(kb.affinity_kept.get(r.name, {}))) for r in kb.all_patterns()]
        return _batches(rows, size)

    def exported(self, row: object) -> tuple[PatternRecord, dict[str, float]]:
        assert isinstance(row, tuple), "a row of pattern_rows: (record, affinity)"
        record, affinity = row
        assert isinstance(record, PatternRecord) and isinstance(affinity, dict)
        return record, dict(affinity)

    def vector_batches(self, kb_id: str, size: int) -> AsyncIterator[list[tuple[str, list[float]]]]:
        vectors = [(n, list(values)) for n, (values, _) in self.kb(kb_id).vector_log.items()]
        return _batches(vectors, size)

    async def apply_batch(self, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        kb = self.kb(kb_id)
        return Applied(kb.commit(writes, batch_id), kb.version)

    # --- KbSnapshots ----------------------------------------------------------------------

    async def latest_snapshot_version(self, kb_id: str) -> int:
        return max(self.kb(kb_id).snapshots, default=0)

    async def save_snapshot(self, kb_id: str, version: int, blob: bytes) -> bool:
        snapshots = self.kb(kb_id).snapshots
        if version in snapshots:
            return False
        snapshots[version] = blob
        for older in [v for v in snapshots if v < version]:
            del snapshots[older]
        return True

    async def compact_log(self, kb_id: str, version: int) -> int:
        kb = self.kb(kb_id)
        kb.compacted_through = max(kb.compacted_through, version)
        gone = {v for v, _ in kb.symbol_log if v <= version}  # one log entry per batch, as stored
        kb.symbol_log = [(v, c) for v, c in kb.symbol_log if v > version]
        return len(gone)

    async def snapshots_due(self, min_patterns: int, kb_ids: Sequence[str] | None = None) -> dict[str, int]:
        kbs = self._kbs if kb_ids is None else {k: self._kbs[k] for k in kb_ids if k in self._kbs}
        return {
            kb_id: kb.version
            for kb_id, kb in kbs.items()
            if kb.totals().total_unique_patterns >= min_patterns and max(kb.snapshots, default=0) < kb.version
        }

    async def claim_snapshot(self, kb_id: str, owner: str, now: float, until: float) -> bool:
        holder, held_until = self._claims.get(kb_id, (owner, now))
        if holder != owner and held_until > now:
            return False
        self._claims[kb_id] = (owner, until)
        return True

    async def release_snapshot(self, kb_id: str, owner: str) -> None:
        if self._claims.get(kb_id, ("", 0.0))[0] == owner:
            del self._claims[kb_id]

    # --- DeploymentIdentity, TransactionSessions -----------------------------------------

    async def deployment_id(self) -> str:
        return self._deployment

    async def end_sessions(self, session_ids: Sequence[bytes]) -> None:
        """No transaction is ever left open here: nothing to end."""


async def _batches(items: Iterable[T], size: int) -> AsyncIterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
