"""What the test harness pays per server process (issue 22's `make test` figure): the wall and
CPU time from start to SERVING of a server started as a fresh `python -m kato_server` and of
one forked from the harness's preloaded fork server (`DEVSERVER_FORK=1`, docs/architecture.md
§8), and what an idle server and its stores spend at the tests' health interval and at the
default one.

    python -m bench.harness [--starts 10] [--idle-seconds 20] [--write BENCHMARKS.md]

CPU is read from /proc (utime + stime) of the server process before it stops; the stores'
from theirs. Starts alternate fresh / forked to spread the machine's noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench.costs import cpu_seconds
from bench.report import emit
from kato_server import devserver, devstack
from kato_server.devserver import new_server

MODES = {"fresh interpreter (`python -m kato_server`)": "0", "forked from the fork server": "1"}


def _start(redis: devstack.LocalServer, mongo: devstack.LocalServer, tmp: Path, fork: str) -> tuple[float, float]:
    """(seconds to SERVING, CPU seconds of the server by then)."""
    os.environ[devserver.FORK_VARIABLE] = fork
    server = new_server(redis, mongo, tmp)
    started = time.perf_counter()
    server.start()
    wall = time.perf_counter() - started
    assert server.proc is not None
    cpu = cpu_seconds(server.proc.pid)
    server.stop()
    return wall, cpu


def _idle(redis: devstack.LocalServer, mongo: devstack.LocalServer, tmp: Path, seconds: float, interval: str) -> float:
    """CPU seconds per second of an idle server and its two stores."""
    server = new_server(redis, mongo, tmp).start(KATO_HEALTH_INTERVAL_SECONDS=interval)
    assert server.proc is not None
    pids = [server.proc.pid, redis.proc.pid, mongo.proc.pid]
    time.sleep(1)  # past its start-up work
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    used = sum(cpu_seconds(p) for p in pids) - before
    server.stop()
    return used / seconds


def run(starts: int, idle_seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    saved = os.environ.get(devserver.FORK_VARIABLE)
    try:
        with devstack.scratch_stores() as (redis, mongo, tmp):
            _start(redis, mongo, tmp, "1")  # the fork server itself starts once, before any timing
            for _ in range(starts):
                for name, fork in MODES.items():
                    wall, cpu = _start(redis, mongo, tmp, fork)
                    out.setdefault(f"{name} wall", []).append(wall)
                    out.setdefault(f"{name} cpu", []).append(cpu)
            os.environ[devserver.FORK_VARIABLE] = "1"
            for interval in ("0.2", "0.5", "1.0"):
                out[f"idle {interval}"] = [_idle(redis, mongo, tmp, idle_seconds, interval)]
    finally:
        if saved is None:
            os.environ.pop(devserver.FORK_VARIABLE, None)
        else:
            os.environ[devserver.FORK_VARIABLE] = saved
    return out


def report(r: dict[str, list[float]], command: str, starts: int) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## The test harness's servers (bench.harness)",
        "",
        f"- command: `{command}`",
        f"- date: {now}; machine: {platform.machine()}, {os.cpu_count()} cores shared with the stores",
        "",
        f"| a server process ({starts} starts each, alternating) | to SERVING, median | its CPU by then, median |",
        "|---|---:|---:|",
    ]
    for name in MODES:
        wall, cpu = statistics.median(r[f"{name} wall"]), statistics.median(r[f"{name} cpu"])
        lines.append(f"| {name} | {wall:.3f} s | {cpu:.3f} s |")
    lines += [
        "",
        "| an idle server and its stores, health checked every | CPU seconds per second |",
        "|---|---:|",
        *(f"| {interval} s | {r[f'idle {interval}'][0]:.4f} |" for interval in ("0.2", "0.5", "1.0")),
        "",
        "The tests use the fork server and a 0.5 s health interval (`kato_server/devserver.py`);",
        "`make test` keeps about ten servers alive at a time and starts over a hundred.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.harness " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.starts, args.idle_seconds), command, args.starts), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
