"""``python -m server``: serve kato.v1.KatoService.

With KATO_REDIS_URL and KATO_MONGODB_URI set it uses those stores; otherwise it starts local
Redis- and MongoDB-compatible servers with data under KATO_DATA_DIR (default ./.data) and
stops them on exit (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from kato_grpc import devstack, logs
from kato_grpc.settings import Settings
from server.app import serve


def main() -> int:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    if settings.redis_url and settings.mongodb_uri:
        asyncio.run(serve(settings, settings.redis_url, settings.mongodb_uri))
        return 0
    with devstack.local_stores(settings.data_dir) as (redis, mongo):
        print(
            f"local stores: redis {devstack.redis_url(redis)}, mongodb {devstack.mongodb_uri(mongo)} "
            f"(data in {settings.data_dir})",
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, devstack.redis_url(redis), devstack.mongodb_uri(mongo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
