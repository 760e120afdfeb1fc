"""Learn answered at commit (KATO_LEARN_ACK=committed) vs once applied (issue 14): Learn and
Observe p50 of the two servers measured in turn, and how long another replica waits to see a
pattern after its learn was answered (a second server process on the same stores polls
GetPattern until it is there).

    python -m bench.learn_ack [--rounds 5] [--calls 2000] [--learns 300] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import grpc

from bench.ab import Rounds, alternate, table
from bench.report import emit
from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server


def visibility_ms(writer: ServerProcess, reader: ServerProcess, learns: int) -> list[float]:
    """Per learn: ms from its answer until another process's GetPattern finds it."""
    w, r = writer.stub(), reader.stub()
    kb = names.knowledge_base("visibility")
    sid = w.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb))).name
    out = []
    for i in range(learns):
        for symbol in (f"v{i}", f"w{i}"):
            w.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[symbol])))
        name = w.Learn(svc.LearnRequest(name=sid)).pattern
        answered = time.perf_counter()
        while True:
            try:
                r.GetPattern(svc.GetPatternRequest(name=name))
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        out.append((time.perf_counter() - answered) * 1000)
    return out


def run(rounds: int, calls: int, learns: int) -> tuple[Rounds, list[float]]:
    with devstack.scratch_stores() as (redis, mongo, tmp):
        servers = {
            "applied": new_server(redis, mongo, tmp, "bench_applied", redis_db=1, quick=False).start(),
            "committed": new_server(redis, mongo, tmp, "bench_committed", redis_db=2, quick=False).start(
                KATO_LEARN_ACK="committed"
            ),
        }
        reader = new_server(redis, mongo, tmp, "bench_committed", redis_db=2, quick=False).start()
        try:
            results = alternate(servers, rounds, calls)
            lags = visibility_ms(servers["committed"], reader, learns)
        finally:
            for server in (*servers.values(), reader):
                server.stop()
    return results, lags


def report(r: Rounds, lags: list[float], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lags = sorted(lags)
    p50, p99 = statistics.median(lags), lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    return "\n".join(
        [
            "## Learn acknowledged at commit (issue 14)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; local Valkey and SecantusDB",
            "- targets: Learn p50 ≤ 3 ms; another session sees the pattern within p99 ≤ 50 ms",
            "",
            *table(r, "learn", "applied"),
            "",
            *table(r, "observe", "applied"),
            "",
            f"- committed: another server process finds the pattern {p50:.1f} ms (p50) / {p99:.1f} ms (p99)"
            f" after the learn's answer ({len(lags)} learns, GetPattern polled back to back)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--learns", type=int, default=300)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.learn_ack " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(*run(args.rounds, args.calls, args.learns), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
