"""A tiny run of both benchmarks, so `make bench` cannot rot (the figures come from make bench)."""

from __future__ import annotations

import subprocess
import sys

from kato_grpc.devserver import ROOT


def test_engine_benchmark_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--sizes", "100", "300", "--queries", "5"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "| 300 | 5 |" in out


def test_service_benchmark_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.service", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    for figure in ("health-check RPC", "Learn", "bulk training", "ObserveStream vs unary", "Growth exponent"):
        assert figure in out
