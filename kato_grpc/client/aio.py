"""The asyncio client (grpc.aio): the methods of ``KatoClient``, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty as _Empty
from google.protobuf.message import Message

from kato_grpc.client import requests as build
from kato_grpc.client.channel import DEFAULT_TARGET, Attempts, Options
from kato_grpc.client.errors import from_rpc_error
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc

M = TypeVar("M", bound=Message)


class AsyncKatoClient:
    """``async with AsyncKatoClient("127.0.0.1:50051") as kato: ...`` — see ``Options``."""

    def __init__(self, target: str | None = None, **options: Any) -> None:
        self.options = Options(target=target or DEFAULT_TARGET, **options)
        creds = self.options.credentials()
        self._channel = (
            grpc.aio.secure_channel(self.options.target, creds, self.options.channel_options())
            if creds is not None
            else grpc.aio.insecure_channel(self.options.target, self.options.channel_options())
        )
        self.stub = svc_grpc.KatoServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncKatoClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def call(self, method: str, request: Message, reply: type[M]) -> M:
        """One unary RPC with the client's token and retries, all within ``Options.timeout``."""
        attempts = Attempts(self.options, method)
        while True:
            try:
                out = await getattr(self.stub, method)(
                    request, timeout=attempts.timeout(), metadata=self.options.metadata()
                )
                assert isinstance(out, reply)
                return out
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if attempts.done_anyway(error):
                    return reply()
                wait = attempts.after(error)
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self,
        knowledge_base: str,
        *,
        config: build.Config = None,
        ttl_seconds: int = 0,
        metadata: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> svc.Session:
        request = build.create_session(knowledge_base, config, ttl_seconds, metadata, request_id)
        return await self.call("CreateSession", request, svc.Session)

    async def get_session(self, name: str) -> svc.Session:
        return await self.call("GetSession", svc.GetSessionRequest(name=name), svc.Session)

    async def update_session(
        self, session: svc.Session, paths: Sequence[str] = (), *, request_id: str = ""
    ) -> svc.Session:
        return await self.call("UpdateSession", build.update_session(session, paths, request_id), svc.Session)

    async def delete_session(self, name: str, *, etag: str = "") -> None:
        await self.call("DeleteSession", svc.DeleteSessionRequest(name=name, etag=etag), _Empty)

    # --- observing and learning ------------------------------------------------------------

    async def observe(
        self,
        session: str,
        strings: Iterable[str] = (),
        *,
        return_predictions: bool = False,
        request_id: str = "",
        **observation: Any,
    ) -> svc.ObserveResponse:
        """``observation``: ``vectors``, ``emotives``, ``metadata`` (JSON values), ``unique_id``."""
        request = build.observe(session, strings, return_predictions, request_id, **observation)
        return await self.call("Observe", request, svc.ObserveResponse)

    async def observe_sequence(
        self,
        session: str,
        observations: Iterable[pb.Observation],
        *,
        learn_after_each: bool = False,
        learn_at_end: bool = False,
        clear_stm_between: bool = False,
        return_predictions: bool = False,
        learn_after: Sequence[int] = (),
        request_id: str = "",
    ) -> svc.ObserveSequenceResponse:
        """``learn_after``: learn after these observations (indexes): several sequences in one call."""
        request = build.observe_sequence(
            session,
            observations,
            request_id,
            learn_after,
            learn_after_each=learn_after_each,
            learn_at_end=learn_at_end,
            clear_stm_between=clear_stm_between,
            return_predictions=return_predictions,
        )
        return await self.call("ObserveSequence", request, svc.ObserveSequenceResponse)

    async def observe_stream(
        self, requests: Iterable[svc.ObserveStreamRequest]
    ) -> AsyncIterator[svc.ObserveStreamResponse]:
        """One response per request, in order (not retried: a stream is not one call)."""
        try:
            async for response in self.stub.ObserveStream(iter(requests), metadata=self.options.metadata()):
                yield response
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def learn(self, session: str, *, request_id: str = "") -> svc.LearnResponse:
        return await self.call("Learn", build.learn(session, request_id), svc.LearnResponse)

    async def clear_short_term_memory(self, session: str, *, request_id: str = "") -> None:
        request = build.clear_short_term_memory(session, request_id)
        await self.call("ClearShortTermMemory", request, svc.ClearShortTermMemoryResponse)

    # --- reading a session -----------------------------------------------------------------

    async def get_predictions(self, session: str) -> svc.GetPredictionsResponse:
        return await self.call("GetPredictions", svc.GetPredictionsRequest(name=session), svc.GetPredictionsResponse)

    async def get_short_term_memory(self, session: str) -> list[pb.Event]:
        request = svc.GetShortTermMemoryRequest(name=session)
        return list((await self.call("GetShortTermMemory", request, svc.GetShortTermMemoryResponse)).events)

    async def get_percept_data(self, session: str) -> pb.PerceptData:
        request = svc.GetPerceptDataRequest(name=session)
        return (await self.call("GetPerceptData", request, svc.GetPerceptDataResponse)).percept

    async def get_cognition_data(self, session: str) -> svc.GetCognitionDataResponse:
        request = svc.GetCognitionDataRequest(name=session)
        return await self.call("GetCognitionData", request, svc.GetCognitionDataResponse)

    # --- knowledge bases -------------------------------------------------------------------

    async def get_pattern(self, name: str) -> pb.Pattern:
        return await self.call("GetPattern", svc.GetPatternRequest(name=name), pb.Pattern)

    async def list_patterns(
        self, knowledge_base: str, *, page_size: int = 0, page_token: str = ""
    ) -> svc.ListPatternsResponse:
        request = build.list_patterns(knowledge_base, page_size, page_token)
        return await self.call("ListPatterns", request, svc.ListPatternsResponse)

    async def patterns(self, knowledge_base: str, *, page_size: int = 1000) -> AsyncIterator[pb.Pattern]:
        """Every pattern of a knowledge base, in name order, a page at a time."""
        async for page in _pages(lambda t: self.list_patterns(knowledge_base, page_size=page_size, page_token=t)):
            for pattern in page.patterns:
                yield pattern

    async def update_pattern(self, pattern: pb.Pattern, paths: Sequence[str] = ()) -> pb.Pattern:
        return await self.call("UpdatePattern", build.update_pattern(pattern, paths), pb.Pattern)

    async def delete_pattern(self, name: str) -> None:
        await self.call("DeletePattern", svc.DeletePatternRequest(name=name), _Empty)

    async def get_knowledge_base(self, knowledge_base: str) -> svc.KnowledgeBase:
        request = svc.GetKnowledgeBaseRequest(name=build.knowledge_base(knowledge_base))
        return await self.call("GetKnowledgeBase", request, svc.KnowledgeBase)

    async def list_knowledge_bases(self, *, page_size: int = 0, page_token: str = "") -> svc.ListKnowledgeBasesResponse:
        request = svc.ListKnowledgeBasesRequest(page_size=page_size, page_token=page_token)
        return await self.call("ListKnowledgeBases", request, svc.ListKnowledgeBasesResponse)

    async def knowledge_bases(self, *, page_size: int = 1000) -> AsyncIterator[svc.KnowledgeBase]:
        """Every knowledge base the caller may use, in id order, a page at a time."""
        async for page in _pages(lambda t: self.list_knowledge_bases(page_size=page_size, page_token=t)):
            for kb in page.knowledge_bases:
                yield kb

    async def get_symbol(self, knowledge_base: str, symbol: str) -> svc.Symbol:
        return await self.call("GetSymbol", build.get_symbol(knowledge_base, symbol), svc.Symbol)

    async def list_symbols(
        self, knowledge_base: str, *, page_size: int = 0, page_token: str = ""
    ) -> svc.ListSymbolsResponse:
        request = build.list_symbols(knowledge_base, page_size, page_token)
        return await self.call("ListSymbols", request, svc.ListSymbolsResponse)

    async def symbols(self, knowledge_base: str, *, page_size: int = 1000) -> AsyncIterator[svc.Symbol]:
        """Every symbol of a knowledge base, in code-point order, a page at a time."""
        async for page in _pages(lambda t: self.list_symbols(knowledge_base, page_size=page_size, page_token=t)):
            for symbol in page.symbols:
                yield symbol

    async def export_knowledge_base(
        self, knowledge_base: str, *, batch_size: int = 0
    ) -> AsyncIterator[svc.ExportKnowledgeBaseResponse]:
        """The export stream: a header, then batches of patterns and vectors (not retried)."""
        request = svc.ExportKnowledgeBaseRequest(name=build.knowledge_base(knowledge_base), batch_size=batch_size)
        try:
            async for part in self.stub.ExportKnowledgeBase(request, metadata=self.options.metadata()):
                yield part
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def import_knowledge_base(
        self, requests: Iterable[svc.ImportKnowledgeBaseRequest]
    ) -> svc.ImportKnowledgeBaseResponse:
        """One import stream (``requests.import_requests`` builds one). Not retried here:
        send the same stream again with the same import id to resume it."""
        try:
            reply = await self.stub.ImportKnowledgeBase(iter(requests), metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        assert isinstance(reply, svc.ImportKnowledgeBaseResponse)
        return reply

    async def watch_knowledge_base(
        self, knowledge_base: str, *, since_version: int | None = None
    ) -> AsyncIterator[svc.WatchKnowledgeBaseResponse]:
        """The KB's committed changes as they happen (until closed or cancelled; not retried)."""
        request = build.watch(knowledge_base, since_version)
        try:
            async for part in self.stub.WatchKnowledgeBase(request, metadata=self.options.metadata()):
                yield part
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def clear_knowledge_base(
        self, *, session: str | None = None, knowledge_base: str | None = None, request_id: str = ""
    ) -> None:
        request = build.clear_knowledge_base(session, knowledge_base, request_id)
        await self.call("ClearKnowledgeBase", request, svc.ClearKnowledgeBaseResponse)


P = TypeVar("P", svc.ListPatternsResponse, svc.ListSymbolsResponse, svc.ListKnowledgeBasesResponse)


async def _pages(fetch: Callable[[str], Awaitable[P]]) -> AsyncIterator[P]:
    """Every page of a List call (AIP-158): from the first, while a next_page_token comes."""
    page = await fetch("")
    yield page
    while page.next_page_token:
        page = await fetch(page.next_page_token)
        yield page
