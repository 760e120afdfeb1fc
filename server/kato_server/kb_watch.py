"""WatchKnowledgeBase: a knowledge base's committed changes, read from the pattern store.

Events are not pushed by writers: a KB's changes are read from the durable log (``kb_events``,
written in each change's transaction) after the version last read, whenever the KB's
published version moves on. So a watcher in any process sees every process's changes, a slow
one costs writers nothing, and one too far behind is told to resync instead of being fed an
unbounded backlog.

Watchers of one KB in one process share one ``_Feed``: one poll of the published version every
``POLL_SECONDS`` and one read of the log per change, whatever the number of watchers (320
watchers each polling and reading on their own made every learn 3.8x slower: the stores' work
grew with the watchers). A watcher behind what the feed holds reads the log itself until it
catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from kato_grpc import names
from kato_grpc.access import Caller
from kato_grpc.errors import InvalidArgument
from kato_grpc.settings import Settings
from kato_grpc.stores.protocols import KbEvent, KbEventLog, KbVersionBoard
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation

POLL_SECONDS = 0.1  # how often a KB's feed looks at the published version (one Redis GET)
IDLE_SECONDS = 1.0  # an idle watcher's generator yields None this often (each step is guarded)
EVENT_DOCUMENTS = 200  # log documents read per step
FEED_EVENTS = 10_000  # events a feed keeps for its watchers (the oldest versions go first)

KINDS = {
    "learned": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED,
    "relearned": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_RELEARNED,
    "updated": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_UPDATED,
    "deleted": svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED,
    "cleared": svc.KNOWLEDGE_BASE_EVENT_KIND_CLEARED,
}


class _Feed:
    """One KB's changes as this process read them: every event after ``floor`` up to
    ``version``, in version order, for the watchers here."""

    def __init__(self, version: int) -> None:
        self.floor = self.version = version
        self.events: deque[KbEvent] = deque()
        self.error: BaseException | None = None
        self.watchers = 0
        self.task: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()

    def after(self, version: int) -> list[KbEvent]:
        return [e for e in self.events if e.version > version]

    async def moved(self, timeout: float) -> bool:
        """Whether the feed moved (or failed) within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)
            return True
        return False

    def advance(self, version: int, events: list[KbEvent]) -> None:
        self.events.extend(events)
        self.version = version
        while len(self.events) > FEED_EVENTS:  # whole versions: a batch's learns stay together
            oldest = self.events[0].version
            while self.events and self.events[0].version == oldest:
                self.events.popleft()
            self.floor = oldest
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()


class KbWatch:
    def __init__(self, settings: Settings, versions: KbVersionBoard, patterns: KbEventLog) -> None:
        self.settings = settings
        self.versions = versions
        self.patterns = patterns
        self._feeds: dict[str, _Feed] = {}

    async def _version(self, node: str) -> int:
        published = await self.versions.kb_version(node)
        return published if published is not None else await self.patterns.kb_version(node)

    async def watch(
        self, req: svc.WatchKnowledgeBaseRequest, caller: Caller
    ) -> AsyncIterator[svc.WatchKnowledgeBaseResponse | None]:
        """Responses as changes commit; None when idle for a while (nothing to send)."""
        node = validation.node_id(req.name, "name")
        caller.authorize(node)
        if req.HasField("since_version") and req.since_version < 0:
            raise InvalidArgument.for_field("since_version", "must not be negative")
        last = req.since_version if req.HasField("since_version") else await self._version(node)
        feed = await self._join(node)
        try:
            async for response in self._follow(node, feed, last):
                yield response
        finally:
            self._leave(node, feed)

    async def _follow(self, node: str, feed: _Feed, last: int) -> AsyncIterator[svc.WatchKnowledgeBaseResponse | None]:
        prefix = names.pattern_prefix(node)
        idle_since = time.monotonic()
        while True:
            if feed.error is not None:
                raise feed.error
            events: list[KbEvent] = []
            if feed.version - last > self.settings.watch_max_lag:
                last = feed.version
                yield svc.WatchKnowledgeBaseResponse(resync_from_version=last)
                continue
            if last < feed.floor:  # behind what the feed holds: read the log itself
                events = await self.patterns.events_since(node, last, EVENT_DOCUMENTS)
                last = events[-1].version if events else feed.floor
            elif feed.version > last:
                events = feed.after(last)
                last = feed.version
            elif time.monotonic() - idle_since >= IDLE_SECONDS:
                idle_since = time.monotonic()
                yield None
                continue
            else:
                await feed.moved(IDLE_SECONDS)
                continue
            if events:
                yield svc.WatchKnowledgeBaseResponse(
                    events=[
                        svc.KnowledgeBaseEvent(
                            kind=KINDS[e.kind], version=e.version, pattern=prefix + e.name if e.name else ""
                        )
                        for e in events
                    ]
                )
                idle_since = time.monotonic()

    async def _join(self, node: str) -> _Feed:
        start = await self._version(node)
        # No await from here on: watchers joining together find one feed.
        feed = self._feeds.get(node)
        if feed is None or feed.error is not None:
            feed = self._feeds[node] = _Feed(start)
            feed.task = asyncio.create_task(self._poll(node, feed, self._version, self.patterns.events_since))
        feed.watchers += 1
        return feed

    def _leave(self, node: str, feed: _Feed) -> None:
        feed.watchers -= 1
        if feed.watchers == 0:
            if self._feeds.get(node) is feed:
                del self._feeds[node]
            if feed.task is not None:
                feed.task.cancel()

    @staticmethod
    async def _poll(
        node: str,
        feed: _Feed,
        version: Callable[[str], Awaitable[int]],
        events_since: Callable[[str, int, int], Awaitable[list[KbEvent]]],
    ) -> None:
        """Until its last watcher leaves: the published version every POLL_SECONDS, and the
        log after the feed's version when it moved (the same read every watcher did alone)."""
        try:
            while True:
                current = await version(node)
                if current > feed.version:
                    events = await events_since(node, feed.version, EVENT_DOCUMENTS)
                    # None: versions without events (vectors only) up to the one published.
                    feed.advance(events[-1].version if events else current, events)
                    continue
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed: every watcher of this feed gets it
            feed.fail(exc)
