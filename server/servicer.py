"""``kato.v1.KatoService`` over grpc.aio: thin methods around the shell, one error mapping."""

# ruff: noqa: N802 - method names are the RPC names grpc dispatches to

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar, cast

import grpc
import structlog
from google.protobuf import empty_pb2

from kato_grpc.errors import DeadlineExceeded, KatoError, Unavailable
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from server import limits
from server.auth import authenticate
from server.errors import as_kato_error, internal_status, to_status
from server.handlers import decoded
from server.kb_admin import KbAdmin
from server.shell import KatoShell
from server.stream import batches

T = TypeVar("T")
STREAM_BATCH = 64
Ctx = grpc.aio.ServicerContext[Any, Any]
log = structlog.get_logger("kato.rpc")


def _request_id(context: Ctx) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and len(value) <= 128:
            return value
    return uuid.uuid4().hex


class KatoServicer(svc_grpc.KatoServiceServicer):
    def __init__(self, shell: KatoShell, admin: KbAdmin) -> None:
        self.shell = shell
        self.admin = admin
        self.settings = shell.settings
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

    def _authenticate(self, context: Ctx) -> None:
        metadata = cast(Sequence[tuple[str, str | bytes]], context.invocation_metadata() or ())
        authenticate(metadata, self.settings.auth_tokens)

    async def _guard(self, rpc: str, context: Ctx, work: Awaitable[T]) -> T:
        with structlog.contextvars.bound_contextvars(rpc=rpc, request_id=_request_id(context)):
            self.inflight += 1
            self._idle.clear()
            try:
                if self.draining:
                    raise Unavailable("the server is shutting down; retry", reason="SHUTTING_DOWN")
                # The client's deadline (and the server's own limit) bounds every store call and
                # engine computation made for it; state stays consistent when it fires (the
                # outbox carries any learn not yet applied; engine threads stop).
                async with asyncio.timeout(self._time_limit(context)) as deadline:
                    self._authenticate(context)
                    return await work
            except TimeoutError as exc:
                _discard(work)
                error = as_kato_error(exc)
                if deadline.expired():
                    error = DeadlineExceeded("the call's deadline passed", reason="DEADLINE_EXCEEDED")
                assert error is not None
                await context.abort_with_status(to_status(error))
                raise
            except Exception as exc:
                _discard(work)
                error = as_kato_error(exc)
                if error is None:
                    log.exception("unexpected error")
                    await context.abort_with_status(internal_status())
                    raise  # unreachable: abort_with_status raises
                log.info("request failed", code=error.code, reason=error.reason)
                await context.abort_with_status(to_status(error))
                raise
            finally:
                self.inflight -= 1
                if not self.inflight:
                    self._idle.set()

    async def CreateSession(self, request: svc.CreateSessionRequest, context: Ctx) -> svc.Session:
        return await self._guard("CreateSession", context, self.shell.create_session(request))

    async def GetSession(self, request: svc.GetSessionRequest, context: Ctx) -> svc.Session:
        return await self._guard("GetSession", context, self.shell.get_session(request.session_id))

    async def DeleteSession(self, request: svc.DeleteSessionRequest, context: Ctx) -> empty_pb2.Empty:
        await self._guard("DeleteSession", context, self.shell.delete_session(request.session_id))
        return empty_pb2.Empty()

    async def ExtendSession(self, request: svc.ExtendSessionRequest, context: Ctx) -> svc.Session:
        return await self._guard("ExtendSession", context, self.shell.extend_session(request))

    async def UpdateSessionConfig(self, request: svc.UpdateSessionConfigRequest, context: Ctx) -> svc.Session:
        return await self._guard("UpdateSessionConfig", context, self.shell.update_config(request))

    async def Observe(self, request: svc.ObserveRequest, context: Ctx) -> svc.ObserveResponse:
        return await self._guard("Observe", context, self.shell.observe(request))

    async def ObserveSequence(self, request: svc.ObserveSequenceRequest, context: Ctx) -> svc.ObserveSequenceResponse:
        return await self._guard("ObserveSequence", context, self.shell.observe_sequence(request))

    async def ObserveStream(
        self,
        request_iterator: AsyncIterator[svc.ObserveRequest],
        context: Ctx,
    ) -> AsyncIterator[svc.ObserveResponse]:
        """One response per observation, in order. Observations already waiting for the same
        session (without request_id, all valid) are committed together: one load, one
        compare-and-set, the same responses as one by one (see ``server/stream.py``)."""
        # Authenticate when the stream opens, before reading anything from it.
        await self._guard("ObserveStream", context, _noop())
        stream = batches(
            decoded(request_iterator),
            lambda r: limits.check_observe(r, self.settings),
            max_items=STREAM_BATCH,
            max_bytes=self.settings.stream_read_ahead_bytes,
        )
        async for batch in stream:
            if isinstance(batch, KatoError):  # answered after every observation before it
                await self._guard("ObserveStream", context, _raise(batch))
                return
            responses = await self._guard("ObserveStream", context, self.shell.observe_batch(batch))
            for response in responses:
                yield response

    async def Learn(self, request: svc.LearnRequest, context: Ctx) -> svc.LearnResponse:
        return await self._guard("Learn", context, self.shell.learn(request))

    async def GetPredictions(self, request: svc.GetPredictionsRequest, context: Ctx) -> svc.GetPredictionsResponse:
        return await self._guard("GetPredictions", context, self.shell.get_predictions(request.session_id))

    async def GetShortTermMemory(self, request: svc.GetShortTermMemoryRequest, context: Ctx) -> svc.ShortTermMemory:
        return await self._guard("GetShortTermMemory", context, self.shell.get_stm(request.session_id))

    async def ClearShortTermMemory(self, request: svc.ClearShortTermMemoryRequest, context: Ctx) -> empty_pb2.Empty:
        await self._guard("ClearShortTermMemory", context, self.shell.clear_stm(request))
        return empty_pb2.Empty()

    async def GetPerceptData(self, request: svc.GetPerceptDataRequest, context: Ctx) -> pb.PerceptData:
        return await self._guard("GetPerceptData", context, self.shell.percept_data(request.session_id))

    async def GetCognitionData(self, request: svc.GetCognitionDataRequest, context: Ctx) -> pb.CognitionData:
        return await self._guard("GetCognitionData", context, self.shell.cognition_data(request.session_id))

    async def GetPattern(self, request: svc.GetPatternRequest, context: Ctx) -> pb.Pattern:
        return await self._guard("GetPattern", context, self.admin.get_pattern(request))

    async def ListPatterns(self, request: svc.ListPatternsRequest, context: Ctx) -> svc.ListPatternsResponse:
        return await self._guard("ListPatterns", context, self.admin.list_patterns(request))

    async def UpdatePattern(self, request: svc.UpdatePatternRequest, context: Ctx) -> pb.Pattern:
        return await self._guard("UpdatePattern", context, self.admin.update_pattern(request))

    async def DeletePattern(self, request: svc.DeletePatternRequest, context: Ctx) -> empty_pb2.Empty:
        await self._guard("DeletePattern", context, self.admin.delete_pattern(request))
        return empty_pb2.Empty()

    async def ClearKnowledgeBase(self, request: svc.ClearKnowledgeBaseRequest, context: Ctx) -> empty_pb2.Empty:
        await self._guard("ClearKnowledgeBase", context, self.shell.clear_knowledge_base(request))
        return empty_pb2.Empty()


def _discard(work: Awaitable[object]) -> None:
    """Close a call's coroutine that failed before it ran (no 'never awaited' warning)."""
    if inspect.iscoroutine(work):
        work.close()


async def _raise(error: KatoError) -> None:
    raise error


async def _noop() -> None:
    return None
