"""Reading a knowledge base from MongoDB: its version, what changed since a version (the KB
cache's refresh), single patterns and pages of them. The collections are described in
``mongo_patterns.py``, whose store adds the writes to these reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pymongo import ASCENDING
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.asynchronous.database import AsyncDatabase

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.stores.index import SymbolChange
from kato_grpc.stores.mongo_docs import RECORD_FIELDS, Doc, pattern_from_doc, totals_from_doc

T = TypeVar("T")


@dataclass(slots=True)
class KbChanges:
    """What changed in a KB since a version (or everything, when ``full``)."""

    version: int
    full: bool
    totals: Totals
    patterns: list[PatternRecord] = field(default_factory=list)
    symbol_changes: list[SymbolChange] = field(default_factory=list)
    vectors: list[tuple[str, list[float]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class KbEvent:
    version: int
    kind: str  # learned, relearned, updated, deleted, cleared
    name: str  # the pattern's bare name ("" for a wipe)


class PatternReads:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db

    async def kb_version(self, kb_id: str) -> int:
        doc = await self._db.kb.find_one({"kb_id": kb_id}, projection={"version": 1})
        return int(doc["version"]) if doc else 0

    async def kb_summary(self, kb_id: str) -> tuple[int, Totals, int]:
        """(version, totals, vector count) as stored: no KB cache is loaded for it."""
        doc = await self._db.kb.find_one({"kb_id": kb_id})
        vectors = await self._db.vectors.count_documents({"kb_id": kb_id})
        return (int(doc["version"]) if doc else 0), totals_from_doc(doc), vectors

    async def changes_since(self, kb_id: str, since: int, singles: dict[str, tuple[str]] | None = None) -> KbChanges:
        """Everything that changed after version ``since`` (a full load when it must be);
        records share one-symbol events through ``singles`` (``PatternRecord.build``)."""
        for _ in range(8):
            kb = await self._db.kb.find_one({"kb_id": kb_id})
            version = int(kb["version"]) if kb else 0
            full = since <= 0 or since > version or int((kb or {}).get("reload_version", 0)) > since
            query: Doc = {"kb_id": kb_id} if full else {"kb_id": kb_id, "kb_version": {"$gt": since}}
            changes = KbChanges(version=version, full=full, totals=totals_from_doc(kb))
            async for doc in self._db.patterns.find(query, RECORD_FIELDS):
                changes.patterns.append(pattern_from_doc(doc, singles))
            async for doc in self._db.symbol_log.find(query).sort([("kb_version", ASCENDING), ("part", ASCENDING)]):
                for learn in doc["learns"]:
                    changes.symbol_changes.append(
                        SymbolChange(
                            counts={k: int(v) for k, v in learn["c"]},
                            is_new=bool(learn["n"]),
                            affinity={k: float(v) for k, v in learn["a"]},
                        )
                    )
            async for doc in self._db.vectors.find(query):
                changes.vectors.append((doc["name"], [float(x) for x in doc["values"]]))
            # Totals must belong to the same version as the documents: retry if it moved.
            if await self.kb_version(kb_id) == version:
                return changes
        return changes

    async def get_pattern(self, kb_id: str, name: str) -> PatternRecord | None:
        doc = await self._db.patterns.find_one({"kb_id": kb_id, "name": name})
        return pattern_from_doc(doc) if doc else None

    async def list_patterns(self, kb_id: str, after: str, limit: int) -> list[PatternRecord]:
        cursor = self._db.patterns.find({"kb_id": kb_id, "name": {"$gt": after}}).sort("name", 1).limit(limit)
        return [pattern_from_doc(doc) async for doc in cursor]

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

    def pattern_documents(self, kb_id: str, size: int) -> AsyncIterator[list[Doc]]:
        """Every pattern document of a KB, ``size`` at a time, in storage order (one cursor:
        memory stays at one batch however large the KB; no sort, which would make the store
        sort the whole KB before the first batch). ``exported_pattern`` decodes one."""
        # Whole documents: the dev store (SecantusDB) copies every projected document, which
        # cost more than the bytes a projection saves (measured: docs/performance.md).
        cursor = self._db.patterns.find({"kb_id": kb_id})
        return _batches(cursor.batch_size(size), size, lambda d: d)

    def vector_batches(self, kb_id: str, size: int) -> AsyncIterator[list[tuple[str, list[float]]]]:
        cursor = self._db.vectors.find({"kb_id": kb_id})
        return _batches(cursor.batch_size(size), size, lambda d: (d["name"], [float(x) for x in d["values"]]))


async def _batches(cursor: AsyncCursor[Doc], size: int, convert: Callable[[Doc], T]) -> AsyncIterator[list[T]]:
    batch: list[T] = []
    async for doc in cursor:
        batch.append(convert(doc))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
