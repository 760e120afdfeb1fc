"""The whole service in process over the in-memory twins (architecture.md §4, "Assembly").

``Kato`` is what ``server/kato_server/assembly.py`` builds — runner, KB cache, engine threads,
use cases, servicer, relay — over an ``InMemorySessionStore`` whose clock the test moves
(``Clock``, the KB cache's too) and an ``InMemoryPatternStore`` behind every pattern-side
Protocol; the runner's applies go through ``Applies``, which a test can take down to cut a call
off after its commit. ``Kato(sharing=other)`` is a second process of the same deployment.
No subprocess, no port: the use cases are called as the servicer's table calls them, with a
``Caller``; the stream RPCs through the servicer's own methods with a ``Context`` double.

Left to the integration tests (tests/integration/, real servers): what only the real stores or
the gRPC process do — Redis Cluster slots and failover, replication (WAIT), the Lua scripts,
MongoDB transactions, the transaction reaper and snapshots in parts, the namespace claim at
start-up, health and shutdown, and the wire: decoding, message limits, authentication from
metadata, deadlines, interceptors and metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar, cast

import grpc

from kato_grpc import names
from kato_grpc.access import ANYONE, Caller
from kato_grpc.errors import StoreUnavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.memory import InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.stores.protocols import Applied, PatternStore
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server.assembly import PatternStores, Service, assemble
from kato_server.servicer import KatoServicer

T = TypeVar("T")
KB = "kb1"


class Clock:
    """The session store's clock (seconds): TTLs and the relay's due marks follow it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Applies:
    """The runner's pattern store: the twin, unless ``down`` — then every apply fails as an
    unreachable MongoDB does, after the session's commit (the outbox stays)."""

    def __init__(self, store: PatternStore) -> None:
        self.store = store
        self.down = False

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        if self.down:
            raise StoreUnavailable("the pattern store does not answer (test)")
        return await self.store.apply_many(kb_id, writes)

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        await self.store.dead_letter(kb_id, write, error)

    def is_permanent(self, error: BaseException) -> bool:
        return self.store.is_permanent(error)


class AbortedCall(Exception):
    """What ``Context.abort_with_status`` raises (grpc's abort raises too)."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.code, status.details)
        self.status = status


class Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses: no deadline, the call's
    metadata, and an abort that records its status."""

    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.metadata = tuple(metadata)
        self.status: grpc.Status | None = None

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise AbortedCall(status)


def settings(**overrides: Any) -> Settings:
    """The service's defaults, without the process-wide memory policy (gc.freeze, malloc_trim)."""
    return Settings(gc_freeze=False, malloc_trim=False, engine_threads=2, **overrides)


class Kato:
    def __init__(self, config: Settings | None = None, *, sharing: Kato | None = None) -> None:
        """``sharing``: another process of the same deployment — the stores and the clock are
        that one's, everything a process holds in memory (runner, caches) its own."""
        self.settings = config or settings()
        self.clock: Clock = sharing.clock if sharing is not None else Clock()
        self.session_store: InMemorySessionStore = (
            sharing.session_store if sharing is not None else InMemorySessionStore(clock=self.clock)
        )
        self.pattern_store: InMemoryPatternStore = (
            sharing.pattern_store if sharing is not None else InMemoryPatternStore()
        )
        self.applies = Applies(self.pattern_store)
        p = self.pattern_store
        self.service: Service = assemble(
            self.settings,
            self.session_store,
            PatternStores(learns=self.applies, reads=p, patterns=p, admin=p, transfer=p, events=p, snapshots=p),
            clock=self.clock,  # the KB cache checks MongoDB's version when the test's time says so
        )
        use: KatoServicer = self.service.servicer
        self.use = use

    def run(self, test: Coroutine[Any, Any, T]) -> T:
        """Run ``test`` on a new event loop; this service's applies in flight finish first."""

        async def main() -> T:
            result = await test
            await self.service.runner.applier.drain(float("inf"))
            return result

        return asyncio.run(main())

    def close(self) -> None:
        self.service.engine.close()

    # --- calls a test makes often -------------------------------------------------------------

    async def create(self, kb: str = KB, caller: Caller = ANYONE, **fields: Any) -> svc.Session:
        session = svc.Session(knowledge_base=names.knowledge_base(kb), **fields)
        return await self.use.sessions.create_session(svc.CreateSessionRequest(session=session), caller)

    async def observe(
        self, session: str, *strings: str, request_id: str = "", predictions: bool = False, caller: Caller = ANYONE
    ) -> svc.ObserveResponse:
        request = svc.ObserveRequest(
            name=session,
            observation=pb.Observation(strings=list(strings)),
            request_id=request_id,
            return_predictions=predictions,
        )
        return await self.use.observing.observe(request, caller)

    async def learn(self, session: str, request_id: str = "", caller: Caller = ANYONE) -> svc.LearnResponse:
        return await self.use.observing.learn(svc.LearnRequest(name=session, request_id=request_id), caller)

    async def learned(self, session: str, *events: Iterable[str]) -> str:
        """Observe ``events`` (one symbol list each) and learn them: the pattern's name."""
        for event in events:
            await self.observe(session, *event)
        learned = await self.learn(session)
        assert learned.status == svc.LEARN_STATUS_LEARNED
        return learned.pattern

    async def etag(self, session: str) -> str:
        return (await self.use.sessions.get_session(session_id(session), ANYONE)).etag

    def frequency(self, pattern: str) -> int:
        """A pattern's frequency in the pattern store's twin (0: not there)."""
        node, sha1 = pattern.removeprefix("knowledgeBases/").rsplit("/patterns/", 1)
        record = self.pattern_store.kb(node).pattern(sha1)
        return 0 if record is None else record.frequency


def session_id(name: str) -> str:
    return name.removeprefix("sessions/")


async def collect(parts: AsyncIterator[T]) -> list[T]:
    return [part async for part in parts]


async def items(values: Iterable[T]) -> AsyncIterator[T]:
    """A client stream whose messages are all sent at once (they wait together server-side)."""
    for value in values:
        yield value


async def expect(call: Awaitable[object], error: type[BaseException]) -> BaseException:
    """The error ``call`` raises; AssertionError when it raises another or none."""
    try:
        await call
    except error as exc:
        return exc
    raise AssertionError(f"expected {error.__name__}")


def stream_context() -> grpc.aio.ServicerContext[Any, Any]:
    return cast(grpc.aio.ServicerContext[Any, Any], Context())
