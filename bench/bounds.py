"""What bounds an import and `kato train`: each process's CPU over the run, as a share of the
wall clock — the server, MongoDB (SecantusDB here), Redis and the client (this process).

    python -m bench.bounds [--patterns 30000] [--write BENCHMARKS.md]

A process near 100 % of a core is the bound; SecantusDB is a Python server, so its share
tops out below one core. The per-pattern CPU of each process says what rate each alone would
allow (docs/performance.md, "The per-call floor").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.costs import cpu_seconds
from bench.report import emit
from bench.tools import SEED, VOCABULARY, corpus, write_generated
from kato_grpc.cli import transfer
from kato_grpc.cli.train import Corpus, train
from kato_grpc.client import KatoClient
from kato_server import devstack
from kato_server.devserver import new_server

Row = dict[str, float]


def measured(pids: Mapping[str, int], work: Callable[[], int]) -> Row:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    patterns = work()
    wall = time.monotonic() - started
    row = {"patterns": float(patterns), "wall": wall}
    for name, pid in pids.items():
        row[name] = cpu_seconds(pid) - before[name]
    return row


def run(patterns: int) -> dict[str, Row]:
    out: dict[str, Row] = {}
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False).start(KATO_WORKERS="1")
        assert server.proc is not None
        pids = {"server": server.proc.pid, "mongodb": mongo.proc.pid, "redis": redis.proc.pid, "client": os.getpid()}
        try:
            with KatoClient(server.address, timeout=600) as kato:
                rnd = random.Random(SEED + 1)
                generated = (
                    {"events": [[rnd.choice(VOCABULARY)] for _ in range(rnd.randint(5, 10))], "frequency": 1 + i % 3}
                    for i in range(patterns)
                )
                source = tmp / "source.jsonl"
                write_generated(source, generated)
                out["import (500 patterns a message)"] = measured(
                    pids, lambda: transfer.import_file(kato, "bounds-import", source, "gen").patterns
                )
                text = tmp / "corpus.txt"
                corpus(text, patterns)
                out["`kato train` (2 sessions, 200 sequences a call)"] = measured(
                    pids, lambda: train(kato, "bounds-train", Corpus([text]), batch=200, parallel=2).learned
                )
        finally:
            server.stop()
    return out


def report(rows: dict[str, Row], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## What bounds import and training (issue 23)",
        "",
        f"- command: `{command}`",
        f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process, local Valkey and "
        "SecantusDB (a MongoDB stand-in written in Python), the client in the benchmark's process",
        "- CPU of each process over the run as a share of the wall clock (100 % = one core), and its CPU per pattern",
        "",
        "| run | patterns/s | server | MongoDB | Redis | client | server ms/pattern | MongoDB ms/pattern |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        share = {k: f"{100 * r[k] / r['wall']:.0f} %" for k in ("server", "mongodb", "redis", "client")}
        per = {k: f"{1000 * r[k] / max(1.0, r['patterns']):.3f}" for k in ("server", "mongodb")}
        lines.append(
            f"| {name} | {r['patterns'] / r['wall']:,.0f} | {share['server']} | {share['mongodb']} | {share['redis']} "
            f"| {share['client']} | {per['server']} | {per['mongodb']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=30_000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.bounds " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.patterns), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
