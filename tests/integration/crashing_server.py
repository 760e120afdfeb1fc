"""A one-process server whose pattern store dies on its first write (the crash test).

    python -m tests.integration.crashing_server   (settings from KATO_* like ``python -m server``)

The runner applies writes through ``CrashBeforeApply``: the session commit that carried the
writes has happened, their MongoDB application has not — the window exactly-once learning must
survive. The fault is given to the server as an argument (``KatoServer``'s
``wrap_pattern_store``); nothing in the service knows of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from kato_grpc import logs
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.protocols import Applied, PatternStore
from server.app import serve

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


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    assert settings.redis_url and settings.mongodb_uri, "the crash test gives its stores"
    asyncio.run(serve(settings, settings.redis_url, settings.mongodb_uri, CrashBeforeApply))


if __name__ == "__main__":
    main()
