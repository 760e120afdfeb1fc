"""Cold start of a large KB (issues 14 and 23): how long a fresh server process takes to answer
the first call on a KB of N patterns, loading it from its documents and from its snapshot.

    python -m bench.coldstart [--patterns 100000] [--restarts 5] [--fill read train import]
                              [--write BENCHMARKS.md]

``--fill read`` (the default; issue 14): N patterns of 5-10 events are trained through the API
(as ``bench.service``) with predictions off, so the training server never caches the KB. Its
first GetPredictions then loads the KB from its documents (no snapshot exists yet): the "from
documents" figure. That server, now caching the KB, writes a snapshot once the KB is quiet;
each of ``restarts`` fresh server processes then answers a first Observe on the KB
(CreateSession + Observe, which loads it): the "from the snapshot" figure, and the same with
``KATO_PRELOAD_NODES`` naming the KB (the load happens before readiness; the first call finds
it cached).

``--fill train`` / ``--fill import`` (issue 23): the KB is only written — trained as above, or
imported (ImportKnowledgeBase, 500 patterns a message) — and nothing reads it, so the writing
server never caches it. Measured: how long after the last write its snapshot is stored (the
quiet period, 1 s, plus the writer loading the KB apart, encoding and storing it), and each
fresh process's first Observe on the KB, with the source its cache loaded the KB from
(``kato_kb_cache_loads_total``: every run must say "snapshot").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import random
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pymongo import MongoClient

from bench.report import emit
from bench.service import SEED, train, training_sequences
from kato_grpc import names
from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server

NODE = "bench-cold"
# The first load of a large KB from its documents outlasts the default store timeout and
# call limit (the point of this benchmark is to measure it, not to fail it).
PATIENT = {
    "KATO_STORE_TIMEOUT_SECONDS": "3600",
    "KATO_MAX_CALL_SECONDS": "3600",
    "KATO_MAX_CONNECTION_AGE_SECONDS": "0",
}


# Snapshots a second after the training's last refresh, whatever the KB's size (the default
# minimum of 1000 patterns would leave a small run waiting for one forever).
SNAPSHOT_SOON = {"KATO_KB_SNAPSHOT_QUIET_SECONDS": "1", "KATO_KB_SNAPSHOT_MIN_PATTERNS": "1"}


async def first_observe(address: str, node: str) -> float:
    """Seconds from a new channel to the answer of the first Observe on ``node``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = svc_grpc.KatoServiceStub(channel)
        t0 = time.perf_counter()
        session = await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        )
        await stub.Observe(svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=["w1"])))
        return time.perf_counter() - t0


async def _train_then_query(address: str, node: str, patterns: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = svc_grpc.KatoServiceStub(channel)
        rate = await train(stub, node, patterns, random.Random(SEED))
        session = await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        )
        t0 = time.perf_counter()
        await stub.GetPredictions(svc.GetPredictionsRequest(name=session.name))
        return rate, time.perf_counter() - t0


def wait_for_snapshot(
    mongo: devstack.LocalServer, database: str, node: str, timeout: float = 900, *, current: bool = False
) -> dict[str, int]:
    """The KB's snapshot header once one is stored (its version, parts, bytes); ``current``:
    one of the KB's current version."""
    client: MongoClient[dict[str, Any]] = MongoClient(devstack.mongodb_uri(mongo))
    with client:
        db = client[database]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            header = db.kb_snapshots.find_one({"kb_id": node, "part": -1}, sort=[("version", -1)])
            version = (db.kb.find_one({"kb_id": node}) or {}).get("version", 0) if current else 0
            if header is not None and header["version"] >= version:
                return {k: int(header[k]) for k in ("version", "parts", "bytes")}
            time.sleep(0.5)
    raise RuntimeError(f"no snapshot of {node} within {timeout} s")


@dataclass
class Result:
    patterns: int
    train_rate: float
    from_documents: float
    snapshot: dict[str, int]
    cold: list[float]
    preloaded: list[float]


def run(patterns: int, restarts: int) -> Result:
    """The issue-14 run (``--fill read``)."""
    env = PATIENT | SNAPSHOT_SOON
    preload = env | {"KATO_PRELOAD_NODES": f'["{NODE}"]'}
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False).start(**env)
        try:
            rate, from_documents = asyncio.run(_train_then_query(server.address, NODE, patterns))
            header = wait_for_snapshot(mongo, "kato", NODE)
        finally:
            server.stop()
        cold = [_restart(redis, mongo, tmp, env) for _ in range(restarts)]
        preloaded = [_restart(redis, mongo, tmp, preload) for _ in range(restarts)]
    return Result(patterns, rate, from_documents, header, cold, preloaded)


def _restart(redis: devstack.LocalServer, mongo: devstack.LocalServer, tmp: Path, env: dict[str, str]) -> float:
    server: ServerProcess = new_server(redis, mongo, tmp, quick=False).start(**env)
    try:
        return asyncio.run(first_observe(server.address, NODE))
    finally:
        server.stop()


WRITE_ONLY = ("train", "import")


@dataclass
class WriteOnly:
    """A write-only fill's figures (``--fill train`` / ``import``)."""

    fill: str
    patterns: int
    rate: float  # patterns written per second
    snapshot_after: float  # seconds from the last write to its snapshot stored
    snapshot: dict[str, int]
    cold: list[float]
    sources: list[str]  # what each fresh process's cache loaded the KB from


