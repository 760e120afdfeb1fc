"""The service on one Redis server vs a Redis Cluster (3 masters + 3 replicas, local), and the
cost of acknowledging only replicated commits (KATO_REDIS_WAIT_REPLICAS=1): health, Observe
and Learn p50, the servers measured in turn (issue 14).

    python -m bench.cluster [--rounds 5] [--calls 2000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
from pathlib import Path

from bench.ab import Rounds, alternate, table
from bench.report import emit
from kato_server import devcluster, devstack
from kato_server.devserver import new_server


def run(rounds: int, calls: int) -> Rounds:
    with (
        tempfile.TemporaryDirectory() as tmp,
        devstack.local_stores(Path(tmp), throwaway=True) as (redis, mongo),
        devcluster.local_cluster(Path(tmp) / "cluster") as cluster,
    ):
        variants = {
            "one Redis": {},
            "cluster": {"KATO_REDIS_URL": cluster.url},
            "cluster + WAIT 1": {"KATO_REDIS_URL": cluster.url, "KATO_REDIS_WAIT_REPLICAS": "1"},
        }
        servers = {
            name: new_server(redis, mongo, Path(tmp), f"bench_{i}", redis_db=i + 1, quick=False).start(**env)
            for i, (name, env) in enumerate(variants.items())
        }
        try:
            return alternate(servers, rounds, calls)
        finally:
            for server in servers.values():
                server.stop()


def report(r: Rounds, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "## Redis Cluster (issue 14)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process each, same MongoDB;"
            " the cluster is 3 masters + 3 replicas of the local Valkey on loopback (the same 2 cores)",
            "",
            *table(r, "observe", "one Redis"),
            "",
            *table(r, "learn", "one Redis"),
            "",
            *table(r, "health", "one Redis"),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.cluster " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.rounds, args.calls), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
