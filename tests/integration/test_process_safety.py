"""Issue 9, stuck servers: heavy calls, dead workers, a second server, logs, the command line."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kato_grpc import names
from kato_grpc.client.errors import from_rpc_error
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ROOT, ServerProcess, new_server, server_env
from tests.integration.support import eventually
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
ALPHABET = [f"s{i}" for i in range(20)]


def _events(rnd: random.Random, n: int) -> list[pb.Observation]:
    return [pb.Observation(strings=sorted(rnd.sample(ALPHABET, 10))) for _ in range(n)]


def _heavy_session(stub: svc_grpc.KatoServiceStub, pattern_events: int) -> str:
    """A session whose GetPredictions aligns 10,000 STM symbols drawn from 20 against three
    patterns of ``pattern_events`` × 10 such symbols (recall_threshold 0: all candidates).
    Made through ``stub`` with the server's time limit: give it one with the default limit
    (each ObserveSequence of 1000 events takes ~0.5 s, more on a loaded machine)."""
    rnd = random.Random(7)
    node = "heavy-" + uuid.uuid4().hex
    quiet = pb.SessionConfig(process_predictions=False)
    for _ in range(3):
        sid = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node), config=quiet))
        ).name
        stub.ObserveSequence(
            svc.ObserveSequenceRequest(name=sid, observations=_events(rnd, pattern_events), learn_at_end=True),
            timeout=120,
        )
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node), config=quiet))
    ).name
    stub.ObserveSequence(svc.ObserveSequenceRequest(name=sid, observations=_events(rnd, 1000)), timeout=120)
    config = pb.SessionConfig(recall_threshold=0.0, process_predictions=True)
    stub.UpdateSession(svc.UpdateSessionRequest(session=svc.Session(name=sid, config=config)))
    return sid


def test_a_worst_case_prediction_leaves_health_and_other_sessions_responsive(stores: Stores, log_dir: Path) -> None:
    # Responsive means answered while the heavy call computes: with the engine on the event
    # loop, nothing would be answered until it ended. Counted from the moment the heavy call
    # reached the engine (its KB lookup, the last step before the engine thread) until its
    # answer: no latency figure here (a loaded machine makes every call slow); the latencies
    # beside a heavy call are a benchmark's (bench/heavy_call.py).
    port = devstack.free_port()
    server = new_server(*stores, log_dir).start(KATO_METRICS_PORT=str(port))
    try:
        stub = server.stub()
        heavy = _heavy_session(stub, 300)  # ~4.5M symbol pairs: within the default work limit
        other = stub.CreateSession(
            svc.CreateSessionRequest(
                session=svc.Session(knowledge_base=names.knowledge_base("bystander-" + uuid.uuid4().hex))
            )
        ).name
        outcome: list[svc.GetPredictionsResponse] = []
        thread = threading.Thread(
            target=lambda: outcome.append(stub.GetPredictions(svc.GetPredictionsRequest(name=heavy), timeout=120))
        )
        answered = {"health": 0, "observe": 0}
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            bystander = svc_grpc.KatoServiceStub(channel)
            health.Check(health_pb2.HealthCheckRequest())
            bystander.Observe(svc.ObserveRequest(name=other, observation=pb.Observation(strings=["x"])))
            lookups = _kb_lookups(port)  # nothing else looks a KB up until the heavy call does
            thread.start()
            assert eventually(lambda: _kb_lookups(port) > lookups, timeout=60), "the heavy call reached the engine"
            while thread.is_alive():
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                bystander.Observe(svc.ObserveRequest(name=other, observation=pb.Observation(strings=["x"])), timeout=60)
                if thread.is_alive():  # answered before the heavy call was
                    answered["health"] += 1
                    answered["observe"] += 1
        thread.join()
        assert len(outcome) == 1 and len(outcome[0].predictions) == 3, "the heavy call was answered"
        assert answered["health"] >= 5 and answered["observe"] >= 5, answered
    finally:
        server.stop()


def _kb_lookups(port: int) -> float:
    """KB cache lookups so far, whatever their result (one per call that reads a KB)."""
    return sum(v for k, v in scrape(port).items() if k.startswith("kato_kb_cache_lookups_total"))


def _answered(call: Callable[[], object]) -> bool:
    """Whether ``call`` was answered; False when its deadline passed first."""
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        return False
    return True


def test_heavy_work_stops_at_the_deadline(server: ServerProcess, stores: Stores, log_dir: Path) -> None:
    # No work limit and a 1 s server-side time limit: the call must end at 1 s, and the
    # alignment behind it stop, not run on. Only that call is under the limit: the set-up runs
    # on the shared server (default limits, the same stores), the KB load is waited for.
    heavy = _heavy_session(server.stub(), 1000)  # ~15M symbol pairs: ~8 s of alignment here
    kb = server.stub().GetSession(svc.GetSessionRequest(name=heavy)).knowledge_base
    port = devstack.free_port()
    limited = new_server(*stores, log_dir).start(
        KATO_MAX_PREDICTION_WORK="1000000000000", KATO_MAX_CALL_SECONDS="1", KATO_METRICS_PORT=str(port)
    )
    try:
        stub = limited.stub()
        # A KB load goes on when the call that started it gives up: asked until cached.
        assert eventually(lambda: _answered(lambda: stub.GetKnowledgeBase(svc.GetKnowledgeBaseRequest(name=kb))))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetPredictions(svc.GetPredictionsRequest(name=heavy))  # no client deadline
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started >= 1.0  # the server's limit ended it, not sooner
        # The engine reports the computation stopped at a check: it did not run to its end
        # (that would not count), and nothing else on this server computed.
        assert eventually(lambda: scrape(port).get("kato_engine_stopped_total") == 1)
    finally:
        limited.stop()


def test_work_over_the_limit_is_refused_up_front(server: ServerProcess) -> None:
    stub = server.stub()
    heavy = _heavy_session(stub, 1000)
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetPredictions(svc.GetPredictionsRequest(name=heavy))
    # Refused by the charge made before any alignment (engine/budget.py): the only source of
    # this reason, with the work it counted and the limit it compared that with.
    error = from_rpc_error(refused.value)
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "WORK_BUDGET_EXCEEDED")
    assert int(error.metadata["work"]) > int(error.metadata["limit"])


def test_shutdown_during_heavy_work_ends_within_the_grace_period(stores: Stores, log_dir: Path) -> None:
    # Predictions that end only when called off (tests/integration/endless_server.py): a
    # shutdown that waited for them instead of stopping them once the grace is over would
    # never end, so the bound on the exit below only stops a hang; no margin on the grace.
    port = devstack.free_port()
    server = new_server(*stores, log_dir, module="tests.integration.endless_server")
    server.start(KATO_GRACE_SECONDS="2", KATO_METRICS_PORT=str(port), KATO_LOG_LEVEL="INFO")
    try:
        stub = server.stub()
        new = svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("endless")))
        # A KB too large for a prediction to run inline (observing.INLINE_WORK): it goes to an
        # engine thread, the work a shutdown must call off.
        teacher = stub.CreateSession(new).name
        for i in range(3):
            symbols = [f"e{i}-{j}" for j in range(1000)]
            stub.Observe(svc.ObserveRequest(name=teacher, observation=pb.Observation(strings=symbols)))
        stub.Learn(svc.LearnRequest(name=teacher))
        sid = stub.CreateSession(new).name
        calls = [stub.GetPredictions.future(svc.GetPredictionsRequest(name=sid)) for _ in range(3)]
        # All three being served before SIGTERM (arriving after it, they would be refused at once).
        assert eventually(lambda: scrape(port).get("kato_rpc_in_flight", 0) >= 3)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        for call in calls:
            with pytest.raises(grpc.RpcError):
                call.result()
        # Ended by the shutdown, none answered: stopped at a check once the grace ran out
        # (DEADLINE_EXCEEDED, the budget's), or cut by the server just after (UNAVAILABLE).
        ended = [line for line in server.log_path.read_text().splitlines() if "rpc=GetPredictions" in line]
        codes = {word for line in ended for word in line.split() if word.startswith("code=")}
        assert len(ended) == 3 and codes <= {"code=DEADLINE_EXCEEDED", "code=UNAVAILABLE"}, ended
    finally:
        server.stop()


def _workers(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def test_a_killed_worker_is_replaced(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start(KATO_WORKERS="2", KATO_LOG_LEVEL="INFO")
    try:
        before = _workers(server)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (before[0] in _workers(server) or len(_workers(server)) != 2):
            time.sleep(0.1)
        after = _workers(server)
        assert len(after) == 2 and before[0] not in after and before[1] in after
        server.wait_serving()
        assert "worker died; started a replacement" in server.log_path.read_text()
        stub = server.stub()
        for _ in range(8):
            stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("replaced")))
            )
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_a_second_server_on_the_same_port_exits_with_a_message(stores: Stores, log_dir: Path) -> None:
    first = new_server(*stores, log_dir).start(KATO_WORKERS="2")
    try:
        second = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
            [sys.executable, "-m", "kato_server"], cwd=ROOT, env=first.env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "in use" in second.stderr and str(first.port) in second.stderr
        assert "Traceback" not in second.stderr
        assert first.health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.stop()


def test_logs_reach_a_file_while_the_server_runs_and_survive_kill_9(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir)
    server.log_path = log_dir / f"lines-{server.port}.log"
    server.start(KATO_LOG_LEVEL="INFO")
    try:
        # Written while it runs, not at exit (health turns SERVING just before the line is written).
        assert eventually(lambda: "serving" in server.log_path.read_text(), timeout=5)
        with pytest.raises(grpc.RpcError):
            server.stub().GetSession(svc.GetSessionRequest(name="s-" + "0" * 32))
        # Its access line is written as the call ends, just after the answer left.
        assert eventually(lambda: "rpc=GetSession" in server.log_path.read_text(), timeout=5)
    finally:
        server.stop(signal.SIGKILL)
    text = server.log_path.read_text()  # still all there after kill -9
    assert "serving" in text and "rpc=GetSession" in text and "code=INVALID_ARGUMENT" in text


def test_command_line_help_and_bad_settings(stores: Stores, log_dir: Path) -> None:
    env = server_env(*stores, devstack.free_port(), "kato")
    for module in ("kato_server", "kato_grpc.replay"):
        helped = subprocess.run(  # noqa: PLW1510
            [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
        assert helped.returncode == 0, helped.stderr
        assert "usage:" in helped.stdout
        if module == "kato_server":
            assert "KATO_" in helped.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kato_server"],
        cwd=ROOT,
        env={**env, "KATO_PORT": "notaport"},
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "KATO_PORT" in bad.stderr, bad.stderr
