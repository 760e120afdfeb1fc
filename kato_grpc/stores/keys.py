"""The names of the keys a deployment owns in its session store, under its namespace.

Both session stores use them — Redis (``redis_sessions.py``, which says what each key holds)
and its in-memory twin (``memory_sessions.py``) — so that two deployments sharing one server
never see each other's keys, in either (architecture.md §4). No driver here: the settings and
the twin import it without the Redis client.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "kato"
# A namespace is part of every key's text: nothing in it may look like a hash tag or a separator.
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def namespace_for(database: str) -> str:
    """The default namespace of a deployment whose MongoDB database is ``database``: the name
    itself when it can be one (``kato`` keeps the keys every earlier version wrote), else a
    digest of it — different databases, different namespaces, either way."""
    if NAMESPACE.fullmatch(database):
        return database
    return "db-" + hashlib.sha256(database.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Keys:
    """The name of every key the service owns in Redis, under one deployment's namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not NAMESPACE.fullmatch(self.namespace):
            raise ValueError(f"a Redis namespace is 1-64 of A-Z a-z 0-9 _ . - (got {self.namespace!r})")

    def state(self, session_id: str) -> str:
        return f"{self.namespace}:{{{session_id}}}:state"

    def outbox(self, session_id: str) -> str:
        return f"{self.namespace}:{{{session_id}}}:outbox"

    @property
    def due(self) -> str:
        return f"{self.namespace}:outbox:due"

    @property
    def deployment(self) -> str:
        return f"{self.namespace}:deployment"

    @property
    def transaction_owners(self) -> str:
        return f"{self.namespace}:txn:owners"

    def transaction_lease(self, process: str) -> str:
        return f"{self.namespace}:txn:lease:{process}"

    def kb_version(self, kb_id: str) -> str:
        return f"{self.namespace}:kb:{{{kb_id}}}:version"

    def scoped(self, kind: str, node_id: str, principal: str, request_id: str) -> str:
        """The key of a request record that belongs to a node, not a session (CreateSession, a
        node's ClearKnowledgeBase): scoped by node and caller, the id itself hashed."""
        digest = hashlib.sha256(f"{principal}\0{request_id}".encode()).hexdigest()
        return f"{self.namespace}:{kind}:{{{node_id}}}:{digest}"
