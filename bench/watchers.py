"""Learns beside many watchers (issue 21): what a writer pays per watcher of its knowledge base.

    python -m bench.watchers [--watchers 320] [--learns 60] [--write BENCHMARKS.md]

One server process; the same learns (two observes, then Learn, each on its own session) are
timed with no watcher, then with ``--watchers`` WatchKnowledgeBase streams open on the KB (all
reading every change as it commits, from this benchmark's process). Reported: the Learn
call's latency, median and p99, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc

from bench.report import emit
from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server


async def learns(stub: svc_grpc.KatoServiceAsyncStub, kb: str, count: int) -> list[float]:
    quiet = pb.SessionConfig(process_predictions=False)
    times = []
    for i in range(count):
        session = await stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(kb), config=quiet))
        )
        for symbol in (f"a{i}", f"b{i}"):
            await stub.Observe(svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=[symbol])))
        t0 = time.perf_counter()
        await stub.Learn(svc.LearnRequest(name=session.name))
        times.append(time.perf_counter() - t0)
    return times


async def measure(address: str, watchers: int, count: int) -> tuple[list[float], list[float], int]:
    """(learn seconds without watchers, with them, events the watchers received)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = svc_grpc.KatoServiceStub(channel)
        alone = await learns(stub, "watch-" + uuid.uuid4().hex, count)
        kb = "watch-" + uuid.uuid4().hex
        received = 0
        first = asyncio.Event()

        async def watch() -> None:
            nonlocal received
            call = stub.WatchKnowledgeBase(
                svc.WatchKnowledgeBaseRequest(name=names.knowledge_base(kb), since_version=0)
            )
            async for part in call:
                received += len(part.events)
                if received >= watchers:
                    first.set()

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await learns(stub, kb, 1)  # every watch is live once each has seen this one
        await first.wait()
        beside = await learns(stub, kb, count)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return alone, beside, received


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=320)
    parser.add_argument("--learns", type=int, default=60)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, "bench_watchers", quick=False).start()
        try:
            alone, beside, received = asyncio.run(measure(server.address, args.watchers, args.learns))
        finally:
            server.stop()
    ms = 1000
    machine = f"{dt.date.today()}, {platform.machine()}, Python {sys.version.split()[0]}"
    ratio = statistics.median(beside) / statistics.median(alone)
    text = f"""## Learns beside watchers

`python -m bench.watchers --watchers {args.watchers} --learns {args.learns}` — {machine}.
The same learns on one server process, with no watcher, then with {args.watchers}
WatchKnowledgeBase streams on the KB (in the benchmark's process, on the same two cores;
they received {received:,} events).

| Learn | p50 | p99 |
|---|---:|---:|
| no watcher | {statistics.median(alone) * ms:.1f} ms | {_p99(alone) * ms:.1f} ms |
| {args.watchers} watchers | {statistics.median(beside) * ms:.1f} ms | {_p99(beside) * ms:.1f} ms |
| ratio of the medians | {ratio:.2f}x | |
"""
    emit(text, args.write)


if __name__ == "__main__":
    main()
