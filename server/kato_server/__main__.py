"""``kato-server`` / ``python -m kato_server``: serve kato.v1.KatoService.

With KATO_REDIS_URL and KATO_MONGODB_URI set it uses those stores; otherwise it starts local
Redis- and MongoDB-compatible servers with data under KATO_DATA_DIR (default ./.data) and
stops them on exit (Ctrl-C). KATO_WORKERS=N forks N serving processes on one port
(SO_REUSEPORT) before any gRPC object exists; they stay coherent through the stores. A worker
that dies is replaced (and the log says so). The port is claimed for one group of workers:
a second server on it exits with a message instead of serving beside the first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from kato_grpc import logs
from kato_grpc.settings import Settings
from kato_server import devstack, tracing
from kato_server.app import StartupRefused, serve

log = structlog.get_logger("kato.supervisor")
# A worker that dies sooner than this after its start counts as failing to start; after
# this many such deaths in a row the server gives up instead of forking forever.
QUICK_EXIT_SECONDS = 5.0
MAX_QUICK_EXITS = 5

USAGE = """Serve kato.v1.KatoService (gRPC) on KATO_HOST:KATO_PORT (default 127.0.0.1:50051).

Configuration comes from KATO_* environment variables (see the README's Configuration
section): KATO_REDIS_URL and KATO_MONGODB_URI name the stores (unset: local ones are started,
data in KATO_DATA_DIR), KATO_WORKERS the number of serving processes, KATO_PORT, KATO_HOST,
KATO_AUTH_TOKENS, KATO_TLS_CERT_FILE / KATO_TLS_KEY_FILE, the request limits and more."""


class PortInUse(Exception):
    pass


def claim_port(host: str, port: int) -> socket.socket | None:
    """Hold ``host:port`` for this server's workers (they bind with SO_REUSEPORT beside it).

    A probe bind first: it fails if anything — another kato-grpc group included — listens or
    is bound there. It sets SO_REUSEADDR, so the connections a killed server left in TIME_WAIT
    (or FIN-WAIT) do not count: a restarted server serves at once instead of crash-looping for
    a minute, and only a live socket refuses it. Then a bound, never listening SO_REUSEPORT
    socket (without SO_REUSEADDR, so the next group's probe collides with it) keeps the port
    claimed while letting this group's workers join. Port 0 (a free port per worker) claims
    nothing.
    """
    if port == 0:
        return None
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise PortInUse(f"port {port} on {host} is in use (another kato-grpc server?): {exc.strerror}") from exc
    guard = socket.socket(family, kind, proto)
    guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    guard.bind(address)
    return guard


def _serve(settings: Settings, redis_url: str, mongodb_uri: str, worker: int = 0) -> int:
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, redis_url, mongodb_uri, worker=worker))
    except StartupRefused as exc:
        log.error("refusing to start", reason=str(exc))
        print(f"kato-server: {exc}", file=sys.stderr)
        return 2
    return 0


def _fork_worker(settings: Settings, redis_url: str, mongodb_uri: str, guard: socket.socket | None, worker: int) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if guard is not None:
            guard.close()
        try:
            code = _serve(settings, redis_url, mongodb_uri, worker)
        except BaseException:
            log.exception("worker failed")
            code = 1
        os._exit(code)
    return pid


def _supervise(settings: Settings, redis_url: str, mongodb_uri: str, guard: socket.socket | None) -> int:
    """Run ``settings.workers`` serving processes, replacing any that dies; forward
    SIGTERM/SIGINT and wait for all."""
    if settings.workers == 1:
        return _serve(settings, redis_url, mongodb_uri)
    # pid -> (started, worker index): a replacement takes the dead worker's index (and so its
    # metrics port, KATO_METRICS_PORT + index).
    children = {
        _fork_worker(settings, redis_url, mongodb_uri, guard, i): (time.monotonic(), i) for i in range(settings.workers)
    }
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    quick_exits = 0
    while children:
        # Only our own workers are waited for (the local stores are children too).
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            started, index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                worst = max(worst, code)
                continue
            quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT_SECONDS else 0
            if quick_exits >= MAX_QUICK_EXITS:
                log.error("workers keep failing at start; stopping", exit_code=code)
                forward(signal.SIGTERM, None)
                worst = 1
                continue
            new = _fork_worker(settings, redis_url, mongodb_uri, guard, index)
            children[new] = (time.monotonic(), index)
            log.warning("worker died; started a replacement", pid=pid, exit_code=code, replacement=new)
        time.sleep(0.1)
    return worst


def _environment_problem(settings: Settings) -> str:
    """What stops the server from starting besides a bad KATO_* value, in one line, or ""."""
    try:
        tracing.exporter_names(os.environ)
    except tracing.TracingError as exc:
        return f"invalid setting {exc}"
    if bool(settings.redis_url) != bool(settings.mongodb_uri):
        return "set both KATO_REDIS_URL and KATO_MONGODB_URI (or neither, to start local development stores)"
    absent = [] if settings.redis_url else devstack.missing()
    if absent:
        return (
            "no stores: set KATO_REDIS_URL and KATO_MONGODB_URI; without them the server starts local "
            f"development stores, which need the dev extra ({', '.join(absent)} not installed: "
            "pip install 'kato-grpc[dev]')"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="kato-server", description=USAGE).parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "KATO_" + "_".join(str(p) for p in error["loc"]).upper() + ": " if error["loc"] else ""
            print(f"kato-server: invalid setting {name}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # a value that is not even parseable (e.g. bad JSON)
        print(f"kato-server: invalid setting: {exc}", file=sys.stderr)
        return 2
    problem = _environment_problem(settings)
    if problem:
        print(f"kato-server: {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        guard = claim_port(settings.host, settings.port)
    except PortInUse as exc:
        print(f"kato-server: {exc}", file=sys.stderr)
        return 1
    if settings.redis_url and settings.mongodb_uri:
        return _supervise(settings, settings.redis_url, settings.mongodb_uri, guard)
    with devstack.local_stores(settings.data_dir) as (redis, mongo):
        print(
            f"local stores: redis {devstack.redis_url(redis)}, mongodb {devstack.mongodb_uri(mongo)} "
            f"(data in {settings.data_dir})",
            file=sys.stderr,
        )
        return _supervise(settings, devstack.redis_url(redis), devstack.mongodb_uri(mongo), guard)


if __name__ == "__main__":
    sys.exit(main())
