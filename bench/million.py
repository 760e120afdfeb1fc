"""1M patterns through the service (issue 14, ``make bench-1m``): one KB trained to 1,000,000
patterns of 5-10 events through the API (auto-learn, ObserveSequence) in ten steps, with
GetPredictions p50/p99 after each (3 random symbols, as ``bench.service``: the KB is in use
while it grows, so its cache refreshes and its snapshots are written behind the training);
the server's RSS; and the cold start: the server restarted (three times), the time until the
first Observe on the KB (which loads it from its snapshot) answers.

    python -m bench.million [--patterns 1000000] [--queries 50] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import grpc

from bench.coldstart import PATIENT, SNAPSHOT_SOON, first_observe, wait_for_snapshot
from bench.report import emit
from bench.service import prediction_suite
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server

NODE = "bench-predict"  # what bench.service's prediction suite trains
STEPS = 10
RESTARTS = 3


async def _suite(server: ServerProcess, patterns: int, queries: int) -> tuple[dict[str, float], float]:
    sizes = [patterns * (i + 1) // STEPS for i in range(STEPS)]
    async with grpc.aio.insecure_channel(server.address) as channel:
        rows, rate = await prediction_suite(svc_grpc.KatoServiceStub(channel), server, sizes, queries)
    return rows[-1], rate


def run(patterns: int, queries: int) -> dict[str, float]:
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False).start(**PATIENT, **SNAPSHOT_SOON)
        try:
            t0 = time.monotonic()
            row, rate = asyncio.run(_suite(server, patterns, queries))
            row |= {"train_rate": rate, "train_minutes": (time.monotonic() - t0) / 60}
            row["snapshot_mb"] = wait_for_snapshot(mongo, "kato", NODE, current=True)["bytes"] / 1e6
        finally:
            server.stop()
        colds = []
        for _ in range(RESTARTS):
            restarted = new_server(redis, mongo, tmp, quick=False).start(**PATIENT, **SNAPSHOT_SOON)
            try:
                colds.append(asyncio.run(first_observe(restarted.address, NODE)))
                row["cold_rss_mb"] = restarted.rss_mb()
            finally:
                restarted.stop()
        row |= {"cold_seconds": statistics.median(colds), "cold_min": min(colds), "cold_max": max(colds)}
    return row


def report(r: dict[str, float], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "## 1M patterns through the service (issue 14)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; local Valkey and SecantusDB, one server process",
            "",
            "| figure | measured | target |",
            "|---|---:|---:|",
            f"| patterns learned through the API | {int(r['patterns']):,} in {r['train_minutes']:.1f} min"
            f" ({r['train_rate']:,.0f}/s median) | |",
            f"| GetPredictions p50 / p99 at {int(r['patterns']):,} | {r['p50']:.1f} / {r['p99']:.1f} ms"
            " | p50 ≤ 30 ms |",
            f"| server RSS with the KB cached | {r['rss_mb']:,.0f} MB | |",
            f"| cold start: first Observe on the KB after a restart (median of {RESTARTS};"
            f" {r['cold_min']:.1f}-{r['cold_max']:.1f}) | {r['cold_seconds']:.1f} s | ≤ 10 s |",
            f"| server RSS after the cold start | {r['cold_rss_mb']:,.0f} MB | |",
            f"| the KB's snapshot | {r['snapshot_mb']:,.0f} MB | |",
            "",
            "- store timeout and call limit raised to 3600 s, connection age unlimited (before snapshots, the"
            " first query on the 1M KB failed UNAVAILABLE while its patterns loaded from their documents)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.million " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.patterns, args.queries), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
