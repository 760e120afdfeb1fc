"""Cold start of a large KB (issue 14): how long a fresh server process takes to answer the
first call on a KB of N patterns, loading it from its documents and from its snapshot.

    python -m bench.coldstart [--patterns 100000] [--restarts 5] [--write BENCHMARKS.md]

N patterns of 5-10 events are trained through the API (as ``bench.service``) with
predictions off, so the training server never caches the KB. Its first GetPredictions then
loads the KB from its documents (no snapshot exists yet): the "from documents" figure. That
server writes a snapshot once the KB is quiet; each of ``restarts`` fresh server processes
then answers a first Observe on the KB (CreateSession + Observe, which loads it): the
"from the snapshot" figure, and the same with ``KATO_PRELOAD_NODES`` naming the KB (the load
happens before readiness; the first call finds it cached).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pymongo import MongoClient

from bench.report import emit
from bench.service import SEED, train
from kato_grpc import names
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
    env = PATIENT | SNAPSHOT_SOON
    preload = env | {"KATO_PRELOAD_NODES": f'["{NODE}"]'}
    with tempfile.TemporaryDirectory() as tmp, devstack.local_stores(Path(tmp)) as (redis, mongo):
        server = new_server(redis, mongo, Path(tmp), quick=False).start(**env)
        try:
            rate, from_documents = asyncio.run(_train_then_query(server.address, NODE, patterns))
            header = wait_for_snapshot(mongo, "kato", NODE)
        finally:
            server.stop()
        cold = [_restart(redis, mongo, Path(tmp), env) for _ in range(restarts)]
        preloaded = [_restart(redis, mongo, Path(tmp), preload) for _ in range(restarts)]
    return Result(patterns, rate, from_documents, header, cold, preloaded)


def _restart(redis: devstack.LocalServer, mongo: devstack.LocalServer, tmp: Path, env: dict[str, str]) -> float:
    server: ServerProcess = new_server(redis, mongo, tmp, quick=False).start(**env)
    try:
        return asyncio.run(first_observe(server.address, NODE))
    finally:
        server.stop()


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
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m bench.coldstart " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(run(args.patterns, args.restarts), command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
