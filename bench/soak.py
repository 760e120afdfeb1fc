"""Soak: mixed load on a 2-worker server for N minutes, watching the servers' memory (issue 5).

    python -m bench.soak [--minutes 10] [--write BENCHMARKS.md]

Clients observe, learn (ObserveSequence with learn_at_end), ask for predictions, clear and
create/delete sessions, on a handful of nodes. Server RSS (both workers) is sampled every
5 s; the figure is its growth from the end of warm-up (a fifth of the run) to the end.

The learned sequences come from a fixed pool per node, so after warm-up learns mostly
re-learn known patterns (frequency, emotives) and the KBs stop growing: RSS growth then
measures leaks, not a legitimately larger KB cache. The number of patterns is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import time
from collections import Counter
from pathlib import Path

from bench.report import emit
from kato_grpc.client import AsyncKatoClient, KatoError, observation
from kato_server import devstack
from kato_server.devserver import new_server

ALPHABET = [f"w{i}" for i in range(300)]
POOL = 100  # learnable sequences per node


def _pool(node: str) -> list[list[str]]:
    rng = random.Random(node)
    return [[rng.choice(ALPHABET) for _ in range(rng.randint(2, 6))] for _ in range(POOL)]


async def client(kato: AsyncKatoClient, k: int, stop: float, codes: Counter[str]) -> None:
    rng = random.Random(k)
    node = f"soak-{k % 4}"
    pool = _pool(node)
    sid = (await kato.create_session(node)).name
    while time.monotonic() < stop:
        action = rng.random()
        try:
            if action < 0.6:
                await kato.observe(sid, rng.sample(ALPHABET, rng.randint(1, 2)), return_predictions=True)
            elif action < 0.75:
                # Learned alone (not after whatever the session observed before), so the
                # pattern is one of the pool's.
                await kato.clear_short_term_memory(sid)
                seq = [observation([symbol]) for symbol in rng.choice(pool)]
                await kato.observe_sequence(sid, seq, learn_at_end=True)
            elif action < 0.9:
                await kato.get_predictions(sid)
            elif action < 0.97:
                await kato.clear_short_term_memory(sid)
            else:
                await kato.delete_session(sid)
                sid = (await kato.create_session(node)).name
            codes["OK"] += 1
        except KatoError as exc:
            codes[exc.code] += 1


async def run(minutes: float) -> dict[str, object]:
    with devstack.scratch_stores() as (redis, mongo, tmp):
        server = new_server(redis, mongo, tmp, quick=False)
        await asyncio.to_thread(server.start, KATO_WORKERS="2")
        try:
            # Retries off: the soak counts what the server answers, not what a retry hides.
            clients = [AsyncKatoClient(server.address, retries=0) for _ in range(4)]
            started = time.monotonic()
            stop = started + minutes * 60
            codes: Counter[str] = Counter()
            tasks = [asyncio.create_task(client(clients[k % 4], k, stop, codes)) for k in range(16)]
            samples: list[tuple[float, float]] = []
            while time.monotonic() < stop:
                samples.append((time.monotonic() - started, server.rss_mb()))
                await asyncio.sleep(5)
            await asyncio.gather(*tasks)
            samples.append((time.monotonic() - started, server.rss_mb()))
            patterns = 0
            for node in range(4):
                patterns += len((await clients[0].list_patterns(f"soak-{node}", page_size=1000)).patterns)
            for c in clients:
                await c.close()
        finally:
            server.stop()
    warm = next(rss for t, rss in samples if t >= minutes * 60 / 5)
    return {
        "codes": codes,
        "warm": warm,
        "end": samples[-1][1],
        "peak": max(r for _, r in samples),
        "patterns": patterns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--write", type=Path, default=None, help="write the report's section into this file")
    args = parser.parse_args(argv)
    r = asyncio.run(run(args.minutes))
    codes: Counter[str] = r["codes"]  # type: ignore[assignment]
    warm, end, peak = float(r["warm"]), float(r["end"]), float(r["peak"])  # type: ignore[arg-type]
    patterns: int = r["patterns"]  # type: ignore[assignment]
    growth = (end - warm) / warm * 100
    text = "\n".join(
        [
            "## Soak (make soak)",
            "",
            f"- command: `python -m bench.soak {' '.join(sys.argv[1:] if argv is None else argv)}`",
            f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- {args.minutes:g} minutes, 16 clients, mixed observe / learn / predictions / clear / session churn,"
            " 2 workers, local stores",
            f"- learned sequences drawn from a pool of {POOL} per node: {patterns} patterns in the 4 KBs"
            " at the end (so the KB caches stop growing after warm-up)",
            f"- calls: {sum(codes.values()):,} ({', '.join(f'{k} {v:,}' for k, v in sorted(codes.items()))})",
            f"- server RSS (both workers): {warm:.0f} MB after warm-up, {end:.0f} MB at the end, peak {peak:.0f} MB:"
            f" growth {growth:+.1f} % (target < 5 %)",
            "",
        ]
    )
    emit(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
