"""``kato.v1.KatoService`` over grpc.aio: thin methods around the shell, one error mapping."""

# ruff: noqa: N802 - method names are the RPC names grpc dispatches to

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar, cast

import grpc
import structlog
from google.protobuf import empty_pb2

from kato_grpc.engine.observation import validate_observation
from kato_grpc.errors import DeadlineExceeded, KatoError, Unavailable
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from server.auth import authenticate
from server.errors import as_kato_error, internal_status, to_status
from server.handlers import decoded
from server.shell import KatoShell

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
    def __init__(self, shell: KatoShell) -> None:
        self.shell = shell
        # Shutdown: once draining, new calls are refused with UNAVAILABLE (retryable, so a
        # client goes to another replica) while the ones in flight finish.
        self.draining = False
        self.inflight = 0

    async def drain(self, grace: float) -> None:
        """Refuse new calls and wait (at most ``grace`` seconds) for those in flight."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + grace
        while self.inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def _guard(self, rpc: str, context: Ctx, work: Awaitable[T]) -> T:
        with structlog.contextvars.bound_contextvars(rpc=rpc, request_id=_request_id(context)):
            self.inflight += 1
            try:
                if self.draining:
                    raise Unavailable("the server is shutting down; retry", reason="SHUTTING_DOWN")
                # The client's deadline bounds every store call made for it; state stays
                # consistent when it fires (the outbox carries any learn not yet applied).
                async with asyncio.timeout(context.time_remaining()) as deadline:
                    metadata = cast(Sequence[tuple[str, str | bytes]], context.invocation_metadata() or ())
                    authenticate(metadata, self.shell.settings.auth_tokens)
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
        compare-and-set, the same responses as one by one."""
        queue: asyncio.Queue[svc.ObserveRequest | None] = asyncio.Queue(maxsize=STREAM_BATCH)

        failure: list[KatoError] = []

        async def read() -> None:
            try:
                async for request in decoded(request_iterator):
                    await queue.put(request)
            except KatoError as exc:  # an undecodable request: answered after those before it
                failure.append(exc)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            carried: list[svc.ObserveRequest | None] = []  # an item taken from the queue, not yet served
            while True:
                first = carried.pop() if carried else await queue.get()
                if first is None:
                    if failure:
                        await self._guard("ObserveStream", context, _raise(failure[0]))
                    break
                batch = [first]
                while not first.request_id and len(batch) < STREAM_BATCH and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None or nxt.session_id != first.session_id or nxt.request_id or not _valid(nxt):
                        carried.append(nxt)
                        break
                    batch.append(nxt)
                responses = await self._guard("ObserveStream", context, self.shell.observe_batch(batch))
                for response in responses:
                    yield response
        finally:
            reader.cancel()

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
        return await self._guard("GetPattern", context, self.shell.get_pattern(request.node_id, request.name))

    async def ListPatterns(self, request: svc.ListPatternsRequest, context: Ctx) -> svc.ListPatternsResponse:
        return await self._guard("ListPatterns", context, self.shell.list_patterns(request))

    async def UpdatePattern(self, request: svc.UpdatePatternRequest, context: Ctx) -> pb.Pattern:
        return await self._guard("UpdatePattern", context, self.shell.update_pattern(request))

    async def DeletePattern(self, request: svc.DeletePatternRequest, context: Ctx) -> empty_pb2.Empty:
        await self._guard("DeletePattern", context, self.shell.delete_pattern(request))
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


def _valid(request: svc.ObserveRequest) -> bool:
    """Cheap pre-check so an invalid observation is answered on its own, after the valid ones."""
    try:
        validate_observation(request.observation)
    except KatoError:
        return False
    return True
