"""KB snapshots in MongoDB (``snapshot.py`` encodes them; docs/scaling.md, "Cold start").

``kb_snapshots`` holds, per KB, the newest snapshot as parts of at most ``PART_BYTES``
(documents end at 16 MiB) and one header (``part`` -1: the version, the part count, the
blob's SHA-256), written after the parts: a header names a complete snapshot. Writing a newer
one deletes the older ones, headers included, after its own header is stored. So a reader
that finds parts missing was overtaken — and reads again — only when its header is gone or a
newer one is stored; while its header is still the newest, nobody is replacing it and the
parts are lost: the snapshot is damaged (``SnapshotError``, as for a checksum mismatch).

A snapshot at version V lets the symbol log up to V go (``compact``): ``kb.compacted_through``
is raised first, then the log deleted, so a cache refresh that read the log meanwhile sees the
KB document change and reads again (``MongoKbReads.changes_since``).

``kb_snapshot_claims`` holds one document per KB that a process is loading for a snapshot
(``_id`` the KB id, its owner, until when): taken by an upsert whose filter matches only a
lapsed claim or the owner's own, so a live claim of another owner makes the upsert's insert
collide on ``_id`` (DuplicateKeyError: not claimed). Kept apart from the ``kb`` document, which
every learn's transaction updates: a claim never makes a learn conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from kato_grpc.stores.mongo_docs import Doc
from kato_grpc.stores.mongo_errors import mapped
from kato_grpc.stores.protocols import StoredSnapshot
from kato_grpc.stores.snapshot import SnapshotError

PART_BYTES = 8 * 1024 * 1024
HEADER = -1


class SnapshotMoved(Exception):
    """A snapshot was replaced while it was being read: read again."""


class MongoSnapshots:
    """``KbSnapshots``, and the newest snapshot for a full load (``latest``)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        await self._db.kb_snapshots.create_index(
            [("kb_id", ASCENDING), ("version", ASCENDING), ("part", ASCENDING)], unique=True
        )

    @mapped
    async def latest_snapshot_version(self, kb_id: str) -> int:
        """The version of the KB's newest complete snapshot (0: none)."""
        header = await self._db.kb_snapshots.find_one(
            {"kb_id": kb_id, "part": HEADER}, {"version": 1}, sort=[("version", DESCENDING)]
        )
        return int(header["version"]) if header else 0

    @mapped
    async def latest(
        self, kb_id: str, *, at_least: int, at_most: int, known: StoredSnapshot | None = None
    ) -> StoredSnapshot | None:
        """The newest complete snapshot with a version in [at_least, at_most], or None;
        ``known`` when it is that one (a read retried under writes reads the parts once)."""
        header = await self._db.kb_snapshots.find_one(
            {"kb_id": kb_id, "part": HEADER, "version": {"$gte": at_least, "$lte": at_most}},
            sort=[("version", DESCENDING)],
        )
        if header is None:
            return None
        version = int(header["version"])
        if known is not None and known.version == version:
            return known
        cursor = self._db.kb_snapshots.find({"kb_id": kb_id, "version": version, "part": {"$gte": 0}})
        docs = [doc async for doc in cursor.sort("part", ASCENDING)]
        try:
            parts, digest, data = int(header["parts"]), str(header["sha256"]), [doc["data"] for doc in docs]
            # Compared with what was found, never built from what the header declares.
            complete = len(docs) == parts and [doc["part"] for doc in docs] == list(range(len(docs)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot {kb_id}@{version}: malformed: {exc!r}") from exc
        if not all(isinstance(d, bytes) for d in data):
            raise SnapshotError(f"snapshot {kb_id}@{version}: malformed: a part is not binary")
        if not complete:
            if await self._replaced(kb_id, header):
                raise SnapshotMoved(f"snapshot {kb_id}@{version}: replaced while it was read")
            raise SnapshotError(f"snapshot {kb_id}@{version}: {len(docs)} of {parts} parts, and none newer stored")
        blob = b"".join(data)
        if hashlib.sha256(blob).hexdigest() != digest:
            raise SnapshotError(f"snapshot {kb_id}@{version}: checksum mismatch")
        return StoredSnapshot(version, blob)

    async def _replaced(self, kb_id: str, header: Doc) -> bool:
        """Whether ``header`` is no longer the KB's newest snapshot (deleted, or a newer one
        stored): a writer replacing it stores its own header before deleting any older part.
        A header newer than the KB's version (only a forgery has one) replaces nothing: it
        would make every read again find this one, and the reader loop until it gives up."""
        kb = await self._db.kb.find_one({"kb_id": kb_id}, {"version": 1}) or {}
        newest = await self._db.kb_snapshots.find_one(
            {"kb_id": kb_id, "part": HEADER, "version": {"$lte": int(kb.get("version", 0))}},
            {"_id": 1},
            sort=[("version", DESCENDING)],
        )
        return newest is None or newest["_id"] != header["_id"]

    @mapped
    async def save_snapshot(self, kb_id: str, version: int, blob: bytes) -> bool:
        """Store a snapshot, then drop older ones. False when one of this version exists
        already (another process wrote it)."""
        chunks = [blob[i : i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)] or [b""]
        docs: list[Doc] = [
            {"kb_id": kb_id, "version": version, "part": n, "data": Binary(chunk)} for n, chunk in enumerate(chunks)
        ]
        header: Doc = {
            "kb_id": kb_id,
            "version": version,
            "part": HEADER,
            "parts": len(chunks),
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        try:
            # One part per round trip: a batch of several 8 MiB parts would pass the 48 MB
            # message limit.
            for doc in docs:
                await self._db.kb_snapshots.insert_one(doc)
            await self._db.kb_snapshots.insert_one(header)
        except (DuplicateKeyError, BulkWriteError):
            return False
        await self._db.kb_snapshots.delete_many({"kb_id": kb_id, "version": {"$lt": version}})
        return True

    @mapped
    async def snapshots_due(self, min_patterns: int, kb_ids: Sequence[str] | None = None) -> dict[str, int]:
        """KBs of at least ``min_patterns`` patterns whose newest snapshot is older than them."""
        query: Doc = {"total_unique_patterns": {"$gte": min_patterns}}
        if kb_ids is not None:
            query["kb_id"] = {"$in": list(kb_ids)}
        kbs = {
            str(doc["kb_id"]): int(doc["version"]) async for doc in self._db.kb.find(query, {"kb_id": 1, "version": 1})
        }
        if not kbs:
            return {}
        newest: dict[str, int] = {}
        headers = self._db.kb_snapshots.find({"kb_id": {"$in": list(kbs)}, "part": HEADER}, {"kb_id": 1, "version": 1})
        async for doc in headers:
            newest[doc["kb_id"]] = max(newest.get(doc["kb_id"], 0), int(doc["version"]))
        return {kb_id: version for kb_id, version in kbs.items() if newest.get(kb_id, 0) < version}

    @mapped
    async def claim_snapshot(self, kb_id: str, owner: str, now: float, until: float) -> bool:
        try:
            await self._db.kb_snapshot_claims.update_one(
                {"_id": kb_id, "$or": [{"owner": owner}, {"until": {"$lte": now}}]},
                {"$set": {"owner": owner, "until": until}},
                upsert=True,
            )
        except DuplicateKeyError:  # another owner's claim, still running
            return False
        return True

    @mapped
    async def release_snapshot(self, kb_id: str, owner: str) -> None:
        await self._db.kb_snapshot_claims.delete_one({"_id": kb_id, "owner": owner})

    @mapped
    async def compact_log(self, kb_id: str, version: int) -> int:
        """Drop the KB's symbol log up to ``version``, which a stored snapshot holds.
        Returns how many log documents went."""
        await self._db.kb.update_one({"kb_id": kb_id}, {"$max": {"compacted_through": version}})
        result = await self._db.symbol_log.delete_many({"kb_id": kb_id, "kb_version": {"$lte": version}})
        return int(result.deleted_count)
