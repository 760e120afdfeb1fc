"""``python -m kato_server`` processes on local stores, for the integration tests and the benchmarks.

One harness for both: start a server on a free port (its own Redis database and MongoDB
database when asked), wait until it is SERVING, give out stubs, read its memory, stop it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack

ROOT = Path(__file__).resolve().parents[2]  # the checkout: server/kato_server/devserver.py


@dataclass
class ServerProcess:
    port: int
    env: dict[str, str]
    log_path: Path
    module: str = "kato_server"  # what ``python -m`` runs
    proc: subprocess.Popen[bytes] | None = None
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServerProcess:
        env = {**self.env, **extra_env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=env, stdout=log, stderr=log)
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
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
    interval and store timeouts (outages are noticed fast); off, the defaults (benchmarks load
    large knowledge bases that take longer than a test's store timeout)."""
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
        env.update(KATO_HEALTH_INTERVAL_SECONDS="0.2", KATO_STORE_TIMEOUT_SECONDS="2", KATO_GRACE_SECONDS="5")
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
