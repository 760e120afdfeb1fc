"""``kato.v1.KatoService`` over grpc.aio: a table of use cases behind one guard, one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast

import grpc
import structlog
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from kato_grpc.access import Caller
from kato_grpc.errors import DeadlineExceeded, KatoError, Unavailable
from kato_grpc.settings import Settings
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation
from kato_server.auth import authenticate
from kato_server.errors import as_kato_error, internal_status, to_status
from kato_server.handlers import Undecodable, decoded
from kato_server.kb_admin import KbAdmin
from kato_server.kb_stats import KbStats
from kato_server.kb_transfer import KbTransfer
from kato_server.kb_watch import KbWatch
from kato_server.observing import Observing
from kato_server.sessions import Sessions
from kato_server.stream import batches

T = TypeVar("T")
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
_END: Any = object()  # the end of a server stream's steps
STREAM_BATCH = 64
Ctx = grpc.aio.ServicerContext[Any, Any]
Call = Callable[[Any, Caller], Awaitable[Message]]  # a unary use case: (request, caller) -> response
log = structlog.get_logger("kato.rpc")


class KatoServicer:
    """``kato.v1.KatoService``: the use cases behind one guard (see ``unary_calls``)."""

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        observing: Observing,
        admin: KbAdmin,
        stats: KbStats,
        transfer: KbTransfer,
        watch: KbWatch,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.observing = observing
        self.admin = admin
        self.stats = stats
        self.transfer = transfer
        self.watch = watch
        # Shutdown: once draining, new calls are refused with UNAVAILABLE (retryable, so a
        # client goes to another replica) while the ones in flight finish.
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, grace: float) -> None:
        """Refuse new calls and wait (at most ``grace`` seconds) for those in flight."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    def _time_limit(self, context: Ctx) -> float:
        remaining = context.time_remaining()
        limit = self.settings.max_call_seconds
        return limit if remaining is None else min(remaining, limit)

    def _authenticate(self, context: Ctx) -> Caller:
        metadata = cast(Sequence[tuple[str, str | bytes]], context.invocation_metadata() or ())
        return authenticate(metadata, self.settings.auth_tokens)

    async def guard(self, rpc: str, context: Ctx, work: Callable[[Caller], Awaitable[T]]) -> T:
        """Run ``work`` for the authenticated caller: drain, deadline, auth, error mapping.
        The call's log context (``server/kato_server/calls.py``) gets the node it touched and, when it
        fails, the reason — the access line carries them."""
        self.inflight += 1
        self._idle.clear()
        caller: Caller | None = None
        try:
            if self.draining:
                raise Unavailable("the server is shutting down; retry", reason="SHUTTING_DOWN")
            # The client's deadline (and the server's own limit) bounds every store call and
            # engine computation made for it; state stays consistent when it fires (the
            # outbox carries any learn not yet applied; engine threads stop).
            async with asyncio.timeout(self._time_limit(context)) as deadline:
                caller = self._authenticate(context)
                return await work(caller)
        except TimeoutError as exc:
            error = as_kato_error(exc)
            if deadline.expired():
                error = DeadlineExceeded("the call's deadline passed", reason="DEADLINE_EXCEEDED")
            assert error is not None
            await self._abort(context, error, exc)
            raise
        except Exception as exc:
            error = as_kato_error(exc)
            if error is None:
                log.exception("unexpected error", rpc=rpc)
                structlog.contextvars.bind_contextvars(reason="INTERNAL")
                await context.abort_with_status(internal_status())
                raise  # unreachable: abort_with_status raises
            await self._abort(context, error, exc)
            raise
        finally:
            if caller is not None and caller.touched:
                structlog.contextvars.bind_contextvars(node_id=caller.touched[0])
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()

    async def _abort(self, context: Ctx, error: KatoError, cause: BaseException) -> None:
        structlog.contextvars.bind_contextvars(reason=error.reason)
        # A store failure: say which, so an operator can tell a timeout from a refusal — the
        # driver's exception itself, or the one a store's own error (StoreUnavailable) stands for.
        origin = cause if error is not cause else cause.__cause__
        if origin is not None:
            structlog.contextvars.bind_contextvars(cause=f"{type(origin).__name__}: {origin}"[:300])
        await context.abort_with_status(to_status(error))

    async def ObserveStream(  # noqa: N802 - the RPC name grpc dispatches to
        self,
        request_iterator: AsyncIterator[svc.ObserveRequest],
        context: Ctx,
    ) -> AsyncIterator[svc.ObserveResponse]:
        """One response per observation, in order. Observations already waiting for the same
        session (without request_id, all valid) are committed together: one load, one
        compare-and-set, the same responses as one by one (see ``server/kato_server/stream.py``)."""
        # Authenticate when the stream opens, before reading anything from it.
        await self.guard("ObserveStream", context, _opened)
        stream = batches(
            decoded(request_iterator),
            lambda r: validation.check_observe(r, self.settings),
            max_items=STREAM_BATCH,
            max_bytes=self.settings.stream_read_ahead_bytes,
        )
        async for batch in stream:
            if isinstance(batch, KatoError):  # answered after every observation before it
                await self.guard("ObserveStream", context, _failing(batch))
                return
            responses = await self.guard("ObserveStream", context, partial(self.observing.observe_batch, batch))
            for response in responses:
                yield response

    async def ExportKnowledgeBase(  # noqa: N802 - the RPC name grpc dispatches to
        self, request: svc.ExportKnowledgeBaseRequest | Undecodable, context: Ctx
    ) -> AsyncIterator[svc.ExportKnowledgeBaseResponse]:
        async for part in self._server_stream("ExportKnowledgeBase", request, context, self.transfer.export):
            yield part

    async def WatchKnowledgeBase(  # noqa: N802 - the RPC name grpc dispatches to
        self, request: svc.WatchKnowledgeBaseRequest | Undecodable, context: Ctx
    ) -> AsyncIterator[svc.WatchKnowledgeBaseResponse]:
        async for part in self._server_stream("WatchKnowledgeBase", request, context, self.watch.watch):
            yield part

    async def _server_stream(
        self,
        rpc: str,
        request: M | Undecodable,
        context: Ctx,
        stream: Callable[[M, Caller], AsyncIterator[R | None]],
    ) -> AsyncIterator[R]:
        """A server stream whose every step runs behind the guard (its own deadline slice: a
        large export or a watch lasts longer than one call's limit, a step never does). A
        step that yields None sends nothing (a watch that is idle)."""
        if isinstance(request, Undecodable):
            await self.guard(rpc, context, _failing(request.error()))
            return
        parts = stream(request, await self.guard(rpc, context, _caller))
        while True:
            part = await self.guard(rpc, context, lambda _c: anext(parts, _END))
            if part is _END:
                return
            if part is not None:
                yield part

    async def ImportKnowledgeBase(  # noqa: N802 - the RPC name grpc dispatches to
        self, request_iterator: AsyncIterator[svc.ImportKnowledgeBaseRequest | Undecodable], context: Ctx
    ) -> svc.ImportKnowledgeBaseResponse:
        """Each batch is applied behind the guard, as it arrives (memory: one batch)."""
        rpc = "ImportKnowledgeBase"
        run = self.transfer.start_import(await self.guard(rpc, context, _caller))
        async for request in request_iterator:
            if isinstance(request, Undecodable):
                await self.guard(rpc, context, _failing(request.error()))
            else:
                await self.guard(rpc, context, partial(_ignore_caller, run.add, request))
        result: svc.ImportKnowledgeBaseResponse = await self.guard(rpc, context, lambda _c: run.finish())
        return result

    def unary_calls(self) -> dict[str, Call]:
        """What each unary RPC does: the use case, given the decoded request and the caller.
        ``add_service`` wraps every one in ``guard`` — deadline, auth, drain and error
        mapping, in one place."""
        s, o, k, st = self.sessions, self.observing, self.admin, self.stats
        return {
            "CreateSession": s.create_session,
            "GetSession": _named(s.get_session),
            "DeleteSession": _answer(s.delete_session, empty_pb2.Empty),
            "UpdateSession": s.update_session,
            "Observe": o.observe,
            "ObserveSequence": o.observe_sequence,
            "Learn": o.learn,
            "GetPredictions": _named(o.get_predictions),
            "GetShortTermMemory": _named(o.get_stm),
            "ClearShortTermMemory": o.clear_stm,
            "GetPerceptData": _named(o.percept_data),
            "GetCognitionData": _named(o.cognition_data),
            "GetPattern": k.get_pattern,
            "ListPatterns": k.list_patterns,
            "UpdatePattern": k.update_pattern,
            "DeletePattern": _answer(k.delete_pattern, empty_pb2.Empty),
            "ClearKnowledgeBase": _answer(k.clear_knowledge_base, svc.ClearKnowledgeBaseResponse),
            "GetKnowledgeBase": st.get_knowledge_base,
            "ListKnowledgeBases": st.list_knowledge_bases,
            "GetSymbol": st.get_symbol,
            "ListSymbols": st.list_symbols,
        }


def _named(read: Callable[[str, Caller], Awaitable[Message]]) -> Call:
    """A read of the session the request's ``name`` names ("sessions/s-…")."""

    async def run(request: Any, caller: Caller) -> Message:
        return await read(validation.session_id(request.name), caller)

    return run


def _answer(call: Callable[[Any, Caller], Awaitable[None]], kind: type[Message]) -> Call:
    """A use case that answers nothing, answered with an empty ``kind``."""

    async def run(request: Any, caller: Caller) -> Message:
        await call(request, caller)
        return kind()

    return run


async def _opened(_caller: Caller) -> None:
    return None


async def _caller(caller: Caller) -> Caller:
    return caller


async def _ignore_caller(work: Callable[[Any], Awaitable[T]], arg: Any, _caller: Caller) -> T:
    return await work(arg)


def _failing(error: KatoError) -> Callable[[Caller], Awaitable[None]]:
    async def fail(_caller: Caller) -> None:
        raise error

    return fail
