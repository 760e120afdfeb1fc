"""What turning metrics on costs (issue 13): Observe p50 on a server with KATO_METRICS_PORT
unset and set, the two servers measured in turn (A/B/A/B...) to spread the machine's noise.

    python -m bench.overhead [--rounds 3] [--calls 2000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from bench.report import emit
from bench.service import latency_suite
from kato_grpc import devstack
from kato_grpc.devserver import new_server
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc


async def observe_p50(address: str, calls: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        result = await latency_suite(svc_grpc.KatoServiceStub(channel), health_pb2_grpc.HealthStub(channel), calls)
    p50: float = result["observe"][0]
    return p50


def run(rounds: int, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp, devstack.local_stores(Path(tmp)) as (redis, mongo):
        # Each server its own Redis database too: two servers sharing one would see each
        # other's published KB versions and refresh their caches on every call.
        servers = {
            "off": new_server(redis, mongo, Path(tmp), "bench_off", redis_db=1, quick=False).start(),
            "on": new_server(redis, mongo, Path(tmp), "bench_on", redis_db=2, quick=False).start(
                KATO_METRICS_PORT=str(devstack.free_port())
            ),
        }
        try:
            for _ in range(rounds):
                for name, server in servers.items():
                    out[name].append(asyncio.run(observe_p50(server.address, calls)))
        finally:
            for server in servers.values():
                server.stop()
    return out


def report(r: dict[str, list[float]], command: str) -> str:
    off, on = statistics.median(r["off"]), statistics.median(r["on"])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = " / ".join(f"{a:.3f} vs {b:.3f}" for a, b in zip(r["off"], r["on"], strict=True))
    return "\n".join(
        [
            "## Metrics overhead (issue 13)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process each, same stores",
            f"- Observe p50 per round, metrics off vs on (ms): {rows}",
            f"- median of the rounds: off {off:.3f} ms, on {on:.3f} ms: {100 * (on - off) / off:+.1f} %"
            " (target: within 5 %)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    results = run(args.rounds, args.calls)
    emit(report(results, "python -m bench.overhead " + " ".join(sys.argv[1:] if argv is None else argv)), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
