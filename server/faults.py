"""Fault injection for the crash test (``KATO_FAULT_CRASH_AFTER_COMMIT``; never in production).

A pattern-store wrapper whose first write kills the process: the session commit that carried
the writes has happened, their MongoDB application has not — the window exactly-once learning
must survive. It wraps the store the runner is given; the request path knows nothing of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kato_grpc.stores.protocols import Applied, PatternStore
from kato_grpc.v1 import engine_pb2 as pb

CRASH_EXIT_CODE = 86


class CrashBeforeApply:
    def __init__(self, inner: PatternStore) -> None:
        self._inner = inner

    async def apply_many(self, kb_id: str, writes: Sequence[pb.PatternWrite]) -> Applied:
        os._exit(CRASH_EXIT_CODE)

    async def dead_letter(self, kb_id: str, write: pb.PatternWrite, error: BaseException) -> None:
        await self._inner.dead_letter(kb_id, write, error)

    def is_permanent(self, error: BaseException) -> bool:
        return self._inner.is_permanent(error)
