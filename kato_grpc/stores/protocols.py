"""The seams between the transaction runner and its stores (``kato_grpc/runner.py``).

Each Protocol has a real implementation (Redis: ``redis_sessions.py``; MongoDB:
``mongo_patterns.py``) and an in-memory twin (``memory.py``) for the replay tool and fast tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kato_grpc.internal.v1 import session_pb2 as storage


@dataclass(frozen=True, slots=True)
class Loaded:
    state: storage.SessionState  # without pending writes: those are ``outbox``
    version: int
    record: storage.RequestRecord | None  # what this request_id did before, if anything
    outbox: storage.Outbox | None  # writes committed but maybe not applied yet
    outbox_version: int = 0
    kb_version: int | None = None  # the node's published KB version, when asked for


class CasResult:
    OK = 1
    CONFLICT = 0
    GONE = -1


@dataclass(frozen=True, slots=True)
class Applied:
    """How many writes of a batch this call applied, and the KB version afterwards."""

    count: int
    version: int


class SessionStore(Protocol):
    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None: ...

    async def compare_and_set(
        self,
        state: storage.SessionState,
        expected_version: int | None,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        clear_outbox: bool = False,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
    ) -> int: ...

    async def drop_outbox(self, session_id: str, version: int) -> bool: ...

    async def publish_kb_version(self, kb_id: str, version: int) -> None: ...


class PatternStore(Protocol):
    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied: ...

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None: ...

    def is_permanent(self, error: BaseException) -> bool:
        """True when the store refuses a write for good (retrying cannot help)."""
        ...
