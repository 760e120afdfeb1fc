"""What one Redis round trip per Observe buys (issue 23): bench.service's latency suite on two
servers that differ in one thing — the per-process session cache on (the default: a session
this process last committed is committed in one round trip) or off (KATO_SESSION_CACHE_MB=0:
load, then compare-and-set) — measured in turn (A/B/A/B...) to spread the machine's noise.

    python -m bench.round_trip [--rounds 3] [--calls 1000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
from pathlib import Path

from bench.ab import Rounds, alternate, table
from bench.report import emit
from kato_server import devstack
from kato_server.devserver import new_server

VARIANTS = {"two round trips": {"KATO_SESSION_CACHE_MB": "0"}, "one round trip": {}}


def run(rounds: int, calls: int) -> Rounds:
    with devstack.scratch_stores() as (redis, mongo, tmp):
        # Each server its own Redis database and MongoDB database: neither sees the other's KB.
        servers = {
            name: new_server(redis, mongo, tmp, f"bench_{i}", redis_db=i + 1, quick=False).start(**env)
            for i, (name, env) in enumerate(VARIANTS.items())
        }
        try:
            return alternate(servers, rounds, calls)
        finally:
            for server in servers.values():
                server.stop()


def report(r: Rounds, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ratios = [
        f"| {name} | {statistics.median(f['observe']) / statistics.median(f['health']):.2f}× |" for name, f in r.items()
    ]
    return "\n".join(
        [
            "## One round trip per Observe, side by side (issue 23)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process each, same stores",
            "- bench.service's latency suite: a 50-pattern KB, predictions on, 1 Observe in 4 after a "
            "ClearShortTermMemory; target: Observe p50 ≤ 2.0× a health check",
            "",
            *table(r, "observe", "two round trips"),
            "",
            *table(r, "health", "two round trips"),
            "",
            "| server | Observe p50 / health p50 (medians) |",
            "|---|---:|",
            *ratios,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.round_trip " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.rounds, args.calls), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
