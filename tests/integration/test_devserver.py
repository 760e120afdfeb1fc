"""The harness's forked servers (docs/architecture.md §8) behave as processes started with
``python -m``: their own environment, log file, exit code and signals."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from kato_server import devstack
from kato_server.devserver import ForkedProcess, launch, new_server

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def test_a_forked_server_reads_its_environment_and_writes_its_log_and_exit_code(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir)
    process = launch("kato_server", server.env | {"KATO_WORKERS": "none"}, server.log_path)
    assert isinstance(process, ForkedProcess)  # the suite runs with DEVSERVER_FORK=1
    assert process.wait(60) == 2
    assert "invalid setting KATO_WORKERS" in server.log_path.read_text(encoding="utf-8")


def test_a_forked_server_stops_on_sigterm_and_dies_on_sigkill(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start()
    assert isinstance(server.proc, ForkedProcess) and server.proc.poll() is None
    assert server.stop() == 0  # SIGTERM: drained and exited
    killed = new_server(*stores, log_dir).start()
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL


def test_a_server_given_its_own_hash_seed_is_a_fresh_interpreter(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start(PYTHONHASHSEED="7")
    try:
        assert isinstance(server.proc, subprocess.Popen)
        assert Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0").count(b"PYTHONHASHSEED=7") == 1
    finally:
        server.stop()
