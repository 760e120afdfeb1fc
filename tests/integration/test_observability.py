"""Traces, the access log and the request id (issue 13): a caller's ``traceparent`` is continued
by a server span whose children are the store calls; every call writes one access line that
names its node but never its session or token; the request id comes back in metadata."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kato_grpc import names
from kato_grpc.client import KatoClient, NotFound
from kato_grpc.settings import Settings
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.app import KatoServer
from kato_server.devserver import ROOT, ServerProcess, new_server
from tests.integration.support import eventually

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


async def _traced_calls(stores: Stores, exporter: InMemorySpanExporter) -> None:
    redis, mongo = stores
    redis_url, mongodb_uri = devstack.redis_url(redis), devstack.mongodb_uri(mongo)
    settings = Settings(port=0, redis_url=redis_url, mongodb_uri=mongodb_uri, mongodb_database="kato_trace")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = KatoServer(settings, redis_url, mongodb_uri, tracer_provider=provider)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = svc_grpc.KatoServiceStub(channel)
            kb = names.knowledge_base("trace-" + uuid.uuid4().hex)
            session = await stub.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb)))
            traced = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN}-01"),)
            observe = svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=["a"]))
            await stub.Observe(observe, metadata=traced)
    finally:
        await server.stop()


def test_a_traceparent_is_continued_by_a_server_span_with_store_call_children(stores: Stores) -> None:
    exporter = InMemorySpanExporter()
    asyncio.run(_traced_calls(stores, exporter))
    spans = exporter.get_finished_spans()
    in_trace = [s for s in spans if s.context is not None and format(s.context.trace_id, "032x") == TRACE_ID]
    server_spans = [s for s in in_trace if s.name == "/kato.v1.KatoService/Observe"]
    assert len(server_spans) == 1, [s.name for s in spans]
    call = server_spans[0]
    assert call.parent is not None and format(call.parent.span_id, "016x") == PARENT_SPAN
    assert call.context is not None

    def under(span: ReadableSpan) -> bool:  # a descendant of the call's span
        while span.parent is not None:
            if span.parent.span_id == call.context.span_id:
                return True
            span = next((s for s in spans if s.context is not None and s.context.span_id == span.parent.span_id), call)
            if span is call:
                return False
        return False

    store_spans = {s.name for s in in_trace if under(s)}
    # The session was created by this process: the Observe commits in one round trip.
    assert "redis commit_or_load" in store_spans and "redis load" not in store_spans, store_spans
    # The CreateSession call had no traceparent: a trace of its own, not this one.
    assert not [s for s in in_trace if s.name.endswith("/CreateSession")]


def _access_lines(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "rpc"]


def test_one_access_line_per_call_and_the_request_id_comes_back(stores: Stores, log_dir: Path) -> None:
    token = "secret-token-" + uuid.uuid4().hex
    node = "access-" + uuid.uuid4().hex
    server = new_server(*stores, log_dir, log_level="INFO").start(
        KATO_LOG_JSON="true", KATO_AUTH_TOKENS=json.dumps({token: ["*"]})
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = svc_grpc.KatoServiceStub(channel)
            auth = (("authorization", f"Bearer {token}"),)
            request = svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
            session, call = stub.CreateSession.with_call(request, metadata=(*auth, ("x-request-id", "quote-me-1")))
            assert ("x-request-id", "quote-me-1") in call.trailing_metadata()
            observe = svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=["a"]))
            _, call = stub.Observe.with_call(observe, metadata=auth)
            generated = dict(call.trailing_metadata())["x-request-id"]
            assert len(generated) == 32
            with pytest.raises(grpc.RpcError) as failed:
                stub.GetSession(svc.GetSessionRequest(name="sessions/s-" + "0" * 32), metadata=auth)
            rejected = cast(grpc.Call, failed.value)
            failed_id = dict(rejected.trailing_metadata())["x-request-id"]  # a failed call has one too
            assert "grpc-status-details-bin" in dict(rejected.trailing_metadata())  # beside the status
        with KatoClient(server.address, token=token, retries=0) as kato, pytest.raises(NotFound) as not_found:
            kato.get_session("sessions/s-" + "1" * 32)
        quoted = not_found.value.request_id  # what a client's error quotes
    finally:
        server.stop()
    text = server.log_path.read_text()
    lines = _access_lines(server.log_path)
    by_rpc = {str(line["rpc"]): line for line in lines}
    assert by_rpc["CreateSession"]["request_id"] == "quote-me-1"
    assert by_rpc["CreateSession"]["node_id"] == node and by_rpc["CreateSession"]["code"] == "OK"
    assert by_rpc["Observe"]["request_id"] == generated and by_rpc["Observe"]["node_id"] == node
    assert float(str(by_rpc["Observe"]["duration_ms"])) > 0
    assert by_rpc["GetSession"]["code"] == "NOT_FOUND" and by_rpc["GetSession"]["reason"] == "SESSION_NOT_FOUND"
    calls = [(line["rpc"], line["request_id"]) for line in lines if line["rpc"] != "Check"]
    assert calls == [
        ("CreateSession", "quote-me-1"),
        ("Observe", generated),
        ("GetSession", failed_id),
        ("GetSession", quoted),
    ]
    assert len({failed_id, quoted, generated}) == 3
    assert session.name.removeprefix("sessions/") not in text and token not in text
    assert any(json.loads(line).get("event") == "health" for line in text.splitlines() if line.startswith("{"))


def _learn(server: ServerProcess, node: str, *symbols: str) -> None:
    """One change of a knowledge base: a pattern learned."""
    with KatoClient(server.address) as kato:
        session = kato.create_session(node)
        for symbol in symbols:
            kato.observe(session.name, [symbol])
        kato.learn(session.name)


def test_a_call_its_client_abandons_is_logged_cancelled_or_deadline_exceeded_at_info(
    stores: Stores, log_dir: Path
) -> None:
    server = new_server(*stores, log_dir, log_level="INFO").start(KATO_LOG_JSON="true")
    node = "abandoned-" + uuid.uuid4().hex

    def watches(count: int) -> Callable[[], bool]:
        return lambda: len([x for x in _access_lines(server.log_path) if x["rpc"] == "WatchKnowledgeBase"]) == count

    try:
        _learn(server, node, "a", "b")
        request = svc.WatchKnowledgeBaseRequest(name=names.knowledge_base(node), since_version=0)
        with grpc.insecure_channel(server.address) as channel:
            stub = svc_grpc.KatoServiceStub(channel)
            # Each watch first gets the KB's one change, so the server is inside the call; then
            # it waits for more, which never comes.
            watch = stub.WatchKnowledgeBase(request)
            next(watch)
            watch.cancel()
            # A cancel that lands inside a Redis command can be swallowed by redis-py (the
            # watch keeps polling); its next write, on the cancelled stream, ends it then.
            _learn(server, node, "c", "d")
            assert eventually(watches(1))
            watch = stub.WatchKnowledgeBase(request, timeout=5)
            next(watch)
            with pytest.raises(grpc.RpcError) as cut:
                next(watch)
            assert cast(grpc.Call, cut.value).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert eventually(watches(2))
    finally:
        server.stop()
    lines = _access_lines(server.log_path)
    abandoned = [(x["code"], x["level"]) for x in lines if x["rpc"] == "WatchKnowledgeBase"]
    assert abandoned == [("CANCELLED", "info"), ("DEADLINE_EXCEEDED", "info")]
    assert not [x for x in lines if x["code"] == "UNKNOWN" or x["level"] == "warning"]


def test_the_log_level_decides_which_access_lines_are_written(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir, log_level="WARNING").start(KATO_LOG_JSON="true")
    try:
        stub = server.stub()
        stub.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base="knowledgeBases/quiet")))
    finally:
        server.stop()
    assert _access_lines(server.log_path) == []  # OK calls are INFO


def test_standard_library_log_lines_are_rendered_by_structlog() -> None:
    code = (
        "import logging; from kato_grpc import logs; logs.configure('INFO', json=True); "
        "logging.getLogger('grpc._cython.cygrpc').warning('from grpc %s', 42)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["event"] == "from grpc 42" and line["logger"] == "grpc._cython.cygrpc" and line["level"] == "warning"
