"""Concurrency across server processes, crash safety of learns, health when a store dies."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.integration.crashing_server import CRASH_EXIT_CODE
from tests.integration.support import aof_written, doomed_session, eventually, frequency

T = TypeVar("T")
# Two server processes on one Redis + MongoDB: issue 3's 32 clients on 4 shared sessions and
# issue 5's 64 clients on 8. The test suite sends 2,000 observes each; `make load` sends 10,000
# (KATO_LOAD_CALLS).
LOAD_CALLS = int(os.environ.get("KATO_LOAD_CALLS", "2000"))
Stores = tuple[devstack.LocalServer, devstack.LocalServer]


RETRY_CODES = {grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}


def with_retry(call: Callable[[], T], attempts: int = 20) -> T:
    """Retry retryable codes with the same request (same request_id), as a client should:
    whether or not the first attempt committed, the retry answers it exactly once."""
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in RETRY_CODES or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("clients", "sessions_count"), [(32, 4), (64, 8)])
def test_two_processes_lose_and_double_nothing(
    two_servers: tuple[ServerProcess, ServerProcess], clients: int, sessions_count: int
) -> None:
    stubs = [s.stub() for s in two_servers for _ in range(4)]  # several channels per process
    lose_and_double_nothing(stubs, clients, sessions_count, LOAD_CALLS)


def lose_and_double_nothing(
    stubs: list[svc_grpc.KatoServiceStub], clients: int, sessions_count: int, calls: int, learns: int = 200
) -> None:
    """``clients`` threads send ``calls`` observes to ``sessions_count`` shared sessions over
    ``stubs`` in turn, then ``learns`` learns of one pattern: every session's ``time`` is the
    observes it was sent and the pattern's frequency the learns (retries carry request ids)."""
    node = "conc-" + uuid.uuid4().hex
    sessions = [
        stubs[0]
        .CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node))))
        .name
        for _ in range(sessions_count)
    ]

    def observe(i: int) -> str:
        sid = sessions[i % len(sessions)]
        request = svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[f"s{i % 7}"]), request_id=f"obs-{i}")
        with_retry(lambda: stubs[i % len(stubs)].Observe(request, timeout=60))
        return sid

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        sent = Counter(pool.map(observe, range(calls)))
    print(f"{calls} observes in {time.monotonic() - started:.1f}s")
    for sid in sessions:
        assert stubs[1].GetSession(svc.GetSessionRequest(name=sid)).time == sent[sid] == calls // sessions_count

    for sid in sessions:
        stubs[0].ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))

    def learn(i: int) -> None:
        request = svc.ObserveSequenceRequest(
            name=sessions[i % len(sessions)],
            observations=[pb.Observation(strings=["p"]), pb.Observation(strings=["q"])],
            learn_at_end=True,
            request_id=f"learn-{i}",
        )
        result = with_retry(lambda: stubs[i % len(stubs)].ObserveSequence(request, timeout=60))
        assert result.final_learned_pattern == names.pattern(node, pattern_name([["p"], ["q"]]))

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(learn, range(learns)))
    print(f"{learns} learns in {time.monotonic() - started:.1f}s")
    name = names.pattern(node, pattern_name([["p"], ["q"]]))
    for stub in (stubs[0], stubs[-1]):
        assert stub.GetPattern(svc.GetPatternRequest(name=name)).frequency == learns


def test_learn_is_applied_exactly_once_across_a_crash(stores: Stores, log_dir: Path) -> None:
    doomed, stub, node, sid = doomed_session(stores, log_dir, redis_db=15)
    database = doomed.env["KATO_MONGODB_DATABASE"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert doomed.stop() == CRASH_EXIT_CODE  # died between the Redis commit and the MongoDB write

    survivor = new_server(*stores, log_dir, database, redis_db=15).start()
    try:
        stub = survivor.stub()
        name = names.pattern(node, pattern_name([["a"], ["b"]]))
        # The write waited in the session's outbox; a relay applies it without any call on
        # the session, and the client's retry gets the first response. Exactly once.
        assert eventually(lambda: frequency(stub, name) == 1), "the relay applied the outbox"
        assert stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events == []
        retry = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"))
        assert (retry.status, retry.pattern) == (svc.LEARN_STATUS_LEARNED, name)
        for _ in range(3):
            stub.GetSession(svc.GetSessionRequest(name=sid))
            assert frequency(stub, name) == 1
    finally:
        survivor.stop()


def test_health_follows_redis_without_a_restart(tmp_path: Path) -> None:
    with devstack.local_stores(tmp_path, throwaway=True) as (redis, mongo):
        server = new_server(redis, mongo, tmp_path).start()
        try:
            stub = server.stub()
            sid = stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("health")))
            ).name
            stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["a"])))
            assert eventually(lambda: aof_written(redis), 60), "the session is in Valkey's append-only file"
            redis.kill()
            assert eventually(lambda: server.health() == health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as info:
                stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["b"])))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            redis.restart()
            assert eventually(lambda: server.health() == health_pb2.HealthCheckResponse.SERVING)
            reply = _eventually_value(
                lambda: stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["b"])))
            )
            assert reply.time == 2  # the session survived the restart (AOF) and nothing was half-applied
        finally:
            server.stop()


def _eventually_value(call: Callable[[], T], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_sigterm_drains_and_exits_cleanly(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start()
    stub = server.stub()
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("shutdown")))
    ).name
    stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["a"])))
    assert server.stop(signal.SIGTERM) == 0
    assert server.health() is None  # nothing listens any more


def test_workers_share_one_port_and_stay_coherent(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8]).start(KATO_WORKERS="2")
    try:
        stubs = [server.stub() for _ in range(8)]  # separate channels land on either process
        node = "workers-" + uuid.uuid4().hex
        sid = (
            stubs[0]
            .CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node))))
            .name
        )
        for i, stub in enumerate(stubs):
            stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[f"w{i}"])))
        assert stubs[3].GetSession(svc.GetSessionRequest(name=sid)).time == len(stubs)
        stubs[5].Learn(svc.LearnRequest(name=sid))
        for stub in stubs:
            stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["w0"])))
            stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
        observe = svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["w0"]), return_predictions=True)
        for stub in stubs:  # every process sees the pattern the other learned
            assert len(stub.Observe(observe).predictions) == 1
            stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
        assert len(_server_pids(server)) == 2  # two serving processes behind one port
    finally:
        assert server.stop(signal.SIGTERM) == 0


def _server_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []
