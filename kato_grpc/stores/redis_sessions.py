"""The session store: one Redis hash per session, written only through a compare-and-set script.

Keys are hash-tagged by session id (``kato:{<id>}:state`` and ``kato:{<id>}:req:<request_id>``)
so a session's keys live in one Redis Cluster slot and one Lua script can touch them all.
The hash holds ``v`` (version), ``s`` (serialized SessionState) and ``t`` (TTL in ms); every
load slides the TTL. No KEYS or SCAN anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from kato_grpc.v1 import engine_pb2 as pb

# Load + slide the TTL + fetch a remembered response, in one round trip.
_LOAD = """
local r = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if r[1] and r[3] then redis.call('PEXPIRE', KEYS[1], r[3]) end
local q = false
if ARGV[1] == '1' then q = redis.call('GET', KEYS[2]) end
return {r[1], r[2], q}
"""

# Compare-and-set: the version must still be ARGV[1] ('' = the session must not exist yet).
# Returns 1 on success, 0 on a version conflict, -1 when the session is gone.
_CAS = """
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if cur then return 0 end
else
  if not cur then return -1 end
  if cur ~= ARGV[1] then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 't', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '1' then redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[4]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    state: pb.SessionState
    version: int
    response: bytes | None  # the remembered response of this request_id, if any


class CasResult:
    OK = 1
    CONFLICT = 0
    GONE = -1


def state_key(session_id: str) -> str:
    return f"kato:{{{session_id}}}:state"


def request_key(session_id: str, request_id: str) -> str:
    return f"kato:{{{session_id}}}:req:{request_id}"


def create_key(request_id: str) -> str:
    return f"kato:create:{request_id}"


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._load = client.register_script(_LOAD)
        self._cas = client.register_script(_CAS)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def load(self, session_id: str, request_id: str = "") -> Loaded | None:
        version, blob, response = await self._load(
            keys=[state_key(session_id), request_key(session_id, request_id)],
            args=["1" if request_id else "0"],
        )
        if version is None or blob is None:
            return None
        return Loaded(
            state=pb.SessionState.FromString(blob),
            version=int(version),
            response=response if response else None,
        )

    async def compare_and_set(
        self,
        state: pb.SessionState,
        expected_version: int | None,
        ttl_ms: int,
        *,
        request_id: str = "",
        response: bytes = b"",
    ) -> int:
        """Save ``state`` (its ``version`` is the new version) if the stored one is expected."""
        result = await self._cas(
            keys=[state_key(state.session_id), request_key(state.session_id, request_id)],
            args=[
                "" if expected_version is None else str(expected_version),
                str(state.version),
                state.SerializeToString(),
                str(ttl_ms),
                "1" if request_id else "0",
                response,
            ],
        )
        return int(result)

    async def delete(self, session_id: str) -> bool:
        return bool(await self._redis.delete(state_key(session_id)))

    async def remember_creation(self, request_id: str, session_id: str, ttl_ms: int) -> str:
        """Record which session a CreateSession request_id made; returns the winner's id."""
        key = create_key(request_id)
        if await self._redis.set(key, session_id, px=ttl_ms, nx=True):
            return session_id
        existing = await self._redis.get(key)
        return _text(existing) if existing else session_id

    async def created_by(self, request_id: str) -> str | None:
        existing = await self._redis.get(create_key(request_id))
        return _text(existing) if existing else None

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
