"""Engine-only micro-benchmark: predictions over knowledge bases of 1k and 10k patterns.

    python -m bench.engine [--sizes 1000 10000] [--write BENCHMARKS.md]

Patterns have 5-10 events of 1-2 symbols over a 1,000-symbol alphabet (fixed seed). Each
query is a 3-event STM cut from a learned pattern, with one foreign symbol mixed in, and is
answered by the pure engine against the in-memory KB (no IO). Reports median and p99.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import rapidfuzz

from bench.report import emit
from kato_grpc import names
from kato_grpc.encoding import DEFAULT_MEMO_BYTES, EventMemo, add_predictions
from kato_grpc.engine.config import EngineConfig
from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.predict import predict
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.memory import InMemoryKnowledgeBase
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

# Predictions name their patterns in full, as the service sends them.
PREFIX = names.pattern_prefix("bench")
ALPHABET = [f"s{i:04d}" for i in range(1000)]
SEED = 20261125


def build_kb(size: int, rng: random.Random) -> tuple[InMemoryKnowledgeBase, list[list[list[str]]]]:
    kb = InMemoryKnowledgeBase()
    patterns: list[list[list[str]]] = []
    for _ in range(size):
        events = [sorted(rng.sample(ALPHABET, rng.randint(1, 2))) for _ in range(rng.randint(5, 10))]
        patterns.append(events)
        write = storage.PatternWrite(name=pattern_name(events), persistence=5)
        write.events.extend(pb.Event(symbols=e) for e in events)
        write.symbol_counts.update(Counter(s for e in events for s in e))
        kb.apply(write)
    return kb, patterns


def queries(patterns: list[list[list[str]]], count: int, rng: random.Random) -> list[list[list[str]]]:
    out = []
    for _ in range(count):
        p = rng.choice(patterns)
        start = rng.randint(0, len(p) - 3)
        stm = [list(e) for e in p[start : start + 3]]
        stm[1] = sorted([*stm[1], rng.choice(ALPHABET)])
        out.append(stm)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def answer(
    stm: list[list[str]], kb: InMemoryKnowledgeBase, config: EngineConfig, memo: EventMemo
) -> svc.GetPredictionsResponse:
    """A GetPredictions answer without IO: the engine's values, then their messages (with a
    memo of encoded events shared by the calls, as the service keeps one per process)."""
    out = svc.GetPredictionsResponse()
    add_predictions(predict(stm, kb, config), PREFIX, out.predictions, out.future_potentials, memo)
    return out


def measure(size: int, repeats: int) -> dict[str, float]:
    rng = random.Random(SEED)
    gc.collect()
    before = rss_mb()
    kb, patterns = build_kb(size, rng)
    gc.collect()
    grown = rss_mb() - before
    gc.freeze()  # as the server's KB cache does after a large refresh
    config = EngineConfig()
    memo = EventMemo(DEFAULT_MEMO_BYTES)
    samples = []
    counts = []
    for stm in queries(patterns, repeats, rng):
        t0 = time.perf_counter()
        preds = answer(stm, kb, config, memo).predictions
        samples.append((time.perf_counter() - t0) * 1000)
        counts.append(len(preds))
    samples.sort()
    # The service suite's query shape: an STM of 3 random one-symbol events.
    random_samples = []
    for _ in range(repeats):
        stm = [[symbol] for symbol in rng.sample(ALPHABET, 3)]
        t0 = time.perf_counter()
        answer(stm, kb, config, memo)
        random_samples.append((time.perf_counter() - t0) * 1000)
    return {
        "patterns": size,
        "queries": repeats,
        "median_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "random_median_ms": statistics.median(random_samples),
        "median_predictions": statistics.median(counts),
        "mb_per_100k": grown * 100_000 / size,
    }


def exponent(rows: list[dict[str, float]], key: str) -> float:
    first, last = rows[0], rows[-1]
    return math.log(last[key] / first[key]) / math.log(last["patterns"] / first["patterns"])


def report(rows: list[dict[str, float]], command: str) -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "## Engine only: GetPredictions computation (issue 2 baseline)",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {cpu}, {len(__import__('os').sched_getaffinity(0))} cores",
        f"- python {platform.python_version()}, numpy {np.__version__}, rapidfuzz {rapidfuzz.__version__}",
        "- workload: patterns of 5-10 events (1-2 symbols each) over a 1,000-symbol alphabet, seed "
        f"{SEED}; query = 3 consecutive events of a learned pattern plus one foreign symbol; default "
        "config (recall_threshold 0.1, max_predictions 100); in-memory KB, no IO; the response is built"
        " as the service builds it (one memo of encoded events shared by the calls).",
        "",
        "| learned patterns | queries | median ms | p99 ms | median predictions returned "
        "| median ms, 3 random symbols | index MB per 100k |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['patterns']):,} | {int(r['queries'])} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['median_predictions']:.0f} | {r['random_median_ms']:.2f} | {r['mb_per_100k']:.0f} |"
        )
    if len(rows) >= 2 and rows[-1]["patterns"] > rows[0]["patterns"]:
        lines += [
            "",
            f"Growth exponent of the median, {int(rows[0]['patterns']):,} to {int(rows[-1]['patterns']):,} "
            f"patterns (1.0 = linear): {exponent(rows, 'median_ms'):.2f} (pattern queries), "
            f"{exponent(rows, 'random_median_ms'):.2f} (random symbols).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = [measure(size, args.queries) for size in args.sizes]
    text = report(rows, "python -m bench.engine " + " ".join(sys.argv[1:] if argv is None else argv))
    emit(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
