"""Metrics (KATO_METRICS_PORT): a scrape after a scripted mix of calls finds exactly the
calls made, by RPC and status code, and the shell's events; each worker has its own port."""

from __future__ import annotations

import re
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest

from kato_grpc.client import InvalidArgument, KatoClient, NotFound
from kato_server import devstack
from kato_server.devserver import new_server

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+|NaN)", line)
        if match and not line.startswith("#"):
            out[match.group(1)] = float(match.group(2))
    return out


def _two_free_ports() -> int:
    """A free port whose next one is free too (worker 1's metrics)."""
    for _ in range(100):
        port = devstack.free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two free ports in a row")


def _rpc(metrics: dict[str, float], rpc: str, code: str) -> float:
    return metrics.get(f'kato_rpc_requests_total{{code="{code}",rpc="{rpc}"}}', 0.0)


def test_a_scrape_counts_every_call_by_rpc_and_code(stores: Stores, log_dir: Path) -> None:
    port = devstack.free_port()
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8]).start(KATO_METRICS_PORT=str(port))
    try:
        with KatoClient(server.address, retries=0) as kato:
            kb = "metrics-" + uuid.uuid4().hex
            session = kato.create_session(kb)
            for word in ("a", "b", "c"):
                kato.observe(session.name, [word])
            kato.learn(session.name)
            kato.get_predictions(session.name)
            with pytest.raises(InvalidArgument):
                kato.observe(session.name, ["x" * 5000])
            with pytest.raises(NotFound):
                kato.get_session("sessions/s-" + "0" * 32)
            list(kato.export_knowledge_base(kb))
            kato.delete_session(session.name)
        m = scrape(port)
        assert _rpc(m, "CreateSession", "OK") == 1
        assert _rpc(m, "Observe", "OK") == 3 and _rpc(m, "Observe", "INVALID_ARGUMENT") == 1
        assert _rpc(m, "Learn", "OK") == 1 and _rpc(m, "GetPredictions", "OK") == 1
        assert _rpc(m, "GetSession", "NOT_FOUND") == 1
        assert _rpc(m, "ExportKnowledgeBase", "OK") == 1 and _rpc(m, "DeleteSession", "OK") == 1
        assert m['kato_rpc_duration_seconds_count{rpc="Observe"}'] == 4
        assert m["kato_rpc_in_flight"] == 0
        assert m['kato_sessions_total{event="created"}'] == 1 and m['kato_sessions_total{event="deleted"}'] == 1
        assert m['kato_outbox_writes_total{result="applied"}'] == 1  # the learn's pattern
        assert m['kato_kb_cache_lookups_total{result="load"}'] >= 1
        assert m["process_resident_memory_bytes"] > 0
    finally:
        server.stop()


def test_each_worker_serves_its_own_metrics(stores: Stores, log_dir: Path) -> None:
    port = _two_free_ports()
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8])
    server.start(KATO_METRICS_PORT=str(port), KATO_WORKERS="2")
    try:
        with KatoClient(server.address) as kato:
            for _ in range(20):
                kato.create_session("workers-" + uuid.uuid4().hex)
        counts = [_rpc(scrape(p), "CreateSession", "OK") for p in (port, port + 1)]
        assert sum(counts) == 20  # every call counted once, by the worker that served it
    finally:
        server.stop()