def _imported(address: str, node: str, patterns: int) -> float:
    """``patterns`` patterns like the training's (5-10 events of 1-2 symbols) imported into
    ``node``; patterns per second."""
    rng = random.Random(SEED)

    def generated() -> Iterator[pb.Pattern]:
        for _ in range(patterns):
            events = training_sequences(rng, 1, rng.randint(5, 10))
            yield pb.Pattern(events=[pb.Event(symbols=o.strings) for o in events])

    t0 = time.perf_counter()
    with KatoClient(address) as kato:
        reply = kato.import_knowledge_base(build.import_requests(node, "bench", generated()))
    assert reply.patterns == patterns, reply
    return patterns / (time.perf_counter() - t0)


async def _trained(address: str, node: str, patterns: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        return await train(svc_grpc.KatoServiceStub(channel), node, patterns, random.Random(SEED))


def _load_sources(port: int) -> str:
    """What the process's cache loaded KBs from (its metrics), e.g. "snapshot"."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^kato_kb_cache_loads_total\{source="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return "+".join(f"{source}×{int(float(n))}" if float(n) != 1 else source for source, n in found) or "none"


def run_write_only(fill: str, patterns: int, restarts: int) -> WriteOnly:
    """The KB filled by ``fill`` alone, its writer's snapshot, then fresh processes' first calls."""
    env = PATIENT | SNAPSHOT_SOON
    node = f"{NODE}-{fill}"
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False).start(**env)
        try:
            if fill == "train":
                rate = asyncio.run(_trained(server.address, node, patterns))
            else:
                rate = _imported(server.address, node, patterns)
            written = time.monotonic()
            header = wait_for_snapshot(mongo, "kato", node, current=True)
            snapshot_after = time.monotonic() - written
        finally:
            server.stop()
        cold, sources = [], []
        for _ in range(restarts):
            port = devstack.free_port()
            fresh = new_server(redis, mongo, tmp, quick=False).start(**env, KATO_METRICS_PORT=str(port))
            try:
                cold.append(asyncio.run(first_observe(fresh.address, node)))
                sources.append(_load_sources(port))
            finally:
                fresh.stop()
    return WriteOnly(fill, patterns, rate, snapshot_after, header, cold, sources)


def report_write_only(results: list[WriteOnly], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    how = {
        "train": "trained through the API, predictions off (ObserveSequence, auto-learn)",
        "import": "imported (ImportKnowledgeBase, 500 a message)",
    }
    lines = [
        "## Cold start after a write-only fill (issue 23)",
        "",
        f"- command: `{command}`",
        f"- date: {when}; machine: {platform.machine()}, 2 cores; local Valkey and SecantusDB, one server process",
        "- nothing reads the KB while it is written: its snapshot is the writer's, after the quiet period"
        " (`KATO_KB_SNAPSHOT_QUIET_SECONDS=1`), loaded apart from its cache",
        "",
        "| KB filled by | patterns written | snapshot stored after the last write | first call in a fresh process"
        " (CreateSession + Observe), s per run | median | loaded from | target |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for r in results:
        size = f"{r.snapshot['bytes'] / 1e6:.1f} MB"
        lines.append(
            f"| {how[r.fill]} | {r.patterns:,} ({r.rate:,.0f}/s) | {r.snapshot_after:.1f} s ({size})"
            f" | {' / '.join(f'{v:.2f}' for v in r.cold)} | {statistics.median(r.cold):.2f}"
            f" | {', '.join(sorted(set(r.sources)))} | ≤ 1 s |"
        )
    return "\n".join([*lines, ""])


def report(r: Result, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    size = f"{r.snapshot['bytes'] / 1e6:.1f} MB in {r.snapshot['parts']} part(s) at version {r.snapshot['version']:,}"

    def runs(values: list[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    return "\n".join(
        [
            "## Cold start (issue 14)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; local Valkey and SecantusDB, one server process",
            f"- KB: {r.patterns:,} patterns of 5-10 events trained through the API ({r.train_rate:,.0f}/s);"
            f" its snapshot: {size}",
            "",
            "| first call on the KB in a fresh process | seconds per run | median | target |",
            "|---|---|---:|---:|",
            f"| from its documents (no snapshot yet; GetPredictions) | {r.from_documents:.2f} |"
            f" {r.from_documents:.2f} | |",
            f"| from its snapshot (CreateSession + Observe) | {runs(r.cold)} |"
            f" {statistics.median(r.cold):.2f} | ≤ 1 s |",
            f"| with `KATO_PRELOAD_NODES` (loaded before readiness) | {runs(r.preloaded)} |"
            f" {statistics.median(r.preloaded):.2f} | |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=100_000)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument(
        "--fill",
        nargs="+",
        choices=("read", *WRITE_ONLY),
        default=["read"],
        help="read: trained, then read by the trainer (issue 14); train / import: written only (issue 23)",
    )
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.coldstart " + " ".join(sys.argv[1:] if argv is None else argv)
    if "read" in args.fill:
        emit(report(run(args.patterns, args.restarts), command), args.write)
    write_only = [run_write_only(fill, args.patterns, args.restarts) for fill in WRITE_ONLY if fill in args.fill]
    if write_only:
        emit(report_write_only(write_only, command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
