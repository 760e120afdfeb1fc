"""ObserveStream's batching: consecutive observations of one session, committed together.

A reader task reads the client's messages ahead — at most ``max_items`` messages and
``max_bytes`` bytes of them (one message always fits), so a client cannot make the server
buffer more than that — and ``batches`` groups what is already waiting: messages for the
same session, without request_id, each passing the same checks as a unary Observe
(``check``). A message that fails them is served alone, after every message before it, so
its error never costs the valid observations queued ahead of it.

When a stream is cancelled, at most the batch being committed (≤ ``max_items`` messages,
≤ ``max_bytes``) may be applied without its answers reaching the client; messages read
ahead but not yet in a batch are dropped unapplied.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from kato_grpc.errors import KatoError
from kato_grpc.v1 import kato_service_pb2 as svc

T = TypeVar("T")
_END = object()


class ReadAhead(Generic[T]):
    """A queue bounded in messages and in bytes (single producer, single consumer)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: collections.deque[tuple[T | object, int]] = collections.deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._taken = asyncio.Event()
        self._added = asyncio.Event()

    def _room_for(self, size: int) -> bool:
        return not self._items or (len(self._items) < self._max_items and self._bytes + size <= self._max_bytes)

    async def put(self, item: T | object, size: int) -> None:
        while not self._room_for(size):
            self._taken.clear()
            await self._taken.wait()
        self._items.append((item, size))
        self._bytes += size
        self._added.set()

    async def get(self) -> T | object:
        while not self._items:
            self._added.clear()
            await self._added.wait()
        return self._take()

    def get_nowait(self) -> T | object | None:
        """The next item if one is waiting (None otherwise)."""
        return self._take() if self._items else None

    def _take(self) -> T | object:
        item, size = self._items.popleft()
        self._bytes -= size
        self._taken.set()
        return item


async def batches(
    requests: AsyncIterator[svc.ObserveRequest],
    check: Callable[[svc.ObserveRequest], object],
    *,
    max_items: int,
    max_bytes: int,
) -> AsyncIterator[list[svc.ObserveRequest] | KatoError]:
    """Batches of valid observations in order; an invalid message or an undecodable one
    (raised by ``requests``) comes out as its error, after everything before it."""
    queue: ReadAhead[svc.ObserveRequest | KatoError] = ReadAhead(max_items, max_bytes)

    async def read() -> None:
        try:
            async for request in requests:
                await queue.put(request, request.ByteSize())
        except KatoError as exc:
            await queue.put(exc, 0)
        finally:
            await queue.put(_END, 0)

    reader = asyncio.create_task(read())
    try:
        carried: list[object] = []
        while True:
            first = carried.pop() if carried else await queue.get()
            if first is _END:
                return
            if isinstance(first, KatoError):
                yield first
                return
            assert isinstance(first, svc.ObserveRequest)
            try:
                check(first)
            except KatoError as exc:
                yield exc
                return
            batch = [first]
            while not first.request_id and len(batch) < max_items:
                nxt = queue.get_nowait()
                if nxt is None:
                    break
                if not isinstance(nxt, svc.ObserveRequest) or not _joins(nxt, first, check):
                    carried.append(nxt)
                    break
                batch.append(nxt)
            yield batch
    finally:
        reader.cancel()


def _joins(
    request: svc.ObserveRequest, first: svc.ObserveRequest, check: Callable[[svc.ObserveRequest], object]
) -> bool:
    """May ``request`` be committed in ``first``'s batch? Same session, no request id, valid."""
    if request.name != first.name or request.request_id:
        return False
    try:
        check(request)
    except KatoError:
        return False
    return True
