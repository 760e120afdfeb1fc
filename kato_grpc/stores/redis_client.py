"""The Redis client for a URL: a single server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://host:port`` or ``rediss+cluster://…``, any node of it; the
cluster client discovers the rest, follows MOVED / ASK and re-learns the slots after a
failover). The session store is the same for both: every script touches one slot (a
session's keys share its hash tag; see ``redis_sessions.py``).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError


class _Cluster(RedisCluster):
    """redis-py's cluster client can trip over a connection it is replacing while the cluster
    fails over (AttributeError on a closed writer: redis/redis-py#3835). For its callers that
    is a store not available for the moment — retryable, like a timeout (the command may or may
    not have run) — not a bug of theirs."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise _unavailable(exc) from exc


async def execute(pipe: Any) -> list[Any]:
    """A pipeline's replies, errors among them; the cluster pipeline's failover slip as above."""
    try:
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    except AttributeError as exc:
        raise _unavailable(exc) from exc
    return replies


def _unavailable(exc: AttributeError) -> RedisConnectionError:
    return RedisConnectionError(f"the cluster client failed during a topology change: {exc!r}")


RedisClient = aioredis.Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)


def is_cluster(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """``url`` if this module can connect to what it names, else ValueError (a settings error)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(f"must be a URL with one of the schemes {', '.join(SCHEMES)}")
    return url


def connect(url: str, timeout: float) -> RedisClient:
    """A client for ``url``; every call it makes times out after ``timeout`` seconds."""
    scheme, _, rest = check_url(url).partition("://")
    if scheme in CLUSTER_SCHEMES:
        return _Cluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=timeout, socket_connect_timeout=timeout
        )
    client: aioredis.Redis = aioredis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10
    )
    return client
