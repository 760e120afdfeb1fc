"""The pattern store's learns: knowledge bases in MongoDB, written exactly once per PatternWrite
(the runner's ``PatternStore``; the other concerns are classes of their own, ``mongo_store.py``).

One database, collections keyed by ``kb_id`` (= node_id, D-28):

- ``patterns``  {kb_id, name} unique: events, length, frequency, emotives (window of
  observation records as [key, value] pairs), metadata ([key, value] pairs, a set),
  ``kb_version`` of the last change;
- ``symbol_log`` {kb_id, kb_version}: per committed batch, the symbol-statistics changes of its
  learns in order (counts, whether the pattern was new, affinity deltas). Caches replay it,
  so statistics cost one insert per batch instead of one upsert per symbol, and floats add up
  in exactly the order the in-memory KB adds them;
- ``vectors``   {kb_id, name} unique: values, kb_version;
- ``kb``        {kb_id} unique: version (monotonic, survives clears), totals, reload_version;
- ``kb_events`` {kb_id, kb_version}: every committed change for WatchKnowledgeBase — a batch's
  learns (pattern names, new or not) or an update, delete or wipe. A wipe keeps them (a
  watcher behind it still sees what came before); they are not compacted yet;
- ``ledger``    {_id: write_id}: PatternWrites already applied;
- ``kb_snapshots`` {kb_id, version, part}: the newest snapshot of a KB (``mongo_snapshots.py``);
- ``deployment`` {_id: "deployment"}: the database's id (``mongo_store.py``);
- ``dead_letters`` {_id: write_id}: writes MongoDB refused for good (``is_permanent``), kept
  for operators with the error and the write's size — never retried, never silently dropped.

A write is applied in one multi-document transaction — ledger record, KB version bump,
pattern upsert, symbol statistics, totals — so a crash leaves all or nothing, and a second
application finds the ledger record and does nothing. Bumping the ``kb`` document first makes
concurrent writes to one KB conflict and retry, so versions are handed out in commit order
and an incremental cache refresh (``kb_version > cached``) never skips a write.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError

from kato_grpc.engine import importing
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import mongo_admin as admin
from kato_grpc.stores.mongo_client import MongoDatabase
from kato_grpc.stores.mongo_docs import (
    Accumulated,
    Doc,
    accumulate,
    accumulated,
    pattern_doc,
    pattern_op,
    symbol_log_parts,
)
from kato_grpc.stores.mongo_docs import (
    learns as learn_count,
)
from kato_grpc.stores.mongo_errors import described, error_codes, is_duplicate, is_permanent, mapped
from kato_grpc.stores.mongo_reads import kb_version
from kato_grpc.stores.protocols import Applied

DUPLICATE_RETRIES = 5
# The write itself is kept in a dead letter up to this size (its summary always).
DEAD_LETTER_WRITE_BYTES = 1024 * 1024


class MongoLearns:
    """``PatternStore``: PatternWrites applied in transactions, once each (the ledger)."""

    def __init__(self, database: MongoDatabase) -> None:
        self._database = database
        self._db = database.db

    @mapped
    async def apply(self, kb_id: str, write: storage.PatternWrite) -> bool:
        """Apply one PatternWrite exactly once. True if this call applied it."""
        return (await self.apply_many(kb_id, [write])).count == 1

    @mapped
    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        """Apply PatternWrites in order, each exactly once, in one transaction of bulk
        operations (a handful of round trips however many writes)."""
        if not writes:
            return Applied(0, await kb_version(self._db, kb_id))
        # Ids repeated inside one batch are applied once, like a retry.
        unique: dict[str, storage.PatternWrite] = {}
        for w in writes:
            unique.setdefault(w.write_id or f"anon-{len(unique)}", w)
        return await self._apply(kb_id, list(unique.values()), None)

    @mapped
    async def apply_batch(self, kb_id: str, batch_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        """Apply writes that are only ever applied together (an import's batch) once, under
        one ledger record for all of them: half the documents of a per-write ledger."""
        return await self._apply(kb_id, list(writes), batch_id)

    async def _apply(self, kb_id: str, batch: list[storage.PatternWrite], batch_id: str | None) -> Applied:
        try:
            # Optimistic: the batch is new (the common case), so the ledger insert comes first
            # and no lookup round trip is spent.
            return await self._database.transaction(
                lambda s: self._apply_in(s, kb_id, batch, check=False, batch_id=batch_id)
            )
        except (DuplicateKeyError, BulkWriteError) as exc:
            if not is_duplicate(exc):
                raise
        # Part of the batch is in the ledger already (a retry), or another transaction created
        # one of its patterns meanwhile: check the ledger, re-read, try again.
        for attempt in range(DUPLICATE_RETRIES):
            try:
                return await self._database.transaction(
                    lambda s: self._apply_in(s, kb_id, batch, check=True, batch_id=batch_id)
                )
            except (DuplicateKeyError, BulkWriteError) as exc:
                if not is_duplicate(exc) or attempt == DUPLICATE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def is_permanent(self, error: BaseException) -> bool:
        return is_permanent(error)

    @mapped
    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        """Keep a write MongoDB refused for good where operators can see it (idempotent)."""
        size = write.ByteSize()
        doc: Doc = {
            "kb_id": kb_id,
            "name": write.name,
            "error": described(error),
            "codes": sorted(error_codes(error)),
            "write_bytes": size,
            "time": datetime.datetime.now(datetime.UTC),
        }
        if size <= DEAD_LETTER_WRITE_BYTES:
            doc["write"] = write.SerializeToString()
        await self._db.dead_letters.update_one({"_id": write.write_id}, {"$setOnInsert": doc}, upsert=True)

    async def _apply_in(
        self,
        s: AsyncClientSession,
        kb_id: str,
        writes: Sequence[storage.PatternWrite],
        *,
        check: bool,
        batch_id: str | None = None,
    ) -> Applied:
        """``batch_id``: the writes are one ledger record (all or none of them applied);
        otherwise each write's id is its own."""
        db = self._db
        todo = list(writes)
        if check:  # some of the batch may be in the ledger already (a retry after a crash)
            ids = [batch_id] if batch_id else [w.write_id for w in writes if w.write_id]
            seen = {doc["_id"] async for doc in db.ledger.find({"_id": {"$in": ids}}, {"_id": 1}, session=s)}
            todo = [] if batch_id in seen else [w for w in writes if not w.write_id or w.write_id not in seen]
            if not todo:
                kb = await db.kb.find_one({"kb_id": kb_id}, {"version": 1}, session=s)
                return Applied(0, int(kb["version"]) if kb else 0)
        ids = [batch_id] if batch_id else [w.write_id for w in todo if w.write_id]
        ledger = [{"_id": i, "kb_id": kb_id} for i in ids]
        if ledger:
            await db.ledger.insert_many(ledger, ordered=True, session=s)
        learns = [w for w in todo if w.name]
        # Which learns create their pattern is read before the version bump so the KB totals
        # ride along with it (one operation fewer per call). A pattern created concurrently
        # after this read makes the insert below fail, and the whole batch is retried.
        new_flags, known = await self._known(s, kb_id, learns)
        frequencies = {name: int(doc.get("frequency", 0)) for name, doc in known.items()}
        totals = {
            "total_unique_patterns": sum(new_flags),
            "total_pattern_frequencies": sum(map(learn_count, learns)),
            "symbol_frequencies": sum(sum(w.symbol_counts.values()) for w in learns),
        }
        imported = any(w.frequency for w in learns)
        if imported:  # the batch's own increments first: their sum must fit the $inc below
            importing.check_counters(todo, importing.Counters(frequencies, 0, 0))
        kb = await admin.bump(self._db, s, kb_id, totals if learns else None)
        version = int(kb["version"])
        if imported:  # an import: no counter past its bound (D-30)
            before = importing.Counters(
                frequencies,
                int(kb.get("total_pattern_frequencies", 0)) - totals["total_pattern_frequencies"],
                int(kb.get("symbol_frequencies", 0)) - totals["symbol_frequencies"],
            )
            importing.check_counters(todo, before)  # raising aborts the transaction
        vector_ops = [
            UpdateOne(
                {"kb_id": kb_id, "name": pv.name},
                {"$setOnInsert": {"values": list(pv.vector.values), "kb_version": version}},
                upsert=True,
            )
            for w in todo
            for pv in w.vectors
        ]
        if vector_ops:
            await db.vectors.bulk_write(vector_ops, ordered=True, session=s)
        if learns:
            await self._write_patterns(s, kb_id, learns, new_flags, known, version)
            await db.symbol_log.insert_many(symbol_log_parts(kb_id, version, learns, new_flags), session=s)
            learned = [[w.name, new] for w, new in zip(learns, new_flags, strict=True)]
            await db.kb_events.insert_one({"kb_id": kb_id, "kb_version": version, "learns": learned}, session=s)
        return Applied(len(todo), version)

    async def _known(
        self, s: AsyncClientSession, kb_id: str, learns: Sequence[storage.PatternWrite]
    ) -> tuple[list[bool], dict[str, Doc]]:
        """True for each learn that creates its pattern (the first learn of a name in the batch
        that the KB does not have yet), and the documents of those it has: their frequency and,
        when a learn adds to them, their emotive window and metadata."""
        if not learns:
            return [], {}
        names = sorted({w.name for w in learns})
        fields = {"name": 1, "frequency": 1}
        if any(w.emotives or w.metadata or w.affinity_delta for w in learns):
            fields |= {"emotives": 1, "metadata": 1, "affinity": 1}
        cursor = self._db.patterns.find({"kb_id": kb_id, "name": {"$in": names}}, fields, session=s)
        docs = {doc["name"]: doc async for doc in cursor}
        known = set(docs)
        flags: list[bool] = []
        for w in learns:
            flags.append(w.name not in known)
            known.add(w.name)
        return flags, docs

    async def _write_patterns(
        self,
        s: AsyncClientSession,
        kb_id: str,
        learns: Sequence[storage.PatternWrite],
        new_flags: Sequence[bool],
        known: Mapping[str, Doc],
        version: int,
    ) -> None:
        """Write the batch's patterns: those the KB does not have yet as whole documents (one
        cheap bulk insert, the common case when training), the rest updated in batch order.
        Emotive windows and metadata are folded in batch order from what the KB holds."""
        state: dict[str, Accumulated] = {}
        inserts: list[Doc] = []
        updates: list[UpdateOne] = []
        for w, new in zip(learns, new_flags, strict=True):
            after: Accumulated | None = None
            affinity: dict[str, float] = {}
            if new or w.emotives or w.metadata or w.affinity_delta:
                before = state[w.name] if w.name in state else accumulated(known.get(w.name))
                after, affinity = accumulate(before, w)
                state[w.name] = after
            if new:
                assert after is not None
                inserts.append(pattern_doc(kb_id, w, version, after, affinity))
            else:
                updates.append(pattern_op(kb_id, w, version, after, affinity))
        if inserts:
            await self._db.patterns.insert_many(inserts, ordered=True, session=s)
        if updates:
            await self._db.patterns.bulk_write(updates, ordered=True, session=s)
