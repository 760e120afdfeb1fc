"""The session store's Lua scripts (``redis_sessions.py`` says what the keys hold). Each one
touches keys of one Redis Cluster slot: a session's keys share its hash tag, and the global
keys are touched alone — but for _COMMIT_OR_LOAD on one Redis server (no slots there), which
also reads the KB's published version."""

# Load + slide the TTL + the request's record (if any) + the outbox, in one round trip.
_LOAD = """
local r = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if r[1] and r[3] then redis.call('PEXPIRE', KEYS[1], r[3]) end
local q = false
if ARGV[1] ~= '' then q = redis.call('HGET', KEYS[1], 'q:' .. ARGV[1]) end
local o = redis.call('HMGET', KEYS[2], 'v', 'w')
return {r[1], r[2], q, o[1], o[2]}
"""

# A commit whose preconditions held (the scripts below check them first): saves the state,
# replaces the outbox (ARGV[5]: 'set' with ARGV[6], or 'del': the caller applied the one it
# loaded) and records the request (ARGV[7] id, ARGV[8] record), evicting the oldest records
# beyond ARGV[9] records or ARGV[10] bytes. Returns 1.
_COMMIT = """
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

# Compare-and-set: the version must still be ARGV[1] ('' = the session must not exist yet),
# then _COMMIT. Returns 1 on success, 0 on a version conflict, -1 when the session is gone.
_CAS = (
    """
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if cur then return 0 end
else
  if not cur then return -1 end
  if cur ~= ARGV[1] then return 0 end
end
"""
    + _COMMIT
)

# Commit or load (``SessionStore.commit_or_load``): _COMMIT only if the session is what the
# caller's cached copy says — it exists, its version is ARGV[1], no outbox is pending, no
# record for the request id ARGV[7] and, with KEYS[3] (the KB's published version: another
# slot, so only on one server, never on a cluster), that version is at most ARGV[11]. Else
# nothing is written and the reply is what _LOAD returns, plus the KB version, with the TTL
# slid as _LOAD slides it. Returns 1, -1 when the session is gone, or that reply.
_COMMIT_OR_LOAD = (
    """
local r = redis.call('HMGET', KEYS[1], 'v', 's', 't')
if not r[1] or not r[2] then return -1 end
local q = false
if ARGV[7] ~= '' then q = redis.call('HGET', KEYS[1], 'q:' .. ARGV[7]) end
local o = redis.call('HMGET', KEYS[2], 'v', 'w')
local kb = false
if #KEYS > 2 then kb = redis.call('GET', KEYS[3]) end
if r[1] ~= ARGV[1] or q or o[2] or (kb and tonumber(kb) > tonumber(ARGV[11])) then
  if r[3] then redis.call('PEXPIRE', KEYS[1], r[3]) end
  return {r[1], r[2], q, o[1], o[2], kb}
end
"""
    + _COMMIT
)

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
