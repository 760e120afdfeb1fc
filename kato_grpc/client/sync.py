# Generated from kato_grpc/client/aio.py by scripts/gen_sync_client.py (`make client`): do not edit.
# Change aio.py, or the modules both clients share, and regenerate; a unit test fails while
# this file differs from what the script writes.
"""The blocking client: typed methods for every RPC, retries with the same request id."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


class KatoClient:
    """``with KatoClient("127.0.0.1:50051") as kato: ...`` — see ``Options``."""

    def __init__(self, target: str | None = None, **options: Any) -> None:
        self.options = Options(target=target or DEFAULT_TARGET, **options)
        creds = self.options.credentials()
        self._channel = (
            grpc.secure_channel(self.options.target, creds, self.options.channel_options())
            if creds is not None
            else grpc.insecure_channel(self.options.target, self.options.channel_options())
        )
        self.stub = svc_grpc.KatoServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> KatoClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, method: str, request: Message, reply: type[M]) -> M:
        """One unary RPC with the client's token and retries, all within ``Options.timeout``."""
        attempts = Attempts(self.options, method)
        while True:
            try:
                out = getattr(self.stub, method)(request, timeout=attempts.timeout(), metadata=self.options.metadata())
                assert isinstance(out, reply)
                return out
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if attempts.done_anyway(error):
                    return reply()
                wait = attempts.after(error)
                if wait is None:
                    raise error from exc
                time.sleep(wait)

    # --- sessions --------------------------------------------------------------------------

    def create_session(
        self,
        knowledge_base: str,
        *,
        config: build.Config = None,
        ttl_seconds: int = 0,
        metadata: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> svc.Session:
        request = build.create_session(knowledge_base, config, ttl_seconds, metadata, request_id)
        return self.call("CreateSession", request, svc.Session)

    def get_session(self, name: str) -> svc.Session:
        return self.call("GetSession", svc.GetSessionRequest(name=name), svc.Session)

    def update_session(self, session: svc.Session, paths: Sequence[str] = (), *, request_id: str = "") -> svc.Session:
        return self.call("UpdateSession", build.update_session(session, paths, request_id), svc.Session)

    def delete_session(self, name: str, *, etag: str = "") -> None:
        self.call("DeleteSession", svc.DeleteSessionRequest(name=name, etag=etag), _Empty)

    # --- observing and learning ------------------------------------------------------------

    def observe(
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
        return self.call("Observe", request, svc.ObserveResponse)

    def observe_sequence(
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
        return self.call("ObserveSequence", request, svc.ObserveSequenceResponse)

    def observe_stream(self, requests: Iterable[svc.ObserveStreamRequest]) -> Iterator[svc.ObserveStreamResponse]:
        """One response per request, in order (not retried: a stream is not one call)."""
        try:
            yield from self.stub.ObserveStream(iter(requests), metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def learn(self, session: str, *, request_id: str = "") -> svc.LearnResponse:
        return self.call("Learn", build.learn(session, request_id), svc.LearnResponse)

    def clear_short_term_memory(self, session: str, *, request_id: str = "") -> None:
        request = build.clear_short_term_memory(session, request_id)
        self.call("ClearShortTermMemory", request, svc.ClearShortTermMemoryResponse)

    # --- reading a session -----------------------------------------------------------------

    def get_predictions(self, session: str) -> svc.GetPredictionsResponse:
        return self.call("GetPredictions", svc.GetPredictionsRequest(name=session), svc.GetPredictionsResponse)

    def get_short_term_memory(self, session: str) -> list[pb.Event]:
        request = svc.GetShortTermMemoryRequest(name=session)
        return list(self.call("GetShortTermMemory", request, svc.GetShortTermMemoryResponse).events)

    def get_percept_data(self, session: str) -> pb.PerceptData:
        request = svc.GetPerceptDataRequest(name=session)
        return self.call("GetPerceptData", request, svc.GetPerceptDataResponse).percept

    def get_cognition_data(self, session: str) -> svc.GetCognitionDataResponse:
        request = svc.GetCognitionDataRequest(name=session)
        return self.call("GetCognitionData", request, svc.GetCognitionDataResponse)

    # --- knowledge bases -------------------------------------------------------------------

    def get_pattern(self, name: str) -> pb.Pattern:
        return self.call("GetPattern", svc.GetPatternRequest(name=name), pb.Pattern)

    def list_patterns(
        self, knowledge_base: str, *, page_size: int = 0, page_token: str = ""
    ) -> svc.ListPatternsResponse:
        request = build.list_patterns(knowledge_base, page_size, page_token)
        return self.call("ListPatterns", request, svc.ListPatternsResponse)

    def patterns(self, knowledge_base: str, *, page_size: int = 1000) -> Iterator[pb.Pattern]:
        """Every pattern of a knowledge base, in name order, a page at a time."""
        for page in _pages(lambda t: self.list_patterns(knowledge_base, page_size=page_size, page_token=t)):
            yield from page.patterns

    def update_pattern(self, pattern: pb.Pattern, paths: Sequence[str] = ()) -> pb.Pattern:
        return self.call("UpdatePattern", build.update_pattern(pattern, paths), pb.Pattern)

    def delete_pattern(self, name: str) -> None:
        self.call("DeletePattern", svc.DeletePatternRequest(name=name), _Empty)

    def get_knowledge_base(self, knowledge_base: str) -> svc.KnowledgeBase:
        request = svc.GetKnowledgeBaseRequest(name=build.knowledge_base(knowledge_base))
        return self.call("GetKnowledgeBase", request, svc.KnowledgeBase)

    def list_knowledge_bases(self, *, page_size: int = 0, page_token: str = "") -> svc.ListKnowledgeBasesResponse:
        request = svc.ListKnowledgeBasesRequest(page_size=page_size, page_token=page_token)
        return self.call("ListKnowledgeBases", request, svc.ListKnowledgeBasesResponse)

    def knowledge_bases(self, *, page_size: int = 1000) -> Iterator[svc.KnowledgeBase]:
        """Every knowledge base the caller may use, in id order, a page at a time."""
        for page in _pages(lambda t: self.list_knowledge_bases(page_size=page_size, page_token=t)):
            yield from page.knowledge_bases

    def get_symbol(self, knowledge_base: str, symbol: str) -> svc.Symbol:
        return self.call("GetSymbol", build.get_symbol(knowledge_base, symbol), svc.Symbol)

    def list_symbols(self, knowledge_base: str, *, page_size: int = 0, page_token: str = "") -> svc.ListSymbolsResponse:
        request = build.list_symbols(knowledge_base, page_size, page_token)
        return self.call("ListSymbols", request, svc.ListSymbolsResponse)

    def symbols(self, knowledge_base: str, *, page_size: int = 1000) -> Iterator[svc.Symbol]:
        """Every symbol of a knowledge base, in code-point order, a page at a time."""
        for page in _pages(lambda t: self.list_symbols(knowledge_base, page_size=page_size, page_token=t)):
            yield from page.symbols

    def export_knowledge_base(
        self, knowledge_base: str, *, batch_size: int = 0
    ) -> Iterator[svc.ExportKnowledgeBaseResponse]:
        """The export stream: a header, then batches of patterns and vectors (not retried)."""
        request = svc.ExportKnowledgeBaseRequest(name=build.knowledge_base(knowledge_base), batch_size=batch_size)
        try:
            yield from self.stub.ExportKnowledgeBase(request, metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def import_knowledge_base(
        self, requests: Iterable[svc.ImportKnowledgeBaseRequest]
    ) -> svc.ImportKnowledgeBaseResponse:
        """One import stream (``requests.import_requests`` builds one). Not retried here:
        send the same stream again with the same import id to resume it."""
        try:
            reply = self.stub.ImportKnowledgeBase(iter(requests), metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        assert isinstance(reply, svc.ImportKnowledgeBaseResponse)
        return reply

    def watch_knowledge_base(
        self, knowledge_base: str, *, since_version: int | None = None
    ) -> Iterator[svc.WatchKnowledgeBaseResponse]:
        """The KB's committed changes as they happen (until closed or cancelled; not retried)."""
        request = build.watch(knowledge_base, since_version)
        try:
            yield from self.stub.WatchKnowledgeBase(request, metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def clear_knowledge_base(
        self, *, session: str | None = None, knowledge_base: str | None = None, request_id: str = ""
    ) -> None:
        request = build.clear_knowledge_base(session, knowledge_base, request_id)
        self.call("ClearKnowledgeBase", request, svc.ClearKnowledgeBaseResponse)


P = TypeVar("P", svc.ListPatternsResponse, svc.ListSymbolsResponse, svc.ListKnowledgeBasesResponse)


def _pages(fetch: Callable[[str], P]) -> Iterator[P]:
    """Every page of a List call (AIP-158): from the first, while a next_page_token comes."""
    page = fetch("")
    yield page
    while page.next_page_token:
        page = fetch(page.next_page_token)
        yield page
