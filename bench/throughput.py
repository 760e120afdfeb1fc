"""Unary Observe throughput and where its CPU goes (issue 14's targets: ≥ 2,000 observe/s with
64 sessions on this 2-core machine; Observe within 2x a bare health RPC in the same run).

    python -m bench.throughput [--rounds 3] [--seconds 10] [--calls 500] [--write BENCHMARKS.md]

Per round, against one server of 2 worker processes on the local stores: 64 concurrent loops
of unary Observe (as ``bench.service``: 64 sessions on 4 fresh nodes over 8 connections), then
the same 64 loops of a bare health Check; the CPU each process spent per call (/proc utime +
stime: this client, the server's processes, Valkey, SecantusDB); and at concurrency 1 the
Observe and health-check p50 (``bench.service``'s latency suite, same server).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.costs import cpu_seconds
from bench.report import emit
from bench.service import latency_suite, throughput
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server

PROCESSES = ("client", "server", "redis", "mongodb")


async def health_throughput(address: str, loops: int, seconds: float) -> float:
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    stubs = [health_pb2_grpc.HealthStub(c) for c in channels]
    done, stop = 0, time.perf_counter() + seconds

    async def loop(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await stubs[i % 8].Check(health_pb2.HealthCheckRequest())
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(loops)))
    rate = done / (time.perf_counter() - t0)
    for c in channels:
        await c.close()
    return rate


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {"client": time.process_time()} | {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}


def _per_call(
    run: Callable[[], Coroutine[Any, Any, float]], pids: dict[str, list[int]], seconds: float
) -> dict[str, float]:
    before = _cpu(pids)
    rate = asyncio.run(run())
    after = _cpu(pids)
    calls = rate * seconds
    return {"rate": rate} | {k: (after[k] - before[k]) / calls * 1000 for k in PROCESSES}


async def _latency(address: str, calls: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await latency_suite(svc_grpc.KatoServiceStub(channel), health_pb2_grpc.HealthStub(channel), calls)


def run(rounds: int, seconds: float, calls: int = 500) -> list[dict[str, dict[str, float]]]:
    out = []
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False).start(KATO_WORKERS="2")
        try:
            pids = {"server": server.pids(), "redis": [redis.proc.pid], "mongodb": [mongo.proc.pid]}
            # Sessions, connections and caches warm: 2 s, or one window when windows are shorter.
            asyncio.run(throughput(server.address, 64, min(2.0, seconds)))
            for _ in range(rounds):
                latency = asyncio.run(_latency(server.address, calls))
                out.append(
                    {
                        "observe": _per_call(lambda: throughput(server.address, 64, seconds), pids, seconds),
                        "health": _per_call(lambda: health_throughput(server.address, 64, seconds), pids, seconds),
                        "latency": {"observe": latency["observe"][0], "health": latency["health"][0]},
                    }
                )
        finally:
            server.stop()
    return out


def report(rounds: list[dict[str, dict[str, float]]], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def med(call: str, key: str) -> float:
        return statistics.median(r[call][key] for r in rounds)

    rows = []
    for call in ("observe", "health"):
        cpu = [med(call, k) for k in PROCESSES]
        rates = " / ".join(f"{r[call]['rate']:,.0f}" for r in rounds)
        rows.append(
            f"| unary {call}, 64 loops | {rates} | {med(call, 'rate'):,.0f} | "
            + " | ".join(f"{c:.3f}" for c in cpu)
            + f" | {sum(cpu):.3f} |"
        )
    ratio = [r["latency"]["observe"] / r["latency"]["health"] for r in rounds]
    return "\n".join(
        [
            "## Unary Observe throughput and its CPU (issue 14)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores shared by the client, 2 server worker"
            " processes, Valkey and SecantusDB",
            "- targets: ≥ 2,000 unary observe/s; Observe p50 ≤ 2x a health check's at concurrency 1",
            "",
            "| calls | per second, each round | median | client CPU ms | server CPU ms | Redis CPU ms"
            " | MongoDB CPU ms | total CPU ms per call |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"- concurrency 1 (predictions on, 50-pattern KB): Observe p50 {med('latency', 'observe'):.3f} ms,"
            f" health check {med('latency', 'health'):.3f} ms: {statistics.median(ratio):.2f}x"
            f" (rounds: {' / '.join(f'{x:.2f}' for x in ratio)})",
            '- what the CPU per call says about the targets: docs/performance.md, "Unary Observe throughput"',
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=500, help="calls per latency figure at concurrency 1")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.rounds, args.seconds, args.calls), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
