"""A tiny run of each benchmark, so `make bench` cannot rot (the figures come from make bench).

Each runs in this test process (its ``main`` with the arguments ``python -m`` would pass): a
benchmark is a client of the servers it starts, and its servers are forked from this process's
fork server (docs/architecture.md §8) instead of a fork server of its own."""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

from bench.report import HEADER


def _bench(module: str, *args: str) -> str:
    """What ``python -m module args`` prints (it must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = importlib.import_module(module).main(list(args))
    assert code in (0, None), f"{module} exited with {code}"
    return out.getvalue()


def test_engine_benchmark_smoke() -> None:
    out = _bench("bench.engine", "--sizes", "100", "300", "--queries", "5")
    assert "| 300 | 5 |" in out


def test_service_benchmark_smoke() -> None:
    out = _bench("bench.service", "--smoke")
    for figure in ("health-check RPC", "Learn", "bulk training", "ObserveStream vs unary", "Growth exponent"):
        assert figure in out


def test_tools_benchmark_smoke(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(HEADER + "\n## Soak (make soak)\n\nkept\n", encoding="utf-8")
    _bench("bench.tools", "--sequences", "300", "--sample", "30", "--patterns", "300", "--write", str(report))
    text = report.read_text(encoding="utf-8")
    assert "## Soak (make soak)\n\nkept" in text  # other sections stay
    assert "| the same sample through unary Observe + Learn: identical KB | yes | yes |" in text
    for figure in ("`kato train`, 300 sequences", "export, 300 patterns", "import of that file"):
        assert figure in text


def test_bounds_benchmark_smoke() -> None:
    out = _bench("bench.bounds", "--patterns", "200")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    for run in ("import (500 patterns a message)", "`kato train` (2 sessions, 200 sequences a call)"):
        rate, server, mongodb = (cell.strip() for cell in rows[run][:3])
        assert float(rate.replace(",", "")) > 0 and server != "0 %" and mongodb != "0 %", rows[run]


def test_overhead_benchmark_smoke() -> None:
    out = _bench("bench.overhead", "--rounds", "1", "--calls", "30")
    for server in ("| off |", "| metrics |", "| traces |", "| access log |"):
        assert server in out
    assert " 0 spans received" not in out  # the traced server really exported


def test_cluster_benchmark_smoke() -> None:
    out = _bench("bench.cluster", "--rounds", "1", "--calls", "30")
    for server in ("| one Redis |", "| cluster |", "| cluster + WAIT 1 |"):
        assert server in out


def test_costs_benchmark_smoke() -> None:
    out = _bench("bench.costs", "--calls", "20")
    observe = next(line for line in out.splitlines() if line.startswith("| Observe"))
    # One round trip per call (1 in 4 with a clear): the session is this process's (architecture.md §3).
    assert "redis commit_or_load 1.25" in observe and "redis load" not in observe, observe
    assert "redis compare_and_set" not in observe, observe
    assert "mongodb apply_many" not in observe


def test_learn_ack_benchmark_smoke() -> None:
    out = _bench("bench.learn_ack", "--rounds", "1", "--calls", "30", "--learns", "5")
    assert "| applied |" in out and "| committed |" in out and "finds the pattern" in out


def test_million_benchmark_smoke() -> None:
    out = _bench("bench.million", "--patterns", "300", "--queries", "3")
    assert "| GetPredictions p50 / p99 at 300 |" in out and "| cold start" in out


def test_coldstart_benchmark_smoke() -> None:
    out = _bench("bench.coldstart", "--patterns", "1500", "--restarts", "1")
    for row in ("| from its documents", "| from its snapshot", "| with `KATO_PRELOAD_NODES`"):
        assert row in out


def test_throughput_benchmark_smoke() -> None:
    out = _bench("bench.throughput", "--rounds", "1", "--seconds", "1", "--calls", "50")
    assert "| unary observe, 64 loops |" in out and "| unary health, 64 loops |" in out
    assert "concurrency 1" in out


def test_refresh_benchmark_smoke() -> None:
    out = _bench("bench.refresh", "--rounds", "1")
    assert "| health latency p50 / p99 |" in out and "s-deadline call" in out


def test_watchers_benchmark_smoke() -> None:
    out = _bench("bench.watchers", "--watchers", "8", "--learns", "5")
    assert "| 8 watchers |" in out and "| ratio of the medians |" in out


def test_heavy_call_benchmark_smoke() -> None:
    out = _bench("bench.heavy_call", "--rounds", "1")
    for row in ("| health checks / Observes during the heavy calls |", "| Observe latency p50 / p99 |"):
        assert row in out
    assert "| the heavy GetPredictions (median) |" in out


def test_round_trip_benchmark_smoke() -> None:
    out = _bench("bench.round_trip", "--rounds", "1", "--calls", "30")
    assert "| one round trip |" in out and "| two round trips |" in out and "Observe p50 / health p50" in out


def test_harness_benchmark_smoke() -> None:
    out = _bench("bench.harness", "--starts", "1", "--idle-seconds", "0.5")
    for row in ("| fresh interpreter (`python -m kato_server`) |", "| forked from the fork server |", "| 0.5 s |"):
        assert row in out
