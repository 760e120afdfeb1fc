"""Reading knowledge bases from MongoDB, one class per concern of ``protocols.py``: what changed
since a version (``MongoKbReads``, the KB cache's refresh), single patterns and pages of them
(``MongoPatternReads``) and the watch log (``MongoKbEvents``). The collections are described
in ``mongo_patterns.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.asynchronous.database import AsyncDatabase

from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.errors import DataLoss, Unavailable
from kato_grpc.stores.index import SymbolChange
from kato_grpc.stores.mongo_docs import RECORD_FIELDS, Doc, pattern_from_doc, totals_from_doc
from kato_grpc.stores.mongo_errors import mapped
from kato_grpc.stores.mongo_snapshots import MongoSnapshots, SnapshotMoved
from kato_grpc.stores.protocols import KbChanges, KbEvent, KbSummary, StoredSnapshot
from kato_grpc.stores.snapshot import SnapshotError

T = TypeVar("T")
READ_ATTEMPTS = 8
log = structlog.get_logger("kato.snapshots")


@dataclass(frozen=True, slots=True)
class _Marks:
    """The versions on a KB document that decide how a cache refreshes."""

    version: int  # the last committed change
    reload: int  # the last change the logs cannot replay (a wipe, a delete, an update)
    cleared: int  # the last wipe
    compacted: int  # the symbol log is gone up to here (a snapshot holds it)

    @staticmethod
    def of(kb: Doc) -> _Marks:
        fields = ("version", "reload_version", "cleared_version", "compacted_through")
        return _Marks(*(int(kb.get(k, 0)) for k in fields))


def _after(kb_id: str, version: int) -> Doc:
    return {"kb_id": kb_id} if version <= 0 else {"kb_id": kb_id, "kb_version": {"$gt": version}}


def _window(kb_id: str, after: int, upto: int) -> Doc:
    return {"kb_id": kb_id, "kb_version": {"$gt": after, "$lte": upto}}


async def kb_version(db: AsyncDatabase[Doc], kb_id: str) -> int:
    doc = await db.kb.find_one({"kb_id": kb_id}, projection={"version": 1})
    return int(doc["version"]) if doc else 0


class MongoKbReads:
    """``KbReads``: the version of a KB and what changed since one (full loads start from the
    newest usable snapshot of ``snapshots``)."""

    def __init__(self, db: AsyncDatabase[Doc], snapshots: MongoSnapshots) -> None:
        self._db = db
        self.snapshots = snapshots

    @mapped
    async def kb_version(self, kb_id: str) -> int:
        return await kb_version(self._db, kb_id)

    @mapped
    async def changes_since(
        self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None, *, snapshots: bool = True
    ) -> KbChanges:
        """Everything that changed after version ``since``, or a full load when it must be:
        from the newest usable snapshot (``snapshots``) and what changed after it, or from
        every document. Records share one-symbol events through ``singles``."""
        stored: StoredSnapshot | None = None
        for attempt in range(READ_ATTEMPTS):
            kb = await self._db.kb.find_one({"kb_id": kb_id}) or {}
            marks = _Marks.of(kb)
            full = since <= 0 or since > marks.version or marks.reload > since or marks.compacted > since
            changes = KbChanges(version=marks.version, full=full, totals=totals_from_doc(kb))
            after = patterns_after = since
            if full:
                after = patterns_after = 0
                try:
                    stored = await self._snapshot(kb_id, marks, stored) if snapshots else None
                except SnapshotMoved:
                    continue
                if stored is not None:
                    changes.snapshot = stored
                    after = stored.version
                    # A delete or an update since the snapshot: its patterns are stale (its
                    # symbol statistics are not: neither changes them).
                    changes.snapshot_patterns = stored.version >= marks.reload
                    patterns_after = after if changes.snapshot_patterns else 0
                elif marks.compacted > marks.cleared:
                    raise DataLoss(
                        f"knowledge base {kb_id}: its symbol log up to version {marks.compacted} was compacted "
                        "into a snapshot that is missing or damaged",
                        reason="KB_SNAPSHOT_UNREADABLE",
                    )
            patterns = self._db.patterns.find(_after(kb_id, patterns_after), RECORD_FIELDS)
            changes.patterns = await _converted(patterns, lambda doc: [pattern_from_doc(doc, singles)])
            # The log and the vectors are read up to the version read (each version's are
            # written once): a write meanwhile is left whole to the next refresh.
            window = _window(kb_id, after, marks.version)
            entries = self._db.symbol_log.find(window).sort([("kb_version", ASCENDING), ("part", ASCENDING)])
            changes.symbol_changes = await _converted(entries, _symbol_changes)
            async for doc in self._db.vectors.find(window):
                changes.vectors.append((doc["name"], [float(x) for x in doc["values"]]))
            # The patterns must belong to the version read too: again if the KB moved. Under a
            # steady stream of writes, the last attempt keeps what it read when only writes came
            # (newer pattern states, put again by the next refresh) — not when a wipe, delete,
            # update or compaction did (the log read may miss documents).
            now = _Marks.of(await self._db.kb.find_one({"kb_id": kb_id}) or {})
            if now == marks or (attempt == READ_ATTEMPTS - 1 and replace(now, version=marks.version) == marks):
                return changes
        raise Unavailable(f"knowledge base {kb_id} kept changing while it was read", reason="KB_BUSY")

    async def _snapshot(self, kb_id: str, marks: _Marks, known: StoredSnapshot | None) -> StoredSnapshot | None:
        try:
            return await self.snapshots.latest(kb_id, at_least=marks.cleared, at_most=marks.version, known=known)
        except SnapshotError as exc:
            # Damaged (a checksum mismatch, parts lost, a malformed header): passed over, since
            # the documents hold everything — unless the log was compacted into it (DATA_LOSS).
            log.error("kb snapshot damaged", knowledge_base=kb_id, error=str(exc))
            return None


class MongoPatternReads:
    """``PatternReads``: patterns and knowledge bases as stored."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db

    @mapped
    async def get_pattern(self, kb_id: str, name: str) -> PatternRecord | None:
        doc = await self._db.patterns.find_one({"kb_id": kb_id, "name": name})
        return pattern_from_doc(doc) if doc else None

    @mapped
    async def list_patterns(self, kb_id: str, after: str, limit: int) -> list[PatternRecord]:
        cursor = self._db.patterns.find({"kb_id": kb_id, "name": {"$gt": after}}).sort("name", 1).limit(limit)
        return [pattern_from_doc(doc) async for doc in cursor]

    @mapped
    async def list_knowledge_bases(self, after: str, limit: int, among: frozenset[str] | None) -> list[KbSummary]:
        # The `kb` documents, by their unique kb_id index; one is written with a KB's first change.
        ids: Doc = {"$gt": after} if among is None else {"$gt": after, "$in": sorted(among)}
        cursor = self._db.kb.find({"kb_id": ids, "version": {"$gt": 0}}).sort("kb_id", 1).limit(limit)
        return [KbSummary(doc["kb_id"], int(doc["version"]), totals_from_doc(doc)) async for doc in cursor]


