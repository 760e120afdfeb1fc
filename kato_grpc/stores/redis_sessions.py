"""The session store: one Redis hash per session, written only through a compare-and-set script.

Keys are hash-tagged by session id (``kato:{<id>}:state`` and ``kato:{<id>}:req:<request_id>``)
so a session's keys live in one Redis Cluster slot and one Lua script can touch them all.
The hash holds ``v`` (version), ``s`` (serialized SessionState) and ``t`` (TTL in ms); every
load slides the TTL. No KEYS or SCAN anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

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


# KB versions are published here after every MongoDB commit, so a call learns whether its
# cached KB is current from Redis (cheap) instead of MongoDB. Only ever moves forward.
_PUBLISH_KB_VERSION = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]) return new end
return cur
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    state: pb.SessionState
    version: int
    response: bytes | None  # the remembered response of this request_id, if any
    kb_version: int | None = None  # the node's published KB version, when asked for


class CasResult:
    OK = 1
    CONFLICT = 0
    GONE = -1


def state_key(session_id: str) -> str:
    return f"kato:{{{session_id}}}:state"


def request_key(session_id: str, request_id: str) -> str:
    return f"kato:{{{session_id}}}:req:{request_id}"


def kb_version_key(kb_id: str) -> str:
    return f"kato:kb:{{{kb_id}}}:version"


def create_key(request_id: str) -> str:
    return f"kato:create:{request_id}"


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._load = client.register_script(_LOAD)
        self._cas = client.register_script(_CAS)
        self._publish = client.register_script(_PUBLISH_KB_VERSION)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        """Load a session (sliding its TTL). With ``kb_id`` (the session's node, when the caller
        already knows it) the KB's published version comes back in the same round trip."""
        keys = [state_key(session_id), request_key(session_id, request_id)]
        args = ["1" if request_id else "0"]
        kb_version = None
        if kb_id is None:
            version, blob, response = await self._load(keys=keys, args=args)
        else:
            # Two keys in different cluster slots: a pipeline, not one script. Raw EVALSHA,
            # because a pipeline holding Script objects re-checks SCRIPT EXISTS on every call.
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self._load.sha, len(keys), *keys, *args)
            pipe.get(kb_version_key(kb_id))
            loaded, published = await pipe.execute(raise_on_error=False)
            if isinstance(loaded, NoScriptError):  # first use on this server: load the script
                loaded = await self._load(keys=keys, args=args)
            elif isinstance(loaded, Exception):
                raise loaded
            if isinstance(published, Exception):
                raise published
            version, blob, response = loaded
            kb_version = int(published) if published is not None else None
        if version is None or blob is None:
            return None
        return Loaded(
            state=pb.SessionState.FromString(blob),
            version=int(version),
            response=response if response else None,
            kb_version=kb_version,
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

    async def kb_version(self, kb_id: str) -> int | None:
        """The last published version of a KB; None when Redis does not know it."""
        value = await self._redis.get(kb_version_key(kb_id))
        return int(value) if value is not None else None

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        await self._publish(keys=[kb_version_key(kb_id)], args=[str(version)])

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
