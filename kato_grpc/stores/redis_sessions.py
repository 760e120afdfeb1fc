"""The session store: one Redis hash per session, written only through a compare-and-set script.

Keys (hash-tagged by session id, so a session's keys share one Redis Cluster slot):

- ``kato:{<id>}:state`` — hash: ``v`` (version), ``s`` (serialized SessionState without its
  pending writes), ``t`` (TTL in ms), and the session's request records: ``q:<request_id>``
  (a serialized RequestRecord), ``o:<n>`` (the n-th recorded request id, for eviction),
  ``qh``/``qt`` (first/last n) and ``qb`` (bytes of records). One key, so the records live
  exactly as long as the session: every load slides one TTL, and a delete removes all.
- ``kato:{<id>}:outbox`` — hash: ``v`` (the session version that wrote it), ``w`` (a serialized
  Outbox). **No TTL**: learns committed to a session reach the knowledge base even when the
  session is deleted or expires first. The relay (``server/relay.py``) applies what a crashed
  or cut-off call left here.

Global keys: ``kato:outbox:due`` (sorted set: session ids whose outbox may be pending, scored
by Redis time in ms when marked), ``kato:kb:{<kb>}:version`` and ``kato:create:{<node>}:<hash>`` /
``kato:kbreq:{<node>}:<hash>`` (request records of calls that have no session). Request ids
and principals only ever appear hashed or as hash fields, never inside a key's structure, so
no crafted id can name another key. No KEYS or SCAN anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.exceptions import NoScriptError

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.protocols import Loaded
from kato_grpc.stores.redis_client import RedisClient

# Load + slide the TTL + the request's record (if any) + the outbox, in one round trip.
_LOAD = """
local r = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if r[1] and r[3] then redis.call('PEXPIRE', KEYS[1], r[3]) end
local q = false
if ARGV[1] ~= '' then q = redis.call('HGET', KEYS[1], 'q:' .. ARGV[1]) end
local o = redis.call('HMGET', KEYS[2], 'v', 'w')
return {r[1], r[2], q, o[1], o[2]}
"""

# Compare-and-set: the version must still be ARGV[1] ('' = the session must not exist yet).
# Saves the state, replaces the outbox (ARGV[5]: 'set' with ARGV[6], or 'del': the caller
# applied the one it loaded) and records the request (ARGV[7] id, ARGV[8] record), evicting
# the oldest records beyond ARGV[9] records or ARGV[10] bytes.
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
if ARGV[5] == 'set' then
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'w', ARGV[6])
elseif ARGV[5] == 'del' then
  redis.call('DEL', KEYS[2])
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'q:' .. ARGV[7], ARGV[8])
  local tail = redis.call('HINCRBY', KEYS[1], 'qt', 1)
  redis.call('HSET', KEYS[1], 'o:' .. tail, ARGV[7])
  local bytes = redis.call('HINCRBY', KEYS[1], 'qb', string.len(ARGV[8]))
  local head = tonumber(redis.call('HGET', KEYS[1], 'qh') or '0')
  while tail - head > tonumber(ARGV[9]) or (bytes > tonumber(ARGV[10]) and tail - head > 1) do
    head = head + 1
    local old = redis.call('HGET', KEYS[1], 'o:' .. head)
    redis.call('HDEL', KEYS[1], 'o:' .. head)
    if old then
      bytes = bytes - redis.call('HSTRLEN', KEYS[1], 'q:' .. old)
      redis.call('HDEL', KEYS[1], 'q:' .. old)
    end
  end
  redis.call('HSET', KEYS[1], 'qh', head, 'qb', bytes)
end
return 1
"""

# Remove an outbox once applied, unless a later commit replaced it meanwhile.
_DROP_OUTBOX = """
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# Mark a session as possibly holding an outbox, scored by Redis's own clock (ms), so every
# server process and the relay agree on ages.
_MARK = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
"""

# The marks older than ARGV[1] ms (by Redis's clock), at most ARGV[2] of them.
_DUE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'WITHSCORES', 'LIMIT', 0, ARGV[2])
"""

# After the relay applied an outbox seen at version ARGV[1] (or found none: ''): drop it if
# unchanged; returns whether an outbox is left. Then (another slot, so another script) the
# mark goes only if it still has the score the relay saw: a commit marks before it writes
# an outbox, with a newer score, so a session marked again meanwhile keeps its mark.
_RELEASE = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'v') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('EXISTS', KEYS[1])
"""
_UNMARK = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
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

DUE_KEY = "kato:outbox:due"


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """How many request records a session keeps (the oldest go first)."""

    count: int = 1000
    bytes: int = 8 * 1024 * 1024


def state_key(session_id: str) -> str:
    return f"kato:{{{session_id}}}:state"


def outbox_key(session_id: str) -> str:
    return f"kato:{{{session_id}}}:outbox"


def kb_version_key(kb_id: str) -> str:
    return f"kato:kb:{{{kb_id}}}:version"


