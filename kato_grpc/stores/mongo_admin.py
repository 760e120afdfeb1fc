"""The pattern store's KB versions and its administrative changes (wipe, delete, update:
``MongoKbAdmin``, the ``KbWrites`` of ``protocols.py``), each run inside a transaction
(``mongo_client.py``); ``mongo_patterns.py`` describes the collections. Every change bumps
the KB's version first: concurrent writes to a KB conflict on that one document, so versions
follow commit order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.stores.mongo_client import MongoDatabase
from kato_grpc.stores.mongo_docs import Doc, pattern_from_doc
from kato_grpc.stores.mongo_errors import mapped


async def next_version(db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, totals: Doc | None = None) -> int:
    """Bump the KB's version (and add ``totals`` to its counters) inside the transaction.
    Every write to a KB does this before writing anything but its ledger."""
    return int((await bump(db, s, kb_id, totals))["version"])


async def bump(db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, totals: Doc | None = None) -> Doc:
    """``next_version``, returning the KB document as it is after the bump."""
    kb = await db.kb.find_one_and_update(
        {"kb_id": kb_id},
        {"$inc": {"version": 1, **(totals or {})}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=s,
    )
    assert kb is not None  # upsert with ReturnDocument.AFTER always returns the document
    return kb


async def _bump_reload(db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, *, reset_totals: bool) -> int:
    """A new version from which caches reload the KB whole (a change the logs cannot replay)."""
    version = await next_version(db, s, kb_id)
    fields: Doc = {"reload_version": version}
    if reset_totals:
        fields |= {"total_unique_patterns": 0, "total_pattern_frequencies": 0, "symbol_frequencies": 0}
    await db.kb.update_one({"kb_id": kb_id}, {"$set": fields}, session=s)
    return version


async def _event(
    db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, version: int, kind: str, name: str = ""
) -> None:
    """A change for WatchKnowledgeBase (learns write theirs with their batch)."""
    await db.kb_events.insert_one({"kb_id": kb_id, "kb_version": version, "kind": kind, "name": name}, session=s)


async def clear_in(db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, wipe_id: str = "") -> int:
    if wipe_id:  # once: the ledger record commits with the wipe
        if await db.ledger.find_one({"_id": wipe_id}, {"_id": 1}, session=s) is not None:
            kb = await db.kb.find_one({"kb_id": kb_id}, {"version": 1}, session=s)
            return int(kb["version"]) if kb else 0
        await db.ledger.insert_one({"_id": wipe_id, "kb_id": kb_id}, session=s)
    for coll in (db.patterns, db.symbol_log, db.vectors, db.kb_snapshots):
        await coll.delete_many({"kb_id": kb_id}, session=s)
    version = await _bump_reload(db, s, kb_id, reset_totals=True)
    # Snapshots from before the wipe (one being written now included) are never loaded.
    await db.kb.update_one({"kb_id": kb_id}, {"$set": {"cleared_version": version}}, session=s)
    await _event(db, s, kb_id, version, "cleared")
    return version


async def delete_in(db: AsyncDatabase[Doc], s: AsyncClientSession, kb_id: str, name: str) -> int | None:
    result = await db.patterns.delete_one({"kb_id": kb_id, "name": name}, session=s)
    if not result.deleted_count:
        return None
    version = await _bump_reload(db, s, kb_id, reset_totals=False)
    await _event(db, s, kb_id, version, "deleted", name)
    return version


async def update_in(
    db: AsyncDatabase[Doc],
    s: AsyncClientSession,
    kb_id: str,
    name: str,
    frequency: int | None,
    emotives: Sequence[Mapping[str, float]] | None,
    metadata: Mapping[str, Sequence[str]] | None,
) -> tuple[PatternRecord, int] | None:
    fields: Doc = {}
    if frequency is not None:
        fields["frequency"] = frequency
    if emotives is not None:
        fields["emotives"] = [sorted([k, v] for k, v in r.items()) for r in emotives]
    if metadata is not None:
        fields["metadata"] = [[k, v] for k, values in sorted(metadata.items()) for v in sorted(set(values))]
    doc = await db.patterns.find_one_and_update(
        {"kb_id": kb_id, "name": name},
        {"$set": fields} if fields else {"$inc": {"frequency": 0}},
        return_document=ReturnDocument.AFTER,
        session=s,
    )
    if doc is None:
        return None
    version = await _bump_reload(db, s, kb_id, reset_totals=False)
    await _event(db, s, kb_id, version, "updated", name)
    return pattern_from_doc(doc), version


class MongoKbAdmin:
    """``KbWrites``: wipe a KB, delete or update a pattern, each in one transaction."""

    def __init__(self, database: MongoDatabase) -> None:
        self._database = database

    @mapped
    async def clear(self, kb_id: str, wipe_id: str = "") -> int:
        """Wipe a KB; its version moves on and every cache reloads (architecture.md §4). With
        ``wipe_id``, once (``KbWrites.clear``)."""
        db = self._database.db
        try:
            return await self._database.transaction(lambda s: clear_in(db, s, kb_id, wipe_id))
        except DuplicateKeyError:  # the same wipe committed meanwhile: the ledger now says so
            return await self._database.transaction(lambda s: clear_in(db, s, kb_id, wipe_id))

    @mapped
    async def delete_pattern(self, kb_id: str, name: str) -> int | None:
        """Remove a pattern; symbol statistics and totals stay as they are (engine.md §5.4).
        Returns the new KB version, or None when there was no such pattern."""
        db = self._database.db
        return await self._database.transaction(lambda s: delete_in(db, s, kb_id, name))

    @mapped
    async def update_pattern(
        self,
        kb_id: str,
        name: str,
        *,
        frequency: int | None,
        emotives: Sequence[Mapping[str, float]] | None,
        metadata: Mapping[str, Sequence[str]] | None,
    ) -> tuple[PatternRecord, int] | None:
        db = self._database.db
        return await self._database.transaction(lambda s: update_in(db, s, kb_id, name, frequency, emotives, metadata))
