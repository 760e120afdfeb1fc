"""The sessions a server process last committed or loaded to commit on (architecture.md §3,
"One round trip"): what lets the transaction runner skip a call's load.

An entry is a hint, never the truth: the runner commits from it only through the session
store's ``commit_or_load``, which checks in the same atomic step everything the skipped load
would have let the runner check, and answers with a load when anything differs. So a stale
entry — the session changed, was deleted or expired, or its KB moved on in another process —
costs that reply, never a wrong commit; and a crash loses nothing but speed.

Entries hold the state message itself, not its bytes: the runner hands it to transitions,
which never change their input (architecture.md §2), and caches only states nobody changes
after (a committed one, or one loaded for a transaction). A session id is never reused (128
random bits; CreateSession refuses an existing one), so a version names one state for good.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kato_grpc.internal.v1 import session_pb2 as storage


@dataclass(frozen=True, slots=True)
class CachedSession:
    state: storage.SessionState  # without pending writes: those travelled as the outbox
    version: int
    size: int  # serialized bytes: what the budget counts
    # Another process changed the session lately (its calls alternate between processes):
    # a copy would mostly be stale, and a stale copy costs a transition run for nothing, so
    # its calls load first until a load finds the version this process left.
    shared: bool = False


class SessionCache:
    """At most ``max_sessions`` entries and ``max_bytes`` serialized bytes of state, the least
    recently used going first; a state larger than the whole budget is not kept. A budget of
    0 keeps nothing (every call loads)."""

    def __init__(self, max_bytes: int, max_sessions: int) -> None:
        self._max_bytes = max_bytes
        self._max_sessions = max_sessions
        self._entries: OrderedDict[str, CachedSession] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> CachedSession | None:
        found = self._entries.get(session_id)
        if found is not None:
            self._entries.move_to_end(session_id)
        return found

    def put(self, state: storage.SessionState, version: int, size: int, *, shared: bool = False) -> None:
        """Keep ``state``, stored at ``version``, as its session's entry."""
        self.forget(state.session_id)
        if size > self._max_bytes or not self._max_bytes or not self._max_sessions:
            return
        self._entries[state.session_id] = CachedSession(state, version, size, shared)
        self.bytes += size
        while self.bytes > self._max_bytes or len(self._entries) > self._max_sessions:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def forget(self, session_id: str) -> None:
        found = self._entries.pop(session_id, None)
        if found is not None:
            self.bytes -= found.size
