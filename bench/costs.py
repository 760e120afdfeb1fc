"""What one call costs (issue 14, the inputs of docs/scaling.md): for Observe, Learn and
GetPredictions on a 1,000-pattern KB, the CPU time of the server process, of Redis and of
MongoDB per call (/proc utime + stime over a run of calls, the client's own excluded), and
the store operations per call (the server's ``kato_store_duration_seconds_count`` by store
and operation, scraped before and after).

    python -m bench.costs [--calls 1000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from bench.report import emit
from kato_grpc.client import KatoClient
from kato_grpc.stores.keys import Keys
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import new_server

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def store_calls(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for operation, store, value in re.findall(
        r'kato_store_duration_seconds_count\{operation="(\w+)",store="(\w+)"\} ([0-9.e+]+)', text
    ):
        out[f"{store} {operation}"] = float(value)
    return out


def session_bytes(redis_port: int, session: str) -> int:
    key = Keys("bench_costs").state(session.removeprefix("sessions/"))  # its database's name
    with redis.Redis(port=redis_port) as r:
        return int(r.memory_usage(key, samples=0) or 0)


Row = tuple[str, dict[str, float], dict[str, float]]


def measure(calls: int) -> tuple[list[Row], dict[str, int]]:
    rng = random.Random(20261202)
    alphabet = [f"s{i}" for i in range(500)]
    rows: list[Row] = []
    sizes: dict[str, int] = {}
    with devstack.scratch_stores() as (redis, mongo, tmp):
        metrics = devstack.free_port()
        server = new_server(redis, mongo, tmp, "bench_costs", quick=False).start(KATO_METRICS_PORT=str(metrics))
        try:
            with KatoClient(server.address, retries=0) as kato:
                session = kato.create_session("costs")
                sequences = [[sorted(rng.sample(alphabet, 2)) for _ in range(5)] for _ in range(1000)]
                observations = [pb.Observation(strings=e) for s in sequences for e in s]
                kato.observe_sequence(session.name, observations, learn_after=[5 * k + 4 for k in range(1000)])
                sid = session.name

                def observe(i: int) -> None:
                    if i % 4 == 0:
                        kato.clear_short_term_memory(sid)
                    kato.observe(sid, sequences[i % 1000][0])

                def learn(i: int) -> None:
                    kato.observe(sid, [f"x{i}"])
                    kato.observe(sid, [f"y{i}"])
                    kato.learn(sid)

                def predictions(i: int) -> None:
                    kato.get_predictions(sid)

                work: list[tuple[str, Callable[[int], None], int]] = [
                    ("Observe (1 in 4 after a ClearShortTermMemory, counted in; predictions on)", observe, 1),
                    ("Learn (+ the two Observes before it)", learn, 3),
                    ("GetPredictions (1,000-pattern KB)", predictions, 1),
                ]
                predictions(0)  # the KB cached
                for label, call, per in work:
                    pids = {"server": server.pids()[0], "redis": redis.proc.pid, "mongodb": mongo.proc.pid}
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    ops_before = store_calls(metrics)
                    started = time.perf_counter()
                    for i in range(calls):
                        call(i)
                    wall = time.perf_counter() - started
                    cpu = {name: (cpu_seconds(pid) - before[name]) / calls * 1000 for name, pid in pids.items()}
                    cpu["wall"] = wall / calls * 1000
                    ops = {k: (v - ops_before.get(k, 0)) / calls for k, v in store_calls(metrics).items()}
                    rows.append((f"{label} ({per} RPC{'s' if per > 1 else ''})", cpu, ops))
                sizes["after the runs above (request records of every call kept)"] = session_bytes(redis.port, sid)
                fresh = kato.create_session("costs")
                sizes["new"] = session_bytes(redis.port, fresh.name)
                for i in range(4):  # the raw stub: the client would give each call a request id
                    observation = pb.Observation(strings=sequences[i][0])
                    kato.stub.Observe(svc.ObserveRequest(name=fresh.name, observation=observation))
                sizes["4 events observed, no request ids"] = session_bytes(redis.port, fresh.name)
                for i in range(100):
                    kato.observe(fresh.name, sequences[i][0])
                    if i % 4 == 3:
                        kato.clear_short_term_memory(fresh.name)
                sizes["+ 100 observes with request ids (the client's default)"] = session_bytes(redis.port, fresh.name)
        finally:
            server.stop()
    return rows, sizes


def report(rows: list[Row], sizes: dict[str, int], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Cost per call (issue 14: the inputs of docs/scaling.md)",
        "",
        f"- command: `{command}`",
        f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process, local Valkey and"
        " SecantusDB (a MongoDB-compatible server written in Python: its CPU is far above a real mongod's)",
        "- CPU: ms of each process's CPU per call (client excluded); wall: ms per call, one client in turn",
        "",
        "| call | server CPU | Redis CPU | MongoDB CPU | wall | store operations per call |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, cpu, ops in rows:
        used = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ops.items()) if v >= 0.005)
        figures = " | ".join(f"{cpu[k]:.2f}" for k in ("server", "redis", "mongodb", "wall"))
        lines.append(f"| {label} | {figures} | {used} |")
    lines += ["", "| session in Redis (MEMORY USAGE of its state key) | bytes |", "|---|---:|"]
    lines += [f"| {label} | {size:,} |" for label, size in sizes.items()]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.costs " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(*measure(args.calls), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
