"""Helpers shared by the integration tests (reading results, waiting, error details)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server


def frequency(stub: svc_grpc.KatoServiceStub, name: str) -> int:
    """A pattern's frequency ("knowledgeBases/{kb}/patterns/{sha1}"); 0 when its KB lacks it."""
    try:
        return int(stub.GetPattern(svc.GetPatternRequest(name=name)).frequency)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def aof_written(valkey: devstack.LocalServer) -> bool:
    """Whether Valkey has written every change it acknowledged to its append-only file.

    A reply can precede that write (appendfsync everysec postpones it while an fsync is
    running). Once written, a kill -9 of Valkey cannot lose it: the kernel holds it, and only
    the machine dying loses what is not yet fsynced, which no test here does."""
    with redis.Redis.from_url(devstack.redis_url(valkey)) as r:
        info = r.info("persistence")
    return bool(info["aof_enabled"]) and info["aof_buffer_length"] == 0 and info["aof_last_write_status"] == "ok"


def error_info(exc: grpc.RpcError) -> tuple[str, str, str]:
    """(code, ErrorInfo reason, ErrorInfo metadata["method"]) of a failed call."""
    status = rpc_status.from_call(exc)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return exc.code().name, info.reason, info.metadata.get("method", "")
    return exc.code().name, "", ""


def create(stub: svc_grpc.KatoServiceStub, node_id: str, **config: object) -> str:
    """A new session on ``node_id``'s knowledge base; its name ("sessions/s-…")."""
    session = svc.Session(knowledge_base=names.knowledge_base(node_id), config=pb.SessionConfig(**config))  # type: ignore[arg-type]
    return stub.CreateSession(svc.CreateSessionRequest(session=session)).name


def observe(stub: svc_grpc.KatoServiceStub, sid: str, *symbols: str, **kw: object) -> svc.ObserveResponse:
    return stub.Observe(
        svc.ObserveRequest(name=sid, observation=pb.Observation(strings=symbols), **kw)  # type: ignore[arg-type]
    )


def details(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    status = rpc_status.from_call(exc)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "kato.v1"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return exc.code(), reason, fields


def doomed_session(
    stores: tuple[devstack.LocalServer, devstack.LocalServer],
    log_dir: Path,
    redis_db: int,
    database: str | None = None,
    **env: str,
) -> tuple[ServerProcess, svc_grpc.KatoServiceStub, str, str]:
    """A server whose pattern store dies on its first write (``crashing_server``), on its own
    database (so its own Redis namespace: no other server's relay reaches its outboxes), and
    a session on it that observed "a" then "b": (server, stub, node id, session name)."""
    database = database or "kato_" + uuid.uuid4().hex[:8]
    doomed = new_server(*stores, log_dir, database, redis_db=redis_db, module="tests.integration.crashing_server")
    doomed.start(**env)
    stub = doomed.stub()
    node = "crash-" + uuid.uuid4().hex
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
    ).name
    for symbol in ("a", "b"):
        stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[symbol])))
    return doomed, stub, node, sid
