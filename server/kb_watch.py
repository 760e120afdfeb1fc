"""WatchKnowledgeBase: a knowledge base's committed changes, read from the pattern store.

Events are not pushed by writers: a watcher reads the durable log (``kb_events``, written in
each change's transaction) after the version it has, whenever the KB's published version
moves on. So a watcher in any process sees every process's changes, a slow one costs writers
nothing, and one too far behind is told to resync instead of being fed an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from kato_grpc import names
from kato_grpc.access import Caller
from kato_grpc.errors import InvalidArgument
from kato_grpc.settings import Settings
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.redis_sessions import RedisSessionStore
from kato_grpc.v1 import kato_service_pb2 as svc
from server import limits

POLL_SECONDS = 0.1  # how often an idle watcher looks at the published version (one Redis GET)
IDLE_SECONDS = 1.0  # an idle watcher's generator yields None this often (each step is guarded)
EVENT_DOCUMENTS = 200  # log documents read per step

KINDS = {
    "learned": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED,
    "relearned": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_RELEARNED,
    "updated": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_UPDATED,
    "deleted": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED,
    "cleared": svc.KNOWLEDGE_BASE_EVENT_KIND_CLEARED,
}


class KbWatch:
    def __init__(self, settings: Settings, sessions: RedisSessionStore, patterns: MongoPatternStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.patterns = patterns

    async def _version(self, node: str) -> int:
        published = await self.sessions.kb_version(node)
        return published if published is not None else await self.patterns.kb_version(node)

    async def watch(
        self, req: svc.WatchKnowledgeBaseRequest, caller: Caller
    ) -> AsyncIterator[svc.WatchKnowledgeBaseResponse | None]:
        """Responses as changes commit; None when idle for a while (nothing to send)."""
        node = limits.node_id(req.name, "name")
        caller.authorize(node)
        if req.HasField("since_version") and req.since_version < 0:
            raise InvalidArgument.for_field("since_version", "must not be negative")
        last = req.since_version if req.HasField("since_version") else await self._version(node)
        prefix = names.pattern_prefix(node)
        idle_since = time.monotonic()
        while True:
            current = await self._version(node)
            if current - last > self.settings.watch_max_lag:
                last = current
                yield svc.WatchKnowledgeBaseResponse(resync_from_version=current)
            elif current > last:
                events = await self.patterns.events_since(node, last, EVENT_DOCUMENTS)
                if not events:
                    last = current  # versions without events (vectors only)
                    continue
                last = events[-1].version
                yield svc.WatchKnowledgeBaseResponse(
                    events=[
                        svc.KnowledgeBaseEvent(
                            kind=KINDS[e.kind], version=e.version, pattern=prefix + e.name if e.name else ""
                        )
                        for e in events
                    ]
                )
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= IDLE_SECONDS:
                idle_since = time.monotonic()
                yield None
            else:
                await asyncio.sleep(POLL_SECONDS)
