"""The database every MongoDB store class of the pattern side works in (``mongo_store.py``
builds them all from one of these): majority reads and writes, and the one way they run a
transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from kato_grpc.stores.mongo_docs import Doc

R = TypeVar("R")


class MongoDatabase:
    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        before_transaction: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        """``before_transaction`` is given the logical session id of every transaction before
        it starts (``transaction_owners.py``: a dead process's open ones can then be ended)."""
        self.client = client
        self.db: AsyncDatabase[Doc] = client.get_database(
            database, write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority")
        )
        self._before_transaction = before_transaction

    async def transaction(self, work: Callable[[AsyncClientSession], Awaitable[R]]) -> R:
        """Run ``work`` in one majority-committed transaction (retried by the driver on
        transient errors). Every write to a KB's documents goes through here."""
        async with self.client.start_session() as session:
            if self._before_transaction is not None:
                await self._before_transaction(bytes(session.session_id["id"]))
            result: R = await session.with_transaction(
                work, write_concern=WriteConcern("majority"), read_concern=ReadConcern("snapshot")
            )
            return result
