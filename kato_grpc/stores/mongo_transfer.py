"""Moving a knowledge base in and out of MongoDB (``KbTransferStore`` of ``protocols.py``):
its stored counts, its patterns and vectors through one cursor each, and an import's batches
applied through the learns' transaction path (``mongo_patterns.py``), once per batch id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from pymongo.asynchronous.database import AsyncDatabase

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.mongo_docs import Doc, exported_pattern, totals_from_doc
from kato_grpc.stores.mongo_errors import mapped, mapped_iter
from kato_grpc.stores.mongo_patterns import MongoLearns
from kato_grpc.stores.mongo_reads import batches
from kato_grpc.stores.protocols import Applied


class MongoKbTransfer:
    def __init__(self, db: AsyncDatabase[Doc], learns: MongoLearns) -> None:
        self._db = db
        self._learns = learns

    @mapped
    async def kb_summary(self, kb_id: str) -> tuple[int, Totals, int]:
        """(version, totals, vector count) as stored: no KB cache is loaded for it."""
        doc = await self._db.kb.find_one({"kb_id": kb_id})
        vectors = await self._db.vectors.count_documents({"kb_id": kb_id})
        return (int(doc["version"]) if doc else 0), totals_from_doc(doc), vectors

    def pattern_rows(self, kb_id: str, size: int) -> AsyncIterator[Sequence[object]]:
        """Every pattern document of a KB, ``size`` at a time, in storage order (one cursor:
        memory stays at one batch however large the KB; no sort, which would make the store
        sort the whole KB before the first batch). ``exported`` decodes one."""
        # Whole documents: the dev store (SecantusDB) copies every projected document, which
        # cost more than the bytes a projection saves (measured: docs/performance.md).
        cursor = self._db.patterns.find({"kb_id": kb_id})
        return mapped_iter(batches(cursor.batch_size(size), size, lambda d: d))

    def exported(self, row: object) -> tuple[PatternRecord, dict[str, float]]:
        assert isinstance(row, Mapping), "a row of pattern_rows: a pattern document"
        return exported_pattern(row)

    def vector_batches(self, kb_id: str, size: int) -> AsyncIterator[list[tuple[str, list[float]]]]:
        cursor = self._db.vectors.find({"kb_id": kb_id})
        return mapped_iter(
            batches(cursor.batch_size(size), size, lambda d: (d["name"], [float(x) for x in d["values"]]))
        )

    async def apply_batch(self, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        return await self._learns.apply_batch(kb_id, batch_id, writes)
