"""A one-process server whose pattern store dies on its first write (the crash test).

    python -m tests.integration.crashing_server   (settings from KATO_* like ``python -m kato_server``)

The runner applies writes through ``CrashBeforeApply``: the session commit that carried the
writes has happened, their MongoDB application has not — the window exactly-once learning must
survive. With ``CRASH_IN_TRANSACTION=1`` in the environment it dies inside the write's MongoDB
transaction instead (``CrashInTransaction``), leaving it open: its ledger entry and the KB's
document written and held. The fault is given to the server as an argument (``KatoServer``'s
``wrap_pattern_store``); nothing in the service knows of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from pymongo.asynchronous.client_session import AsyncClientSession

from kato_grpc import logs
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.mongo_patterns import MongoLearns
from kato_grpc.stores.protocols import Applied, PatternStore
from kato_server.app import serve

CRASH_EXIT_CODE = 86


class CrashBeforeApply:
    def __init__(self, inner: PatternStore) -> None:
        self._inner = inner

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        os._exit(CRASH_EXIT_CODE)

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        await self._inner.dead_letter(kb_id, write, error)

    def is_permanent(self, error: BaseException) -> bool:
        return self._inner.is_permanent(error)


class CrashInTransaction(CrashBeforeApply):
    def __init__(self, inner: PatternStore) -> None:
        assert isinstance(inner, MongoLearns), "run without metrics and traces: the store itself"
        super().__init__(inner)
        self._store = inner

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        async def die_inside(session: AsyncClientSession) -> Applied:
            await self._store._apply_in(session, kb_id, writes, check=False)  # written, not committed
            os._exit(CRASH_EXIT_CODE)

        return await self._store._database.transaction(die_inside)


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    assert settings.redis_url and settings.mongodb_uri, "the crash test gives its stores"
    fault = CrashInTransaction if os.environ.get("CRASH_IN_TRANSACTION") else CrashBeforeApply
    asyncio.run(serve(settings, settings.redis_url, settings.mongodb_uri, fault))


if __name__ == "__main__":
    main()