def scoped_key(kind: str, node_id: str, principal: str, request_id: str) -> str:
    """The key of a request record that belongs to a node, not a session (CreateSession, a
    node's ClearKnowledgeBase): scoped by node and caller, the id itself hashed."""
    digest = hashlib.sha256(f"{principal}\0{request_id}".encode()).hexdigest()
    return f"kato:{kind}:{{{node_id}}}:{digest}"


class RedisSessionStore:
    """On one Redis server or a Redis Cluster (``redis_client.py``): every script touches
    keys of one slot."""

    def __init__(self, client: RedisClient, records: RecordLimits | None = None) -> None:
        self._redis = client
        self._records = records or RecordLimits()
        self._load = client.register_script(_LOAD)
        self._cas = client.register_script(_CAS)
        self._drop = client.register_script(_DROP_OUTBOX)
        self._mark = client.register_script(_MARK)
        self._due = client.register_script(_DUE)
        self._release = client.register_script(_RELEASE)
        self._unmark = client.register_script(_UNMARK)
        self._publish = client.register_script(_PUBLISH_KB_VERSION)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        """Load a session (sliding its TTL). With ``kb_id`` (the session's node, when the caller
        already knows it) the KB's published version comes back in the same round trip."""
        keys = [state_key(session_id), outbox_key(session_id)]
        args = [request_id]
        kb_version = None
        if kb_id is None:
            loaded = await self._load(keys=keys, args=args)
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
            kb_version = int(published) if published is not None else None
        version, blob, record, outbox_version, outbox = loaded
        if version is None or blob is None:
            return None
        return Loaded(
            state=storage.SessionState.FromString(blob),
            version=int(version),
            record=storage.RequestRecord.FromString(record) if record else None,
            outbox=storage.Outbox.FromString(outbox) if outbox else None,
            outbox_version=int(outbox_version) if outbox_version else 0,
            kb_version=kb_version,
        )

    async def compare_and_set(
        self,
        state: storage.SessionState,
        expected_version: int | None,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        clear_outbox: bool = False,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
    ) -> int:
        """Save ``state`` (its ``version`` is the new version) if the stored one is expected.

        ``outbox`` replaces the session's outbox (its writes must already be out of ``state``);
        ``clear_outbox`` removes the one that was loaded (the caller has applied it).
        """
        assert not state.pending_writes, "pending writes travel as the outbox, never in the state"
        mode = "keep"
        if outbox is not None and outbox.writes:
            mode = "set"
            await self._mark(keys=[DUE_KEY], args=[state.session_id])  # before the commit: never unmarked
        elif clear_outbox:
            mode = "del"
        result = await self._cas(
            keys=[state_key(state.session_id), outbox_key(state.session_id)],
            args=[
                "" if expected_version is None else str(expected_version),
                str(state.version),
                state.SerializeToString(),
                str(ttl_ms),
                mode,
                outbox.SerializeToString() if mode == "set" and outbox is not None else b"",
                request_id,
                record.SerializeToString() if record is not None and request_id else b"",
                str(self._records.count),
                str(self._records.bytes),
            ],
        )
        return int(result)

    async def drop_outbox(self, session_id: str, version: int) -> bool:
        """Remove the outbox written at ``version`` (applied); a newer one stays."""
        return bool(await self._drop(keys=[outbox_key(session_id)], args=[str(version)]))

    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        """Sessions marked as holding an outbox more than ``older_than_ms`` ago."""
        flat = await self._due(keys=[DUE_KEY], args=[str(older_than_ms), str(limit)])
        return [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        version, blob = await self._redis.hmget(outbox_key(session_id), ["v", "w"])
        if version is None or blob is None:
            return None
        return storage.Outbox.FromString(_bytes(blob)), int(version)

    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        left = await self._release(keys=[outbox_key(session_id)], args=["" if version is None else str(version)])
        if not int(left):
            await self._unmark(keys=[DUE_KEY], args=[session_id, repr(score)])

    async def kb_version(self, kb_id: str) -> int | None:
        """The last published version of a KB; None when Redis does not know it."""
        value = await self._redis.get(kb_version_key(kb_id))
        return int(value) if value is not None else None

    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        await self._publish(keys=[kb_version_key(kb_id)], args=[str(version)])

    async def delete(self, session_id: str) -> bool:
        """Delete a session and its request records. Its outbox stays until applied."""
        return bool(await self._redis.delete(state_key(session_id)))

    async def remember(self, key: str, record: storage.RequestRecord, ttl_ms: int) -> storage.RequestRecord:
        """Record a session-less request unless one is there; returns the record that won."""
        if await self._redis.set(key, record.SerializeToString(), px=ttl_ms, nx=True):
            return record
        existing = await self._redis.get(key)
        return storage.RequestRecord.FromString(_bytes(existing)) if existing else record

    async def recorded(self, key: str) -> storage.RequestRecord | None:
        existing = await self._redis.get(key)
        return storage.RequestRecord.FromString(_bytes(existing)) if existing else None

    async def forget(self, key: str) -> None:
        await self._redis.delete(key)

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
