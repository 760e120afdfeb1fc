"""The Redis client for a URL: a single server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://host:port`` or ``rediss+cluster://…``, any node of it; the
cluster client discovers the rest, follows MOVED / ASK and re-learns the slots after a
failover). The session store is the same for both: every script touches one slot (a
session's keys share its hash tag; see ``redis_sessions.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kato_grpc.errors import StoreError, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")

# What a retry can get past: no connection (refused, cut, not authenticated yet — redis-py's
# ConnectionError covers a server still loading its data too), no answer in time, and a
# cluster failing over (slots without a master for a moment, a replica just promoted, a
# master demoted to a read-only replica).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ReadOnlyError,
    ConnectionError,
    TimeoutError,
)


def driver_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``method`` raising the project's exceptions instead of redis-py's (architecture.md §4):
    StoreUnavailable when a retry may succeed, StoreError when the store refused the command
    for good (a script error, a full store, a key of the wrong type). The driver's exception
    stays as the cause, for the log. A cancellation passes as it is."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable("a backing store is unavailable; retry") from exc
        except (RedisError, RedisClusterException) as exc:
            raise StoreError(f"the session store refused a command ({type(exc).__name__})") from exc

    return call


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
