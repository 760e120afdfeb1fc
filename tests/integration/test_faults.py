"""Store faults under load, shutdown under load, and many sessions on one node (issue 5)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server
from tests.integration.support import error_info, eventually
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _learn_pair(stub: svc_grpc.KatoServiceStub, sid: str, request_id: str) -> grpc.StatusCode:
    request = svc.ObserveSequenceRequest(
        name=sid,
        observations=[pb.Observation(strings=["p"]), pb.Observation(strings=["q"])],
        learn_at_end=True,
        request_id=request_id,
    )
    try:
        # The server's store timeouts (2 s) end a call during an outage; this deadline only
        # bounds a hang (a shorter one would turn a slow answer into DEADLINE_EXCEEDED).
        stub.ObserveSequence(request, timeout=120)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def test_mongodb_and_redis_outages_lose_and_double_nothing(tmp_path: Path) -> None:
    # Durable MongoDB (fsync per commit): a killed store must not forget acknowledged learns.
    # Eight clients learn throughout, each retrying a request (same request id) until it is
    # answered. Every step waits on a signal: learns answered (the clients are at work), the
    # server's health (the outage is seen, then over). What is felt during an outage is one
    # learn made while health says NOT_SERVING — refused as retryable, then answered once the
    # store is back — not whichever client calls happened to fall into the outage.
    with devstack.local_stores(tmp_path, durable=True, throwaway=True) as (valkey, mongo):
        server = new_server(valkey, mongo, tmp_path).start()
        try:
            stubs = [server.stub() for _ in range(4)]
            node = "faults-" + uuid.uuid4().hex
            sessions = [
                stubs[0]
                .CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node))))
                .name
                for _ in range(5)
            ]
            probe = sessions.pop()  # the learns made during the outages
            answered: list[str] = []  # the session of each answered learn (list.append: thread-safe)
            stop = threading.Event()

            def client(k: int) -> Counter[str]:
                """Learns until ``stop``; the codes it got. Raises on a code no outage explains."""
                stub, sid = stubs[k % 4], sessions[k % 4]
                codes: Counter[str] = Counter()
                i = 0
                while not stop.is_set():
                    # A store that never comes back fails the test instead of hanging it.
                    give_up = time.monotonic() + 300
                    while True:  # the same request until it is answered (idempotent by request_id)
                        code = _learn_pair(stub, sid, f"c{k}-{i}")
                        codes[code.name] += 1
                        if code == grpc.StatusCode.OK:
                            answered.append(sid)
                            break
                        assert code in RETRYABLE, (code, server.log_path.read_text()[-3000:])
                        assert time.monotonic() < give_up, ("a learn retried for 300 s", dict(codes))
                        time.sleep(0.05)  # a pause between retries (nothing depends on its length)
                    i += 1
                    # Paced, not flat out: eight clients keep learns in flight through every
                    # outage without saturating the machine the store restarts need (nothing
                    # depends on the pause's length).
                    stop.wait(0.02)
                return codes

            clients: list[Future[Counter[str]]] = []

            def learning() -> bool:
                """Whether the clients' learns are answered (more of them, within a hang bound);
                False at once when a client ended (it raised: its exception is raised below)."""
                before = len(answered)
                eventually(lambda: len(answered) > before or any(c.done() for c in clients), 60)
                return len(answered) > before and not any(c.done() for c in clients)

            def outage(store: devstack.LocalServer, name: str) -> None:
                store.kill()
                assert eventually(lambda: server.health() == NOT_SERVING, 60), f"{name} down"
                assert _learn_pair(stubs[0], probe, name) == grpc.StatusCode.UNAVAILABLE  # felt
                store.restart()  # ... and back: no server restart
                assert eventually(lambda: server.health() == SERVING, 60), f"{name} up"
                assert eventually(lambda: _learn_pair(stubs[0], probe, name) == grpc.StatusCode.OK, 60)
                answered.append(probe)

            with ThreadPoolExecutor(8) as pool:
                clients += [pool.submit(client, k) for k in range(8)]
                try:
                    assert learning(), "learns before the outages"
                    outage(mongo, "mongodb")  # MongoDB dies under load ...
                    assert learning(), "learns after MongoDB came back"
                    outage(valkey, "redis")  # ... then Redis (with its append-only file)
                    assert learning(), "learns after Redis came back"
                finally:
                    stop.set()
                    # A client's exception first: it says more than the step that then failed.
                    codes = sum((c.result(timeout=600) for c in clients), Counter[str]())
            # Touch every session (flushes any outbox), then count: one learn per answered call.
            for sid in [*sessions, probe]:
                stubs[0].GetSession(svc.GetSessionRequest(name=sid))
            name = names.pattern(node, pattern_name([["p"], ["q"]]))
            frequency = stubs[0].GetPattern(svc.GetPatternRequest(name=name)).frequency
            assert frequency == len(answered), (frequency, Counter(answered), codes)
        finally:
            server.stop()


def test_sigterm_with_calls_in_flight(stores: Stores, log_dir: Path) -> None:
    # Calls certainly in flight when SIGTERM comes: Valkey holds every write (CLIENT PAUSE
    # WRITE), so each call stops at its first write to the session, inside the server; the
    # server's in-flight gauge says when all are there. After SIGTERM has been taken (its log
    # line: new calls are refused from then on), the writes go on, and a drain must let every
    # call in flight finish — whole. The server's store timeout and grace are long (300 s) so
    # that nothing here has to happen in time: they only bound a hang.
    metrics = devstack.free_port()
    server = new_server(*stores, log_dir).start(
        KATO_METRICS_PORT=str(metrics),
        KATO_LOG_LEVEL="INFO",
        KATO_STORE_TIMEOUT_SECONDS="300",
        KATO_GRACE_SECONDS="300",
    )
    stub = server.stub()
    node = "drain-" + uuid.uuid4().hex
    sids = [
        stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        ).name
        for _ in range(8)
    ]
    sequence = [pb.Observation(strings=[f"s{i}"]) for i in range(150)]
    with redis.Redis.from_url(devstack.redis_url(stores[0])) as valkey:
        valkey.client_pause(300_000, all=False)  # writes only; lifted below (or by itself: a hang bound)
        try:
            calls = [
                stub.ObserveSequence.future(svc.ObserveSequenceRequest(name=sid, observations=sequence), timeout=300)
                for sid in sids
            ]
            # In flight: counted as they enter the server, before anything that could refuse
            # them or let them end (nothing is awaited between the gauge and the drain check).
            assert eventually(lambda: scrape(metrics).get("kato_rpc_in_flight", 0) >= len(sids), timeout=60), (
                "the calls are in the server"
            )
            assert not any(call.done() for call in calls)  # held at their writes
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert eventually(lambda: "stopping" in server.log_path.read_text(), timeout=60), "SIGTERM taken"
            with pytest.raises(grpc.RpcError) as refused:  # a call arriving now is turned away ...
                stub.GetSession(svc.GetSessionRequest(name=sids[0]), timeout=60)
            assert error_info(refused.value)[:2] == ("UNAVAILABLE", "SHUTTING_DOWN")
            assert not any(call.done() for call in calls)  # ... while those in flight still wait
        finally:
            valkey.client_unpause()
    for call in calls:
        assert len(call.result().results) == 150  # each answered, none cut
    assert server.proc.wait(60) == 0
    # Nothing half-done: every session holds its whole sequence, once.
    restarted = new_server(*stores, log_dir).start()
    try:
        stub2 = restarted.stub()
        for sid in sids:
            assert stub2.GetSession(svc.GetSessionRequest(name=sid)).time == 150
    finally:
        restarted.stop()
        server.stop()


def test_a_thousand_sessions_on_one_node_never_leak(server: object) -> None:
    stub = server.stub()  # type: ignore[attr-defined]
    node = "crowd-" + uuid.uuid4().hex
    sessions = [
        stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        ).name
        for _ in range(1000)
    ]

    def run(i: int) -> list[str]:
        sid = sessions[i]
        own = {f"own-{i}", "shared"}
        stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[f"own-{i}"])))
        r = stub.Observe(
            svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["shared"]), return_predictions=True)
        )
        stm = {s for e in stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events for s in e.symbols}
        extras = {s for p in r.predictions for e in p.extras for s in e.symbols}
        return sorted((stm | extras) - own)

    with ThreadPoolExecutor(16) as pool:
        leaks = [x for found in pool.map(run, range(1000)) for x in found]
    assert leaks == []
