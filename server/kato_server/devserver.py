"""``python -m kato_server`` processes on local stores, for the integration tests and the benchmarks.

One harness for both: start a server on a free port (its own Redis database and MongoDB
database when asked), wait until it is SERVING, give out stubs, read its memory, stop it.

With ``DEVSERVER_FORK=1`` in the environment (the test suite sets it: tests/conftest.py) a
server process is forked from a multiprocessing fork server that has already imported
``kato_server`` instead of started by ``python -m``: the same code in its own process on its
own port, with its own environment, log file, signals and exit code, minus the 0.6-1 CPU-s of
imports a fresh interpreter spends before it serves (docs/architecture.md §8). The benchmarks
leave it unset: their cold starts must be real ones.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack

ROOT = Path(__file__).resolve().parents[2]  # the checkout: server/kato_server/devserver.py
FORK_VARIABLE = "DEVSERVER_FORK"


class Process(Protocol):
    """What the harness and the tests use of a server process: ``subprocess.Popen``'s subset."""

    pid: int

    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


def _run_forked(module: str, env: dict[str, str], cwd: str, log_path: str) -> None:  # pragma: no cover - child
    """The forked child: become ``python -m module`` with ``env``, output to ``log_path``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.argv = [module]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does at exit (multiprocessing's children skip it): the
        # server's atexit hooks (trace exporters) run, its output is flushed.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class ForkedProcess:
    """A ``multiprocessing`` process forked from the fork server, seen as a ``Popen``: the
    exit code is the child's, or minus the signal that ended it."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid: int = process.pid or 0

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@functools.cache
def _fork_context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # Imported once, in the fork server (a fresh interpreter, no gRPC object yet: the
    # server's own KATO_WORKERS fork relies on the same), before any server is forked.
    # What ``kato_server.__main__`` imports, not the module itself: runpy runs it as
    # ``__main__`` and warns when it is already imported.
    context.set_forkserver_preload(["kato_server.app", "kato_server.devstack", "kato_server.tracing", "kato_grpc.logs"])
    return context


def launch(module: str, env: dict[str, str], log_path: Path) -> Process:
    """``python -m module`` in ``env`` with its output appended to ``log_path``: a new
    interpreter, or a fork of the preloaded fork server under ``DEVSERVER_FORK=1`` — unless
    ``env`` asks for a hash seed other than this process's (which the fork server has): a
    fork cannot change it."""
    same_seed = env.get("PYTHONHASHSEED") == os.environ.get("PYTHONHASHSEED")
    if os.environ.get(FORK_VARIABLE) == "1" and same_seed:
        # daemon: a server a test leaves running is stopped when the test process exits.
        process = _fork_context().Process(target=_run_forked, args=(module, env, str(ROOT), str(log_path)), daemon=True)
        process.start()
        return ForkedProcess(process)
    log = log_path.open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=log)
    finally:
        log.close()


@dataclass
class ServerProcess:
    port: int
    env: dict[str, str]
    log_path: Path
    module: str = "kato_server"  # what ``python -m`` runs
    proc: Process | None = None
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServerProcess:
        self.proc = launch(self.module, {**self.env, **extra_env}, self.log_path)
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.02)
        raise RuntimeError(f"server not serving after {timeout}s; see {self.log_path}")

    def health(self) -> int | None:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return int(reply.status)
            except grpc.RpcError:
                return None

    def stub(self) -> svc_grpc.KatoServiceStub:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return svc_grpc.KatoServiceStub(channel)

    async def wait_serving_async(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.wait_serving, timeout)

    def pids(self) -> list[int]:
        """The server process and its workers."""
        if self.proc is None:
            return []
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid] + ([int(p) for p in children.read_text().split()] if children.exists() else [])

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self, sig: int | None = None) -> int | None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_env(
    redis: devstack.LocalServer,
    mongo: devstack.LocalServer,
    port: int,
    database: str,
    redis_db: int = 0,
    *,
    quick: bool = True,
) -> dict[str, str]:
    """The environment of a server on these stores. ``quick``: the tests' short health
    interval and store timeouts (outages are noticed within half a second; at 0.2 s an idle
    server and its stores spent twice the CPU, and the suite keeps about ten alive); off, the
    defaults (benchmarks load large knowledge bases that take longer than a test's store
    timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATO_")}
    # This checkout's code, whichever checkout the virtualenv was installed from (worktrees).
    paths = [str(ROOT), str(ROOT / "server"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        KATO_PORT=str(port),
        KATO_REDIS_URL=devstack.redis_url(redis).rsplit("/", 1)[0] + f"/{redis_db}",
        KATO_MONGODB_URI=devstack.mongodb_uri(mongo),
        KATO_MONGODB_DATABASE=database,
        KATO_LOG_LEVEL="WARNING",
    )
    if quick:
        env.update(KATO_HEALTH_INTERVAL_SECONDS="0.5", KATO_STORE_TIMEOUT_SECONDS="2", KATO_GRACE_SECONDS="5")
    return env


def new_server(
    redis: devstack.LocalServer,
    mongo: devstack.LocalServer,
    log_dir: Path,
    database: str = "kato",
    redis_db: int = 0,
    log_level: str = "WARNING",
    quick: bool = True,
    module: str = "kato_server",
) -> ServerProcess:
    """A server process on a free port. Its own ``redis_db`` keeps other servers' outbox
    relays away from its sessions (a test that must see what one server does alone)."""
    port = devstack.free_port()
    env = server_env(redis, mongo, port, database, redis_db, quick=quick) | {"KATO_LOG_LEVEL": log_level}
    return ServerProcess(port, env, log_dir / f"server-{port}.log", module)
