"""A heavy KB refresh beside other calls (issue 21, item 4): health checks and a call with a
deadline while a process merges patterns of 10,000 distinct symbols into its cached KB.

    python -m bench.refresh [--rounds 5] [--write BENCHMARKS.md]

Each round: a server caches a KB (a first GetPredictions), then learns three long sequences
into it (1,000 events × 30 symbols each; the STM keeps its last 10,000 symbols, the default
limit, so each pattern has 10,000 symbols, nearly all distinct). The next GetPredictions makes
the process refresh its cache with them, while another client checks health back to back and a
third calls GetPredictions with a 2 s deadline. Reported: health-check latency while the
refresh runs (median and p99 over the rounds), the deadline call's duration, and the refresh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import emit, quantile
from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server

EVENTS, SYMBOLS, LEARNS = 1000, 30, 3
DEADLINE = 2.0


def _session(stub: svc_grpc.KatoServiceStub, kb: str, **config: object) -> str:
    session = svc.Session(knowledge_base=names.knowledge_base(kb), config=pb.SessionConfig(**config))  # type: ignore[arg-type]
    return stub.CreateSession(svc.CreateSessionRequest(session=session)).name


def one_round(server: ServerProcess, rnd: random.Random) -> tuple[list[float], float, str, float]:
    """(health latencies during the refresh, the deadline call's seconds and code, the refresh's seconds)."""
    stub = server.stub()
    kb = "refresh-" + uuid.uuid4().hex
    query = _session(stub, kb, process_predictions=False)  # only GetPredictions reads the KB
    stub.Observe(svc.ObserveRequest(name=query, observation=pb.Observation(strings=["q0"])))
    stub.GetPredictions(svc.GetPredictionsRequest(name=query))  # the KB is cached (empty)
    learner = _session(stub, kb, process_predictions=False)
    first_symbols = []
    for _ in range(LEARNS):
        events = [pb.Observation(strings=[f"s{rnd.randrange(10**9)}" for _ in range(SYMBOLS)]) for _ in range(EVENTS)]
        first_symbols.append(events[-1].strings[0])  # kept by the STM (its last events)
        stub.ObserveSequence(
            svc.ObserveSequenceRequest(name=learner, observations=events, learn_at_end=True), timeout=600
        )
    stub.Observe(svc.ObserveRequest(name=query, observation=pb.Observation(strings=first_symbols)))
    latencies: list[float] = []
    done = threading.Event()

    def check_health() -> None:
        with grpc.insecure_channel(server.address, [("grpc.use_local_subchannel_pool", 1)]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), timeout=60)  # connected before it starts
            while not done.is_set():
                t0 = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                latencies.append(time.perf_counter() - t0)

    outcome: dict[str, object] = {}

    def deadline_call() -> None:
        other = _session(stub, kb, process_predictions=False)
        t0 = time.perf_counter()
        try:
            stub.GetPredictions(svc.GetPredictionsRequest(name=other), timeout=DEADLINE)
            outcome["code"] = "OK"
        except grpc.RpcError as exc:
            outcome["code"] = exc.code().name
        outcome["seconds"] = time.perf_counter() - t0

    checker = threading.Thread(target=check_health)
    checker.start()
    while not latencies:
        time.sleep(0.01)
    caller = threading.Thread(target=deadline_call)
    t0 = time.perf_counter()
    caller.start()
    stub.GetPredictions(svc.GetPredictionsRequest(name=query), timeout=600)  # refreshes the cache
    refresh = time.perf_counter() - t0
    caller.join()
    done.set()
    checker.join()
    return latencies, float(outcome["seconds"]), str(outcome["code"]), refresh  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    rnd = random.Random(20261207)
    health: list[float] = []
    worst: list[float] = []
    calls: list[tuple[float, str]] = []
    refreshes: list[float] = []
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, "bench_refresh", quick=False).start()
        try:
            for _ in range(args.rounds):
                latencies, seconds, code, refresh = one_round(server, rnd)
                health += latencies
                worst.append(max(latencies))
                calls.append((seconds, code))
                refreshes.append(refresh)
        finally:
            server.stop()
    ms = 1000
    codes = ", ".join(sorted({c for _, c in calls}))
    call_median, call_max = statistics.median(s for s, _ in calls), max(s for s, _ in calls)
    machine = f"{dt.date.today()}, {platform.machine()}, Python {sys.version.split()[0]}"
    text = f"""## Heavy KB refresh beside other calls

`python -m bench.refresh --rounds {args.rounds}` — {machine}.
Per round, three patterns of 10,000 distinct symbols (1,000-event × 30-symbol sequences; the
STM keeps the last 10,000 symbols) are learned into a cached KB; the next GetPredictions
refreshes the cache while another client checks health back to back and a third calls
GetPredictions with a {DEADLINE:.0f} s deadline.

| figure | value |
|---|---:|
| health checks during the refreshes | {len(health):,} |
| health latency p50 / p99 | {statistics.median(health) * ms:.1f} / {quantile(health, 0.99) * ms:.1f} ms |
| slowest health check, median of rounds | {statistics.median(worst) * ms:.1f} ms |
| the {DEADLINE:.0f} s-deadline call: answered after (median, max) | {call_median:.2f} / {call_max:.2f} s ({codes}) |
| the refreshing GetPredictions (median) | {statistics.median(refreshes):.2f} s |
"""
    emit(text, args.write)


if __name__ == "__main__":
    main()