class MongoKbEvents:
    """``KbEventLog``: the ``kb_events`` of a KB, which every change writes in its transaction."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db

    @mapped
    async def kb_version(self, kb_id: str) -> int:
        return await kb_version(self._db, kb_id)

    @mapped
    async def events_since(self, kb_id: str, since: int, limit: int) -> list[KbEvent]:
        """The KB's committed changes after version ``since``, in version order, from at most
        ``limit`` versions (a batch's learns are one version: never split)."""
        query: Doc = {"kb_id": kb_id, "kb_version": {"$gt": since}}
        out: list[KbEvent] = []
        async for doc in self._db.kb_events.find(query).sort("kb_version", ASCENDING).limit(limit):
            version = int(doc["kb_version"])
            if "learns" in doc:
                out += [KbEvent(version, "learned" if new else "relearned", name) for name, new in doc["learns"]]
            else:
                out.append(KbEvent(version, doc["kind"], doc.get("name", "")))
        return out


# Documents converted on the event loop at most; more go to a thread a batch at a time, so a
# full load from documents (100k patterns: seconds of Python) never holds the loop that long.
CONVERT_ON_LOOP = 200


async def _converted(cursor: AsyncCursor[Doc], convert: Callable[[Doc], list[T]]) -> list[T]:
    """Every document of ``cursor``, converted; in order."""
    out: list[T] = []
    batch: list[Doc] = []

    def run(docs: list[Doc]) -> list[T]:
        return [item for doc in docs for item in convert(doc)]

    async for doc in cursor:
        batch.append(doc)
        if len(batch) == CONVERT_ON_LOOP:
            out += await asyncio.to_thread(run, batch)
            batch = []
    out += run(batch)
    return out


def _symbol_changes(doc: Doc) -> list[SymbolChange]:
    """A symbol_log document's learns, in order."""
    return [
        SymbolChange(
            counts={k: int(v) for k, v in learn["c"]},
            is_new=bool(learn["n"]),
            affinity={k: float(v) for k, v in learn["a"]},
        )
        for learn in doc["learns"]
    ]


async def batches(cursor: AsyncCursor[Doc], size: int, convert: Callable[[Doc], T]) -> AsyncIterator[list[T]]:
    batch: list[T] = []
    async for doc in cursor:
        batch.append(convert(doc))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
