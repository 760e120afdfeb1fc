"""Benchmarks of the user tools (issue 12): `kato train`, export and import, on real local
stores and a real server process, through the Python client the CLI uses.

    python -m bench.tools [--sequences 100000] [--patterns 100000] [--write BENCHMARKS.md]

- train: a generated corpus (one sequence a line, 4-8 tokens over a 2,000-word vocabulary)
  learned with `kato train`'s code path (2 sessions side by side, 200 sequences a call);
  patterns/s end to end; then a sample of the same sequences learned with unary Observe +
  Learn into another KB, and both KBs' exports compared over those patterns.
- export / import: a KB of ``--patterns`` patterns (imported first), exported to a JSON Lines
  file and imported from it into a fresh KB; patterns/s each way and the client's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.report import emit
from kato_grpc import names
from kato_grpc.cli import transfer
from kato_grpc.cli.train import Corpus, train
from kato_grpc.client import KatoClient
from kato_server import devstack
from kato_server.devserver import new_server

SEED = 20261201
VOCABULARY = [f"w{i:04d}" for i in range(2000)]


def corpus(path: Path, sequences: int) -> None:
    rnd = random.Random(SEED)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(sequences):
            out.write(" ".join(rnd.choice(VOCABULARY) for _ in range(rnd.randint(4, 8))) + "\n")


def _rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _frequencies(kato: KatoClient, kb: str) -> dict[str, int]:
    return {names.pattern_id(p.name): p.frequency for p in kato.patterns(kb)}


def run(args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False)
        server.start(KATO_WORKERS="1")
        try:
            with KatoClient(server.address, timeout=600) as kato:
                text = tmp / "corpus.txt"
                corpus(text, args.sequences)
                result = train(kato, "bench-train", Corpus([text]), batch=200, parallel=2)
                out |= {"train_rate": result.learned / result.seconds, "train_seconds": result.seconds}
                out |= {"train_learned": result.learned, "train_new": result.new}
                print(f"train: {out['train_rate']:,.0f} patterns/s", flush=True)
                # The same sequences through unary calls (a sample: unary is ~100x slower).
                sample = tmp / "sample.txt"
                sample.write_text("".join(text.read_text().splitlines(keepends=True)[: args.sample]))
                train(kato, "bench-train-sample", Corpus([sample]), batch=200, parallel=2)
                session = kato.create_session("bench-unary")
                for line in sample.read_text().splitlines():
                    for token in line.split():
                        kato.observe(session.name, [token])
                    kato.learn(session.name)
                same = _frequencies(kato, "bench-train-sample") == _frequencies(kato, "bench-unary")
                out["unary_identical"] = float(same)

                # Export / import of a large KB (made by importing generated patterns).
                rnd = random.Random(SEED + 1)
                patterns = (
                    {"events": [[rnd.choice(VOCABULARY)] for _ in range(rnd.randint(5, 10))], "frequency": 1 + i % 3}
                    for i in range(args.patterns)
                )
                source = tmp / "source.jsonl"
                write_generated(source, patterns)
                t0 = time.monotonic()
                transfer.import_file(kato, "bench-source", source, "gen")
                print(f"generated import: {args.patterns / (time.monotonic() - t0):,.0f} patterns/s", flush=True)
                exported = tmp / "export.jsonl"
                rss0, server0, t0 = _rss_mb(), server.rss_mb(), time.monotonic()
                with exported.open("w", encoding="utf-8") as fh:
                    count, _ = transfer.export(kato, "bench-source", fh)
                out |= {"export_rate": count / (time.monotonic() - t0), "exported": count}
                print(f"export: {out['export_rate']:,.0f} patterns/s", flush=True)
                t0 = time.monotonic()
                reply = transfer.import_file(kato, "bench-copy", exported, "copy")
                out |= {"import_rate": reply.patterns / (time.monotonic() - t0), "imported": reply.patterns}
                out["client_rss_growth_mb"] = _rss_mb() - rss0
                out["server_rss_growth_mb"] = server.rss_mb() - server0
        finally:
            server.stop()
    return out


def write_generated(path: Path, patterns: Iterator[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"format": transfer.FORMAT, "version": transfer.VERSION, "knowledge_base": {}}) + "\n")
        for p in patterns:
            events = [{"symbols": e} for e in p["events"]]
            fh.write(json.dumps({"pattern": {"events": events, "frequency": str(p["frequency"])}}) + "\n")


def report(r: dict[str, float], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    return "\n".join(
        [
            "## User tools: train, export, import (issue 12)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()} {cpu}, {_cores()} cores; one server process",
            "",
            "| figure | value | target |",
            "|---|---:|---:|",
            f"| `kato train`, {int(r['train_learned']):,} sequences (2 sessions, 200 a call) | "
            f"{r['train_rate']:,.0f} patterns/s ({r['train_seconds']:.1f} s, {int(r['train_new']):,} new)"
            " | ≥ 1,500/s |",
            f"| the same sample through unary Observe + Learn: identical KB | "
            f"{'yes' if r['unary_identical'] else 'NO'} | yes |",
            f"| export, {int(r['exported']):,} patterns to JSON Lines | {r['export_rate']:,.0f} patterns/s"
            " | ≥ 20,000/s |",
            f"| import of that file into a fresh KB | {r['import_rate']:,.0f} patterns/s | ≥ 20,000/s |",
            f"| RSS growth over export + import of {int(r['exported']):,} patterns: client, server | "
            f"{r['client_rss_growth_mb']:.0f} MB, {r['server_rss_growth_mb']:.0f} MB | flat |",
            "",
        ]
    )


def _cores() -> int:
    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--patterns", type=int, default=100_000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    text = report(run(args), "python -m bench.tools " + " ".join(sys.argv[1:] if argv is None else argv))
    emit(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
