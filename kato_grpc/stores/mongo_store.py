"""The pattern side on MongoDB, built from one client: one object per concern, each the real
implementation of its Protocol in ``protocols.py`` (architecture.md §4). The composition root
(``server/kato_server/app.py``) hands each use case the ones it needs; nothing else of the
service imports a MongoDB class or the driver."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Awaitable, Callable, Sequence

from bson.binary import UUID_SUBTYPE, Binary
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from kato_grpc.stores.mongo_admin import MongoKbAdmin
from kato_grpc.stores.mongo_client import MongoDatabase
from kato_grpc.stores.mongo_docs import Doc
from kato_grpc.stores.mongo_errors import mapped
from kato_grpc.stores.mongo_patterns import MongoLearns
from kato_grpc.stores.mongo_reads import MongoKbEvents, MongoKbReads, MongoPatternReads
from kato_grpc.stores.mongo_snapshots import MongoSnapshots
from kato_grpc.stores.mongo_transfer import MongoKbTransfer


class MongoDeployment:
    """``DeploymentIdentity``, and the database as a whole: its indexes, whether it answers."""

    def __init__(self, database: MongoDatabase, snapshots: MongoSnapshots) -> None:
        self._database = database
        self._snapshots = snapshots

    @mapped
    async def deployment_id(self) -> str:
        """This database's id, made at its first use: what a Redis namespace is bound to."""
        doc = await self._database.db.deployment.find_one_and_update(
            {"_id": "deployment"},
            {"$setOnInsert": {"id": uuid.uuid4().hex, "created": datetime.datetime.now(datetime.UTC)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upsert with ReturnDocument.AFTER always returns the document
        return str(doc["id"])

    @mapped
    async def ping(self) -> bool:
        await self._database.client.admin.command("ping")
        return True

    @mapped
    async def ensure_indexes(self) -> None:
        db = self._database.db
        await db.patterns.create_index([("kb_id", ASCENDING), ("name", ASCENDING)], unique=True)
        await db.patterns.create_index([("kb_id", ASCENDING), ("kb_version", ASCENDING)])
        await db.symbol_log.create_index([("kb_id", ASCENDING), ("kb_version", ASCENDING)])
        await db.vectors.create_index([("kb_id", ASCENDING), ("name", ASCENDING)], unique=True)
        await db.kb.create_index([("kb_id", ASCENDING)], unique=True)
        await db.kb_events.create_index([("kb_id", ASCENDING), ("kb_version", ASCENDING)])
        await self._snapshots.ensure_indexes()


class MongoTransactionSessions:
    """``TransactionSessions``: ending the logical sessions a dead process left transactions in."""

    def __init__(self, client: AsyncMongoClient[Doc]) -> None:
        self._client = client

    @mapped
    async def end_sessions(self, session_ids: Sequence[bytes]) -> None:
        """End these logical sessions, aborting any transaction left open in them."""
        if session_ids:
            await self._client.admin.command("killSessions", [{"id": Binary(i, UUID_SUBTYPE)} for i in session_ids])


class MongoStores:
    """Every concern of the pattern side on one client and database."""

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        before_transaction: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        """``before_transaction``: see ``MongoDatabase``."""
        self._database = MongoDatabase(client, database, before_transaction)
        self.db: AsyncDatabase[Doc] = self._database.db  # for tools and tests that read documents
        self.snapshots = MongoSnapshots(self.db)
        self.learns = MongoLearns(self._database)
        self.reads = MongoKbReads(self.db, self.snapshots)
        self.patterns = MongoPatternReads(self.db)
        self.admin = MongoKbAdmin(self._database)
        self.transfer = MongoKbTransfer(self.db, self.learns)
        self.events = MongoKbEvents(self.db)
        self.deployment = MongoDeployment(self._database, self.snapshots)
        self.sessions = MongoTransactionSessions(client)

    async def close(self) -> None:
        await self._database.client.close()
