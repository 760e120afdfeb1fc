"""The session store: one Redis hash per session, written only through the compare-and-set
scripts (``compare_and_set``, and ``commit_or_load`` for a commit from a cached copy).

Keys (hash-tagged by session id, so a session's keys share one Redis Cluster slot):

- ``{ns}:{<id>}:state`` — hash: ``v`` (version), ``s`` (serialized SessionState without its
  pending writes), ``t`` (TTL in ms), and the session's request records: ``q:<request_id>``
  (a serialized RequestRecord), ``o:<n>`` (the n-th recorded request id, for eviction),
  ``qh``/``qt`` (first/last n) and ``qb`` (bytes of records). One key, so the records live
  exactly as long as the session: every load slides one TTL, and a delete removes all.
- ``{ns}:{<id>}:outbox`` — hash: ``v`` (the session version that wrote it), ``w`` (a serialized
  Outbox). **No TTL**: learns committed to a session reach the knowledge base even when the
  session is deleted or expires first. The relay (``server/kato_server/relay.py``) applies what a crashed
  or cut-off call left here.

Global keys: ``{ns}:outbox:due`` (sorted set: session ids whose outbox may be pending, scored
by Redis time in ms when marked), ``{ns}:kb:{<kb>}:version``, ``{ns}:create:{<node>}:<hash>`` /
``{ns}:kbreq:{<node>}:<hash>`` (request records of calls that have no session) and
``{ns}:deployment`` (which MongoDB database the namespace serves), ``{ns}:txn:owners`` and
``{ns}:txn:lease:<process>`` (``transaction_owners.py``). Request ids
and principals only ever appear hashed or as hash fields, never inside a key's structure, so
no crafted id can name another key. No KEYS or SCAN anywhere.

Every key starts with the deployment's namespace ``{ns}`` (``Keys``, ``keys.py``;
``KATO_REDIS_NAMESPACE``, by default the MongoDB database's name): deployments that share one
Redis never see each other's sessions, outboxes or KB versions — above all, a relay only ever
applies outboxes of its own deployment, into its own database (docs/operations.md, "Sharing
one Redis").

The store implements every session-side Protocol (``protocols.SessionBackend``), and no
redis-py exception leaves it: each public method raises StoreUnavailable or StoreError
instead (``redis_client.driver_errors``), so nothing above the stores imports the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from kato_grpc.errors import StoreUnavailable, Unavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.keys import Keys
from kato_grpc.stores.protocols import CasResult, Loaded, RecordKey, RecordLimits
from kato_grpc.stores.redis_client import RedisClient, driver_errors, execute
from kato_grpc.stores.redis_scripts import (
    _CAS,
    _COMMIT_OR_LOAD,
    _DROP_OUTBOX,
    _DUE,
    _LOAD,
    _MARK,
    _PUBLISH_KB_VERSION,
    _RELEASE,
    _UNMARK,
)


@dataclass(frozen=True, slots=True)
class Replication:
    """``replicas`` > 0: a commit is acknowledged only once that many replicas of its Redis
    node have it (WAIT, at most ``timeout_ms``): a failover then loses no acknowledged call."""

    replicas: int = 0
    timeout_ms: int = 100


class RedisSessionStore:
    """On one Redis server or a Redis Cluster (``redis_client.py``): every script touches
    keys of one slot."""

    def __init__(
        self,
        client: RedisClient,
        records: RecordLimits | None = None,
        replication: Replication | None = None,
        keys: Keys | None = None,
    ) -> None:
        self._redis = client
        self.keys = keys or Keys()
        self._records = records or RecordLimits()
        self._replication = replication or Replication()
        self._load = client.register_script(_LOAD)
        self._cas = client.register_script(_CAS)
        self._commit_or_load = client.register_script(_COMMIT_OR_LOAD)
        # One server has no slots: its commit-or-load script reads the KB's published version
        # too. On a cluster that key lives in another slot (redis_scripts._COMMIT_OR_LOAD).
        self.checks_kb_version = not isinstance(client, RedisCluster)
        self._drop = client.register_script(_DROP_OUTBOX)
        self._mark = client.register_script(_MARK)
        self._due = client.register_script(_DUE)
        self._release = client.register_script(_RELEASE)
        self._unmark = client.register_script(_UNMARK)
        self._publish = client.register_script(_PUBLISH_KB_VERSION)

    @driver_errors
    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    @driver_errors
    async def load(self, session_id: str, request_id: str = "", kb_id: str | None = None) -> Loaded | None:
        """Load a session (sliding its TTL). With ``kb_id`` (the session's node, when the caller
        already knows it) the KB's published version comes back in the same round trip."""
        keys = [self.keys.state(session_id), self.keys.outbox(session_id)]
        args = [request_id]
        kb_version = None
        if kb_id is None:
            loaded = await self._load(keys=keys, args=args)
        else:
            # Two keys in different cluster slots: a pipeline, not one script. Raw EVALSHA,
            # because a pipeline holding Script objects re-checks SCRIPT EXISTS on every call.
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self._load.sha, len(keys), *keys, *args)
            pipe.get(self.keys.kb_version(kb_id))
            loaded, published = await execute(pipe)
            if isinstance(loaded, NoScriptError):  # first use on this server: load the script
                loaded = await self._load(keys=keys, args=args)
            elif isinstance(loaded, Exception):
                raise loaded
            if isinstance(published, Exception):
                raise published
            kb_version = int(published) if published is not None else 0
        version, blob, record, outbox_version, outbox = loaded
        if version is None or blob is None:
            return None
        return _loaded(version, blob, record, outbox_version, outbox, kb_version)

    @driver_errors
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
        expected = "" if expected_version is None else str(expected_version)
        args = await self._commit_args(state, expected, ttl_ms, outbox, request_id, record, clear_outbox=clear_outbox)
        return int(await self._commit(self._cas, self._session_keys(state.session_id), args))

    @driver_errors
    async def commit_or_load(
        self,
        state: storage.SessionState,
        expected_version: int,
        ttl_ms: int,
        *,
        outbox: storage.Outbox | None = None,
        request_id: str = "",
        record: storage.RequestRecord | None = None,
        kb_id: str | None = None,
        kb_version: int = 0,
    ) -> Loaded | int:
        """``compare_and_set`` if the session is as the caller cached it (``SessionStore``
        says what that means), else what ``load`` returns: one script, one round trip."""
        if kb_id is not None and not self.checks_kb_version:
            raise ValueError("a Redis Cluster cannot check a KB's version in a session's commit")
        args = await self._commit_args(state, str(expected_version), ttl_ms, outbox, request_id, record)
        keys = self._session_keys(state.session_id)
        if kb_id is not None:
            keys.append(self.keys.kb_version(kb_id))
        reply = await self._commit(self._commit_or_load, keys, [*args, str(kb_version)])
        if not isinstance(reply, list):
            return CasResult.OK if int(reply) == CasResult.OK else CasResult.GONE
        version, blob, record_blob, outbox_version, outbox_blob, published = reply
        kb = (int(published) if published is not None else 0) if kb_id is not None else None
        return _loaded(version, blob, record_blob, outbox_version, outbox_blob, kb)

    def _session_keys(self, session_id: str) -> list[str]:
        return [self.keys.state(session_id), self.keys.outbox(session_id)]

    async def _commit_args(
        self,
        state: storage.SessionState,
        expected: str,
        ttl_ms: int,
        outbox: storage.Outbox | None,
        request_id: str,
        record: storage.RequestRecord | None,
        *,
        clear_outbox: bool = False,
    ) -> list[str | bytes]:
        """The commit scripts' ARGV[1..10] (redis_scripts._COMMIT); marks the session in the
        due queue first when the commit carries an outbox."""
        assert not state.pending_writes, "pending writes travel as the outbox, never in the state"
        mode = "keep"
        if outbox is not None and outbox.writes:
            mode = "set"
            await self._mark(keys=[self.keys.due], args=[state.session_id])  # before the commit: never unmarked
        elif clear_outbox:
            mode = "del"
        return [
            expected,
            str(state.version),
            state.SerializeToString(),
            str(ttl_ms),
            mode,
            outbox.SerializeToString() if mode == "set" and outbox is not None else b"",
            request_id,
            record.SerializeToString() if record is not None and request_id else b"",
            str(self._records.count),
            str(self._records.bytes),
        ]

    async def _commit(self, script: AsyncScript, keys: list[str], args: list[str | bytes]) -> Any:
        """A commit script's reply; with replication, and WAIT on the same connection (WAIT
        counts the writes of its own connection): one pipeline, one round trip."""
        need = self._replication.replicas
        if not need:
            return await script(keys=keys, args=args)
        # On a cluster, WAIT (no key) is sent to the node that owns the session's slot.
        target = (
            {"target_nodes": self._redis.get_node_from_key(keys[0])} if isinstance(self._redis, RedisCluster) else {}
        )
        for _ in range(2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", need, self._replication.timeout_ms, **target)
            result, acked = await execute(pipe)
            if isinstance(result, NoScriptError):  # first use on this node: load, then again
                await self._redis.script_load(script.script)
                continue
            for reply in (result, acked):
                if isinstance(reply, Exception):
                    raise reply
            if result == CasResult.OK and int(acked) < need:  # (a reply that is a load wrote nothing)
                raise Unavailable(
                    f"committed, but {acked} of {need} Redis replicas confirmed it in time: "
                    "retry with the same request_id",
                    reason="NOT_REPLICATED",
                )
            return result
        raise StoreUnavailable("the session store lost its scripts twice in a row; retry")

    @driver_errors
    async def claim_namespace(self, deployment: str) -> str:
        """Record that this namespace serves ``deployment`` (the id its MongoDB database keeps)
        unless one is recorded already; returns the one recorded. The server refuses to start
        when it is another's: two deployments with one namespace would apply each other's
        outboxes (docs/operations.md, "Sharing one Redis")."""
        await self._redis.set(self.keys.deployment, deployment, nx=True)
        recorded = await self._redis.get(self.keys.deployment)
        return deployment if recorded is None else _text(recorded)

    @driver_errors
    async def drop_outbox(self, session_id: str, version: int) -> bool:
        """Remove the outbox written at ``version`` (applied); a newer one stays."""
        return bool(await self._drop(keys=[self.keys.outbox(session_id)], args=[str(version)]))

    @driver_errors
    async def due_outboxes(self, older_than_ms: int, limit: int) -> list[tuple[str, float]]:
        """Sessions marked as holding an outbox more than ``older_than_ms`` ago."""
        flat = await self._due(keys=[self.keys.due], args=[str(older_than_ms), str(limit)])
        return [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    @driver_errors
    async def read_outbox(self, session_id: str) -> tuple[storage.Outbox, int] | None:
        version, blob = await self._redis.hmget(self.keys.outbox(session_id), ["v", "w"])
        if version is None or blob is None:
            return None
        return storage.Outbox.FromString(_bytes(blob)), int(version)

    @driver_errors
    async def release_outbox(self, session_id: str, version: int | None, score: float) -> None:
        left = await self._release(keys=[self.keys.outbox(session_id)], args=["" if version is None else str(version)])
        if not int(left):
            await self._unmark(keys=[self.keys.due], args=[session_id, repr(score)])

    @driver_errors
    async def kb_version(self, kb_id: str) -> int | None:
        """The last published version of a KB; None when Redis does not know it."""
        value = await self._redis.get(self.keys.kb_version(kb_id))
        return int(value) if value is not None else None

    @driver_errors
    async def publish_kb_version(self, kb_id: str, version: int) -> None:
        await self._publish(keys=[self.keys.kb_version(kb_id)], args=[str(version)])

    @driver_errors
    async def delete(self, session_id: str) -> bool:
        """Delete a session and its request records. Its outbox stays until applied."""
        return bool(await self._redis.delete(self.keys.state(session_id)))

    @driver_errors
    async def remember(self, key: RecordKey, record: storage.RequestRecord, ttl_ms: int) -> storage.RequestRecord:
        """Record a session-less request unless one is there; returns the record that won."""
        name = self._record(key)
        if await self._redis.set(name, record.SerializeToString(), px=ttl_ms, nx=True):
            return record
        existing = await self._redis.get(name)
        return storage.RequestRecord.FromString(_bytes(existing)) if existing else record

    @driver_errors
    async def recorded(self, key: RecordKey) -> storage.RequestRecord | None:
        existing = await self._redis.get(self._record(key))
        return storage.RequestRecord.FromString(_bytes(existing)) if existing else None

    @driver_errors
    async def forget(self, key: RecordKey) -> None:
        await self._redis.delete(self._record(key))

    def _record(self, key: RecordKey) -> str:
        return self.keys.scoped(key.kind, key.node_id, key.principal, key.request_id)

    @driver_errors
    async def close(self) -> None:
        await self._redis.aclose()


def _loaded(
    version: bytes,
    blob: bytes,
    record: bytes | None,
    outbox_version: bytes | None,
    outbox: bytes | None,
    kb: int | None,
) -> Loaded:
    """A session as the load script (or a commit-or-load that did not commit) returned it."""
    return Loaded(
        state=storage.SessionState.FromString(blob),
        version=int(version),
        record=storage.RequestRecord.FromString(record) if record else None,
        outbox=storage.Outbox.FromString(outbox) if outbox else None,
        outbox_version=int(outbox_version) if outbox_version else 0,
        kb_version=kb,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
