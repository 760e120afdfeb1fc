"""``python -m server``: serve kato.v1.KatoService.

With KATO_REDIS_URL and KATO_MONGODB_URI set it uses those stores; otherwise it starts local
Redis- and MongoDB-compatible servers with data under KATO_DATA_DIR (default ./.data) and
stops them on exit (Ctrl-C). KATO_WORKERS=N forks N serving processes on one port
(SO_REUSEPORT) before any gRPC object exists; they stay coherent through the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from kato_grpc import devstack, logs
from kato_grpc.settings import Settings
from server.app import serve


def _serve(settings: Settings, redis_url: str, mongodb_uri: str) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, redis_url, mongodb_uri))


def _supervise(settings: Settings, redis_url: str, mongodb_uri: str) -> int:
    """Run ``settings.workers`` serving processes; forward SIGTERM/SIGINT; wait for all."""
    if settings.workers == 1:
        _serve(settings, redis_url, mongodb_uri)
        return 0
    children: list[int] = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _serve(settings, redis_url, mongodb_uri)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for child in children:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:  # pragma: no cover - waitpid retries on EINTR since 3.5
                continue
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst


def main() -> int:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    if settings.redis_url and settings.mongodb_uri:
        return _supervise(settings, settings.redis_url, settings.mongodb_uri)
    with devstack.local_stores(settings.data_dir) as (redis, mongo):
        print(
            f"local stores: redis {devstack.redis_url(redis)}, mongodb {devstack.mongodb_uri(mongo)} "
            f"(data in {settings.data_dir})",
            file=sys.stderr,
        )
        return _supervise(settings, devstack.redis_url(redis), devstack.mongodb_uri(mongo))


if __name__ == "__main__":
    sys.exit(main())
