"""The session stores' contract (architecture.md §4): every test runs against the in-memory
twin (``memory_sessions.py``), a real Valkey and a real Valkey Cluster (``redis_sessions.py``),
through the Protocols of ``stores/protocols.py`` (``SessionBackend``) — so what the server's
modules rely on holds for both, and the fast in-process tests that use the twin test what
production does. The transaction leases (``TransactionLeases``: ``transaction_owners.py`` and
its twin ``InMemoryTransactionLeases``) are held to one contract here too.

Time: the twin's clock is advanced; on Redis the test waits on Redis's own clock (TIME) or
polls for a key's disappearance, each with a generous deadline — never a fixed sleep. Every
test works in a namespace of its own on a server shared by the whole session.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.exceptions

from kato_grpc.errors import StoreError, StoreUnavailable
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores import redis_client
from kato_grpc.stores.keys import Keys
from kato_grpc.stores.memory_sessions import InMemoryKeyspace, InMemorySessionStore, InMemoryTransactionLeases
from kato_grpc.stores.protocols import (
    LSID_BYTES,
    CasResult,
    Loaded,
    RecordKey,
    RecordLimits,
    SessionBackend,
    TransactionLeases,
)
from kato_grpc.stores.redis_sessions import RedisSessionStore
from kato_grpc.stores.transaction_owners import TransactionOwners
from kato_grpc.v1 import engine_pb2 as pb
from kato_server import devcluster, devstack

DEADLINE_SECONDS = 20.0  # for what Redis does by itself (expiry): generous, the machine is shared
POLL_SECONDS = 0.002
STORE_TIMEOUT = 5.0

# --- The servers: one of each kind per test session ----------------------------------------


@dataclass(frozen=True)
class Server:
    kind: str
    url: str = ""  # "" for the twin: each test makes its own keyspace


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = devstack.start_redis(tmp_path_factory.mktemp("contract-valkey"), appendonly=False)
    try:
        yield Server("valkey", devstack.redis_url(server))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Three masters, so a session's keys, the due queue and a KB's version live on different
    # nodes; no replicas: failover is not this suite's subject (test_cluster_failover.py).
    with devcluster.local_cluster(tmp_path_factory.mktemp("contract-cluster"), masters=3, replicas=0) as cluster:
        yield Server("cluster", cluster.url)


@pytest.fixture(params=["twin", "valkey", "cluster"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each kind's server starts only when a test of that kind runs (``-k twin`` starts none)."""
    kind: str = request.param
    if kind == "twin":
        return Server("twin")
    found: Server = request.getfixturevalue("valkey" if kind == "valkey" else "valkey_cluster")
    return found


# --- Per test: stores on the server, and its clock -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stores:
    """The stores of one test, in its event loop. ``open`` gives a store under the test's
    namespace (or another one) on the one server; the rest reads the server's clock and keys
    the way an operator's client would, outside the Protocols."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.namespace = "ct-" + uuid.uuid4().hex[:12]
        self.keys = Keys(self.namespace)
        self._opened: list[SessionBackend] = []
        self._clients: list[redis_client.RedisClient] = []  # the leases' (they have no close)
        self._clock = Clock()
        self._space = InMemoryKeyspace(self._clock)
        self._raw = redis_client.connect(server.url, STORE_TIMEOUT) if server.url else None

    def open(self, namespace: str | None = None, records: RecordLimits | None = None) -> SessionBackend:
        keys = Keys(namespace or self.namespace)
        store: SessionBackend
        if self._raw is None:
            store = InMemorySessionStore(records, keyspace=self._space, keys=keys)
        else:
            store = RedisSessionStore(redis_client.connect(self.server.url, STORE_TIMEOUT), records, keys=keys)
        self._opened.append(store)
        return store

    def leases(self, process: str, lease_seconds: float, namespace: str | None = None) -> TransactionLeases:
        """The transaction leases of ``process`` under the test's namespace (or another one)."""
        keys = Keys(namespace or self.namespace)
        if self._raw is None:
            return InMemoryTransactionLeases(self._space, keys, lease_seconds, process)
        client = redis_client.connect(self.server.url, STORE_TIMEOUT)
        self._clients.append(client)
        return TransactionOwners(client, keys, lease_seconds, process)

    async def close(self) -> None:
        for store in self._opened:
            await store.close()
        for client in self._clients:
            await client.aclose()
        if self._raw is not None:
            await self._raw.aclose()

    async def now_ms(self) -> float:
        """The server's clock, in ms (Redis: TIME)."""
        if self._raw is None:
            return self._space.now_ms()
        seconds, micros = await self._raw.execute_command("TIME")
        return int(seconds) * 1000 + int(micros) / 1000

    async def elapse(self, ms: int) -> None:
        """Let at least ``ms`` pass on the server's clock."""
        if self._raw is None:
            self._clock.now += ms / 1000
            return
        start = await self.now_ms()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await self.now_ms() - start < ms:
            assert time.monotonic() < deadline, "the server's clock did not move"
            await asyncio.sleep(POLL_SECONDS)

    async def exists(self, key: str) -> bool:
        if self._raw is None:
            return self._space.get(key) is not None
        return bool(await self._raw.exists(key))

    async def expires_at_ms(self, key: str) -> float | None:
        """When ``key`` expires (server clock, ms); None when it has no TTL or is gone."""
        if self._raw is None:
            return self._space.expires_at_ms(key)
        at = int(await self._raw.execute_command("PEXPIRETIME", key))
        return None if at < 0 else float(at)

    async def wait_gone(self, key: str) -> None:
        """Until ``key`` has expired: the twin's clock moves past its expiry; Redis is polled."""
        if self._raw is None:
            at = self._space.expires_at_ms(key)
            assert at is not None, f"{key} has no TTL"
            self._clock.now = at / 1000 + 0.001
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await self.exists(key):
            assert time.monotonic() < deadline, f"{key} did not expire"
            await asyncio.sleep(POLL_SECONDS)

    async def hash_field(self, key: str, field: str) -> bytes | None:
        """A field of the hash at ``key`` (the twin keeps a hash as a dict)."""
        if self._raw is None:
            found = self._space.get(key)
            assert found is None or isinstance(found, dict)
            value = (found or {}).get(field)
            assert value is None or isinstance(value, bytes)
            return value
        got = await self._raw.hget(key, field)
        assert got is None or isinstance(got, bytes)
        return got

    async def write_raw(self, key: str, value: bytes) -> None:
        """A value of the wrong type where the store keeps a hash (a damaged store)."""
        assert self._raw is not None
        await self._raw.set(key, value)


def run(server: Server, body: Callable[[Stores], Awaitable[None]]) -> None:
    async def main() -> None:
        stores = Stores(server)
        try:
            await body(stores)
        finally:
            await stores.close()

    asyncio.run(main())


def sid() -> str:
    return "s-" + uuid.uuid4().hex


def state_of(session_id: str, version: int, symbol: str = "a", node: str = "node-1") -> storage.SessionState:
    return storage.SessionState(
        session_id=session_id, node_id=node, version=version, stm=[pb.Event(symbols=[symbol])], time=version
    )


def outbox_of(session_id: str, *names: str) -> storage.Outbox:
    return storage.Outbox(
        session_id=session_id,
        node_id="node-1",
        writes=[storage.PatternWrite(write_id=f"w-{n}", name=n) for n in names],
    )


def record_of(method: str, response: bytes = b"") -> storage.RequestRecord:
    return storage.RequestRecord(method=method, fingerprint=b"\x01" * 32, response=response)


TTL = 60_000


# --- SessionStore: load and compare-and-set -------------------------------------------------


def test_a_session_is_created_once_and_read_back_as_committed(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.load(session) is None
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        assert await store.compare_and_set(state_of(session, 1, "b"), None, TTL) == CasResult.CONFLICT
        loaded = await store.load(session)
        assert loaded is not None
        assert (loaded.state, loaded.version) == (state_of(session, 1), 1)  # the first one, whole
        assert (loaded.record, loaded.outbox, loaded.outbox_version, loaded.kb_version) == (None, None, 0, None)

    run(server, body)


def test_compare_and_set_needs_the_current_version_and_a_live_session(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 2), 1, TTL) == CasResult.GONE
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        assert await store.compare_and_set(state_of(session, 3, "x"), 2, TTL) == CasResult.CONFLICT
        assert await store.compare_and_set(state_of(session, 2, "b"), 1, TTL) == CasResult.OK
        assert await store.compare_and_set(state_of(session, 3, "y"), 1, TTL) == CasResult.CONFLICT  # lost race
        loaded = await store.load(session)
        assert loaded is not None and (loaded.version, loaded.state) == (2, state_of(session, 2, "b"))

    run(server, body)


def test_the_outbox_is_set_kept_and_cleared_with_the_state(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        assert await store.compare_and_set(state_of(session, 2), 1, TTL, outbox=outbox_of(session, "p1")) == 1
        loaded = await store.load(session)
        assert loaded is not None and (loaded.outbox, loaded.outbox_version) == (outbox_of(session, "p1"), 2)
        # A conflicting commit changes nothing, its outbox included.
        assert await store.compare_and_set(state_of(session, 3), 1, TTL, clear_outbox=True) == CasResult.CONFLICT
        assert await store.compare_and_set(state_of(session, 3), 9, TTL, outbox=outbox_of(session, "x")) == 0
        assert await store.read_outbox(session) == (outbox_of(session, "p1"), 2)
        # A commit without writes keeps it; one with writes replaces it; clear_outbox drops it.
        assert await store.compare_and_set(state_of(session, 3), 2, TTL) == CasResult.OK
        assert await store.read_outbox(session) == (outbox_of(session, "p1"), 2)
        assert await store.compare_and_set(state_of(session, 4), 3, TTL, outbox=outbox_of(session, "p2")) == 1
        assert await store.read_outbox(session) == (outbox_of(session, "p2"), 4)
        assert await store.compare_and_set(state_of(session, 5), 4, TTL, clear_outbox=True) == CasResult.OK
        assert await store.read_outbox(session) is None
        loaded = await store.load(session)
        assert loaded is not None and (loaded.outbox, loaded.outbox_version) == (None, 0)

    run(server, body)


def test_drop_outbox_drops_only_the_version_it_names(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL, outbox=outbox_of(session, "p")) == 1
        assert await store.drop_outbox(session, 2) is False  # a newer commit's outbox is not this one
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 1)
        assert await store.drop_outbox(session, 1) is True
        assert await store.read_outbox(session) is None
        assert await store.drop_outbox(session, 1) is False

    run(server, body)


def test_a_commit_sets_the_ttl_and_every_load_slides_it(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        key = s.keys.state(session)
        before = math.floor(await s.now_ms())
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        after = await s.now_ms()
        committed = await s.expires_at_ms(key)
        assert committed is not None and before + TTL <= committed <= after + TTL
        await s.elapse(2)
        before_load = math.floor(await s.now_ms())
        assert committed < before_load + TTL  # so the next check can tell a slide from none
        assert await store.load(session) is not None
        slid = await s.expires_at_ms(key)
        assert slid is not None and slid >= before_load + TTL

    run(server, body)


def test_an_expired_session_is_gone_and_its_outbox_outlives_it(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        short = 100
        assert await store.compare_and_set(state_of(session, 1), None, short, outbox=outbox_of(session, "p")) == 1
        assert await s.expires_at_ms(s.keys.outbox(session)) is None  # the outbox has no TTL
        await s.wait_gone(s.keys.state(session))
        assert await store.load(session) is None
        assert await store.compare_and_set(state_of(session, 2), 1, TTL) == CasResult.GONE
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 1)
        assert [due for due, _ in await store.due_outboxes(0, 10)] == [session]

    run(server, body)


def test_a_deleted_session_keeps_its_outbox_and_loses_its_records(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.delete(session) is False
        ok = await store.compare_and_set(
            state_of(session, 1), None, TTL, outbox=outbox_of(session, "p"), request_id="r1", record=record_of("Learn")
        )
        assert ok == CasResult.OK
        assert await store.delete(session) is True
        assert await store.delete(session) is False
        assert await store.load(session) is None
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 1)
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK  # the id is free again
        loaded = await store.load(session, "r1")
        assert loaded is not None and loaded.record is None

    run(server, body)


def test_load_brings_the_request_record_and_the_published_kb_version(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert (
            await store.compare_and_set(
                state_of(session, 1), None, TTL, request_id="r1", record=record_of("Observe", b"first")
            )
            == CasResult.OK
        )
        loaded = await store.load(session, "r1", "node-1")
        assert loaded is not None and loaded.record == record_of("Observe", b"first") and loaded.kb_version == 0
        await store.publish_kb_version("node-1", 7)
        loaded = await store.load(session, "r2", "node-1")
        assert loaded is not None and loaded.record is None and loaded.kb_version == 7
        loaded = await store.load(session)
        assert loaded is not None and loaded.kb_version is None  # not asked for

    run(server, body)


def test_the_oldest_request_records_go_beyond_the_count_limit(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(records=RecordLimits(count=2)), sid()
        for version in range(1, 4):
            record = record_of("Observe", f"r{version}".encode())
            expected = None if version == 1 else version - 1
            rid = f"r{version}"
            ok = await store.compare_and_set(state_of(session, version), expected, TTL, request_id=rid, record=record)
            assert ok == CasResult.OK
        kept = {}
        for rid in ("r1", "r2", "r3"):
            loaded = await store.load(session, rid)
            assert loaded is not None
            kept[rid] = loaded.record is not None
        assert kept == {"r1": False, "r2": True, "r3": True}

    run(server, body)


def test_the_oldest_request_records_go_beyond_the_byte_limit_but_never_the_last(server: Server) -> None:
    async def body(s: Stores) -> None:
        size = len(record_of("Observe", b"x" * 100).SerializeToString())
        store, session = s.open(records=RecordLimits(bytes=2 * size)), sid()
        responses = {"r1": b"1" * 100, "r2": b"2" * 100, "r3": b"3" * 100, "big": b"b" * 1000}
        for version, (rid, response) in enumerate(responses.items(), start=1):
            expected = None if version == 1 else version - 1
            record = record_of("Observe", response)
            ok = await store.compare_and_set(state_of(session, version), expected, TTL, request_id=rid, record=record)
            assert ok == CasResult.OK
            if rid == "r3":  # three do not fit in two records' bytes: the first went
                loaded = [await store.load(session, r) for r in ("r1", "r2", "r3")]
                assert [x is not None and x.record is not None for x in loaded] == [False, True, True]
        loaded = [await store.load(session, r) for r in responses]
        assert [x is not None and x.record is not None for x in loaded] == [False, False, False, True]  # alone, too big

    run(server, body)


# --- SessionStore: commit_or_load (a commit from a cached copy, architecture.md §3) -----------


async def _as_loaded(
    store: SessionBackend, result: Loaded | int, session: str, rid: str = "", kb: str | None = None
) -> None:
    """``result`` is what a load returns now (nothing was committed)."""
    assert isinstance(result, Loaded), result
    assert result == await store.load(session, rid, kb)


def _kb(store: SessionBackend) -> dict[str, Any]:
    """The KB precondition's arguments, where the store checks it (not on a Redis Cluster)."""
    return {"kb_id": "node-1", "kb_version": 0} if store.checks_kb_version else {}


def test_commit_or_load_commits_when_the_session_is_as_cached(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        before = math.floor(await s.now_ms())
        result = await store.commit_or_load(
            state_of(session, 2, "b"), 1, 2 * TTL, request_id="r1", record=record_of("Observe", b"one"), **_kb(store)
        )
        assert result == CasResult.OK
        loaded = await store.load(session, "r1")
        assert loaded is not None
        assert (loaded.state, loaded.version) == (state_of(session, 2, "b"), 2)
        assert loaded.record == record_of("Observe", b"one")
        expires = await s.expires_at_ms(s.keys.state(session))
        assert expires is not None and expires >= before + 2 * TTL  # the commit's TTL
        # With writes: marked first, and the outbox written with the state, as compare_and_set.
        assert await store.commit_or_load(state_of(session, 3), 2, TTL, outbox=outbox_of(session, "p")) == 1
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 3)
        assert [d for d, _ in await store.due_outboxes(0, 10)] == [session]

    run(server, body)


def test_commit_or_load_answers_a_moved_version_with_a_load(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        assert await store.compare_and_set(state_of(session, 2, "other"), 1, TTL) == CasResult.OK
        await s.elapse(2)
        before = math.floor(await s.now_ms())
        result = await store.commit_or_load(state_of(session, 2, "mine"), 1, TTL, request_id="r1", **_kb(store))
        slid = await s.expires_at_ms(s.keys.state(session))
        assert slid is not None and slid >= before + TTL  # the reply is a load: it slid the TTL
        assert isinstance(result, Loaded) and result.kb_version == (0 if store.checks_kb_version else None)
        await _as_loaded(store, result, session, "r1", "node-1" if store.checks_kb_version else None)
        assert (result.state, result.version) == (state_of(session, 2, "other"), 2)  # nothing of "mine"

    run(server, body)


def test_commit_or_load_answers_a_pending_outbox_with_a_load(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL, outbox=outbox_of(session, "p")) == 1
        result = await store.commit_or_load(state_of(session, 2), 1, TTL, outbox=outbox_of(session, "q"))
        assert isinstance(result, Loaded) and (result.outbox, result.outbox_version) == (outbox_of(session, "p"), 1)
        await _as_loaded(store, result, session)
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 1)  # not replaced
        assert await store.drop_outbox(session, 1)
        assert await store.commit_or_load(state_of(session, 2), 1, TTL) == CasResult.OK  # applied: commits

    run(server, body)


def test_commit_or_load_answers_a_recorded_request_id_with_a_load(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        first = record_of("Observe", b"first")
        assert await store.compare_and_set(state_of(session, 1), None, TTL, request_id="r1", record=first) == 1
        # The same id again (a retry, or a reuse with another body: the store does not judge).
        result = await store.commit_or_load(
            state_of(session, 2), 1, TTL, request_id="r1", record=record_of("Observe", b"second")
        )
        assert isinstance(result, Loaded) and result.record == first
        await _as_loaded(store, result, session, "r1")
        assert result.version == 1
        assert await store.commit_or_load(state_of(session, 2), 1, TTL, request_id="r2", record=first) == 1

    run(server, body)


def test_commit_or_load_answers_a_newer_kb_version_with_a_load(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        if not store.checks_kb_version:  # a Redis Cluster: the KB's key is in another slot
            with pytest.raises(ValueError, match="Cluster"):
                await store.commit_or_load(state_of(session, 2), 1, TTL, kb_id="node-1", kb_version=0)
            loaded = await store.load(session)
            assert loaded is not None and loaded.version == 1  # refused before anything was sent
            return
        await store.publish_kb_version("node-1", 7)
        await store.publish_kb_version("node-2", 9)  # another KB's version is no precondition
        result = await store.commit_or_load(state_of(session, 2), 1, TTL, kb_id="node-1", kb_version=6)
        assert isinstance(result, Loaded) and (result.version, result.kb_version) == (1, 7)
        await _as_loaded(store, result, session, "", "node-1")
        assert await store.commit_or_load(state_of(session, 2), 1, TTL, kb_id="node-1", kb_version=7) == 1
        assert await store.commit_or_load(state_of(session, 3), 2, TTL, kb_id="node-3", kb_version=0) == 1  # none

    run(server, body)


def test_commit_or_load_never_brings_a_deleted_or_expired_session_back(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, deleted, expired, never = s.open(), sid(), sid(), sid()
        assert await store.commit_or_load(state_of(never, 2), 1, TTL, **_kb(store)) == CasResult.GONE
        assert await store.compare_and_set(state_of(deleted, 1), None, TTL) == CasResult.OK
        assert await store.delete(deleted) is True
        assert await store.commit_or_load(state_of(deleted, 2), 1, TTL, **_kb(store)) == CasResult.GONE
        assert await store.compare_and_set(state_of(expired, 1), None, 100) == CasResult.OK
        await s.wait_gone(s.keys.state(expired))
        outbox = outbox_of(expired, "p")
        assert await store.commit_or_load(state_of(expired, 2), 1, TTL, outbox=outbox, **_kb(store)) == CasResult.GONE
        for session in (never, deleted, expired):
            assert await store.load(session) is None
            assert not await s.exists(s.keys.state(session))
        assert await store.read_outbox(expired) is None  # nothing of the refused commit

    run(server, body)


# --- RequestRecords ---------------------------------------------------------------------------


def test_the_first_session_less_record_wins_until_forgotten(server: Server) -> None:
    async def body(s: Stores) -> None:
        store = s.open()
        key = RecordKey("create", "node-1", "alice", "req-1")
        assert await store.recorded(key) is None
        assert await store.remember(key, record_of("CreateSession", b"s-1"), TTL) == record_of("CreateSession", b"s-1")
        assert await store.remember(key, record_of("CreateSession", b"s-2"), TTL) == record_of("CreateSession", b"s-1")
        assert await store.recorded(key) == record_of("CreateSession", b"s-1")
        # Scoped: another kind, node, caller or id names another record.
        for other in (
            RecordKey("kbreq", "node-1", "alice", "req-1"),
            RecordKey("create", "node-2", "alice", "req-1"),
            RecordKey("create", "node-1", "bob", "req-1"),
            RecordKey("create", "node-1", "alice", "req-2"),
        ):
            assert await store.recorded(other) is None
        await store.forget(key)
        assert await store.recorded(key) is None
        assert await store.remember(key, record_of("CreateSession", b"s-3"), TTL) == record_of("CreateSession", b"s-3")

    run(server, body)


def test_a_session_less_record_expires_with_its_ttl(server: Server) -> None:
    async def body(s: Stores) -> None:
        store = s.open()
        key = RecordKey("kbreq", "node-1", "alice", "req-1")
        assert await store.remember(key, record_of("ClearKnowledgeBase"), 100) == record_of("ClearKnowledgeBase")
        await s.wait_gone(s.keys.scoped(key.kind, key.node_id, key.principal, key.request_id))
        assert await store.recorded(key) is None

    run(server, body)


# --- KbVersionBoard ---------------------------------------------------------------------------


def test_a_published_kb_version_only_moves_forward(server: Server) -> None:
    async def body(s: Stores) -> None:
        store = s.open()
        assert await store.kb_version("kb-1") is None
        await store.publish_kb_version("kb-1", 0)
        assert await store.kb_version("kb-1") is None  # nothing above what is known
        await store.publish_kb_version("kb-1", 5)
        await store.publish_kb_version("kb-1", 3)
        assert await store.kb_version("kb-1") == 5
        await store.publish_kb_version("kb-1", 6)
        assert (await store.kb_version("kb-1"), await store.kb_version("kb-2")) == (6, None)

    run(server, body)


# --- OutboxQueue ------------------------------------------------------------------------------


async def _marked(s: Stores, store: SessionBackend, session: str, version: int = 1) -> None:
    """Commit an outbox for ``session`` (which marks it), then let the server's clock move on,
    so that the next mark has a later score."""
    expected = None if version == 1 else version - 1
    assert await store.compare_and_set(state_of(session, version), expected, TTL, outbox=outbox_of(session, "p")) == 1
    await s.elapse(2)


def test_due_outboxes_come_oldest_mark_first_up_to_the_limit(server: Server) -> None:
    async def body(s: Stores) -> None:
        store = s.open()
        sessions = ["s-c" + uuid.uuid4().hex, "s-b" + uuid.uuid4().hex, "s-a" + uuid.uuid4().hex]
        for session in sessions:  # marked in reverse order of their ids: the order is the marks'
            await _marked(s, store, session)
        due = await store.due_outboxes(0, 10)
        assert [d for d, _ in due] == sessions
        assert [score for _, score in due] == sorted(score for _, score in due)
        assert await store.due_outboxes(0, 2) == due[:2]
        assert await store.due_outboxes(600_000, 10) == []  # none is ten minutes old
        now = await s.now_ms()
        assert all(now - 600_000 < score <= now for _, score in due)  # scored by the server's clock, in ms

    run(server, body)


def test_a_commit_marks_its_session_even_when_it_loses(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        assert await store.compare_and_set(state_of(session, 1), None, TTL) == CasResult.OK
        assert await store.due_outboxes(0, 10) == []  # no writes, no mark
        assert await store.compare_and_set(state_of(session, 2), 5, TTL, outbox=outbox_of(session, "p")) == 0
        # Marked before the commit, so a crash between the two never leaves an unmarked outbox.
        assert [d for d, _ in await store.due_outboxes(0, 10)] == [session]
        assert await store.read_outbox(session) is None

    run(server, body)


def test_release_drops_an_applied_outbox_and_its_mark(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        await _marked(s, store, session)
        [(due, score)] = await store.due_outboxes(0, 10)
        found = await store.read_outbox(due)
        assert found is not None and found[1] == 1
        await store.release_outbox(due, found[1], score)
        assert (await store.read_outbox(session), await store.due_outboxes(0, 10)) == (None, [])

    run(server, body)


def test_release_keeps_an_outbox_a_newer_commit_wrote(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        await _marked(s, store, session)
        [(_, score)] = await store.due_outboxes(0, 10)
        await _marked(s, store, session, version=2)  # the relay read version 1; a call commits 2
        await store.release_outbox(session, 1, score)
        assert await store.read_outbox(session) == (outbox_of(session, "p"), 2)
        [(again, newer)] = await store.due_outboxes(0, 10)
        assert again == session and newer > score

    run(server, body)


def test_release_keeps_a_mark_made_again_since(server: Server) -> None:
    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        await _marked(s, store, session)
        [(_, score)] = await store.due_outboxes(0, 10)
        assert await store.drop_outbox(session, 1)  # applied by its call: the mark stays behind
        await _marked(s, store, session, version=2)  # marked again, then applied by its call too
        assert await store.drop_outbox(session, 2)
        await store.release_outbox(session, None, score)  # the relay saw the old mark, no outbox
        [(again, newer)] = await store.due_outboxes(0, 10)
        assert again == session and newer > score
        await store.release_outbox(session, None, newer)
        assert await store.due_outboxes(0, 10) == []

    run(server, body)


# --- NamespaceClaim, StoreConnection, and the namespace itself --------------------------------


def test_the_first_claim_of_a_namespace_wins(server: Server) -> None:
    async def body(s: Stores) -> None:
        store = s.open()
        assert await store.claim_namespace("deployment-1") == "deployment-1"
        assert await store.claim_namespace("deployment-2") == "deployment-1"
        assert await s.open().claim_namespace("deployment-2") == "deployment-1"  # another process, same namespace
        assert await store.ping() is True

    run(server, body)


def test_two_namespaces_on_one_server_never_see_each_others_keys(server: Server) -> None:
    async def body(s: Stores) -> None:
        mine, theirs, session = s.open(), s.open("ct-" + uuid.uuid4().hex[:12]), sid()
        key = RecordKey("create", "node-1", "alice", "req-1")
        assert (
            await mine.compare_and_set(
                state_of(session, 1),
                None,
                TTL,
                outbox=outbox_of(session, "p"),
                request_id="r1",
                record=record_of("Learn"),
            )
            == CasResult.OK
        )
        await mine.publish_kb_version("node-1", 4)
        await mine.remember(key, record_of("CreateSession", b"mine"), TTL)
        assert await mine.claim_namespace("deployment-1") == "deployment-1"

        assert await theirs.load(session, "r1", "node-1") is None
        assert await theirs.read_outbox(session) is None
        assert await theirs.due_outboxes(0, 10) == []  # their relay never applies my outboxes
        assert await theirs.kb_version("node-1") is None
        assert await theirs.recorded(key) is None
        assert await theirs.claim_namespace("deployment-2") == "deployment-2"
        assert await theirs.delete(session) is False
        assert await theirs.drop_outbox(session, 1) is False
        # The same id is another session there.
        assert await theirs.compare_and_set(state_of(session, 1, "theirs"), None, TTL) == CasResult.OK

        loaded = await mine.load(session, "r1", "node-1")
        assert loaded is not None and loaded.state == state_of(session, 1)
        assert loaded.record is not None and loaded.outbox == outbox_of(session, "p") and loaded.kb_version == 4
        assert [d for d, _ in await mine.due_outboxes(0, 10)] == [session]
        assert await mine.recorded(key) == record_of("CreateSession", b"mine")

    run(server, body)


def test_stores_of_one_namespace_share_everything(server: Server) -> None:
    """Two processes of one deployment: what one commits, the other loads and may replace."""

    async def body(s: Stores) -> None:
        a, b, session = s.open(), s.open(), sid()
        assert await a.compare_and_set(state_of(session, 1), None, TTL, outbox=outbox_of(session, "p")) == 1
        loaded = await b.load(session)
        assert loaded is not None and (loaded.state, loaded.outbox) == (state_of(session, 1), outbox_of(session, "p"))
        assert await b.compare_and_set(state_of(session, 2), 1, TTL, clear_outbox=True) == CasResult.OK
        assert await a.compare_and_set(state_of(session, 2, "late"), 1, TTL) == CasResult.CONFLICT
        assert await a.read_outbox(session) is None

    run(server, body)


# --- TransactionLeases: which process runs transactions in which MongoDB sessions -----------
#
# A live process's lease is 60 s long: it cannot lapse within a test (a stall that long is a
# hang, and the deadlines fail first). A process meant to lapse has a 50 ms lease, and the test
# waits until its lease key is gone (the twin's clock moved past it; Redis polled).

LIVE_LEASE = 60.0
SHORT_LEASE = 0.05


def pid() -> str:
    return "p-" + uuid.uuid4().hex[:12]


def lsid() -> bytes:
    return uuid.uuid4().bytes  # a MongoDB logical session id: 16 bytes


def test_a_registered_session_is_owned_by_its_live_process(server: Server) -> None:
    async def body(s: Stores) -> None:
        a, b = pid(), pid()
        mine, other = s.leases(a, LIVE_LEASE), s.leases(b, LIVE_LEASE)
        first, second = lsid(), lsid()
        assert len(first) == LSID_BYTES
        await mine.register(first)
        await mine.register(second)
        await mine.register(first)  # once
        assert await s.hash_field(s.keys.transaction_owners, a) == first + second
        expires = await s.expires_at_ms(s.keys.transaction_lease(a))
        now = await s.now_ms()
        assert expires is not None and now < expires <= now + LIVE_LEASE * 1000  # leased, on the server's clock
        await other.renew()  # a process with no session yet is listed with none
        assert await s.hash_field(s.keys.transaction_owners, b) == b""
        assert await other.dead() == {}  # both live
        assert await mine.dead() == {}

    run(server, body)


def test_a_lease_not_renewed_lapses_and_its_process_shows_with_its_sessions(server: Server) -> None:
    async def body(s: Stores) -> None:
        stalled, survivor = pid(), pid()
        lapsing, live = s.leases(stalled, SHORT_LEASE), s.leases(survivor, LIVE_LEASE)
        sessions = [lsid(), lsid()]
        for session in sessions:
            await lapsing.register(session)
        await live.register(lsid())
        await s.wait_gone(s.keys.transaction_lease(stalled))
        assert await live.dead() == {stalled: sessions}
        assert await lapsing.dead() == {}  # never itself; the survivor is live
        assert await s.hash_field(s.keys.transaction_owners, stalled) == b"".join(sessions)  # until forgotten

    run(server, body)


def test_forget_and_leave_remove_a_process_and_its_sessions(server: Server) -> None:
    async def body(s: Stores) -> None:
        stalled, leaving, survivor = pid(), pid(), pid()
        lapsing, going, live = (
            s.leases(stalled, SHORT_LEASE),
            s.leases(leaving, LIVE_LEASE),
            s.leases(survivor, LIVE_LEASE),
        )
        await lapsing.register(lsid())
        await going.register(lsid())
        await live.renew()
        await s.wait_gone(s.keys.transaction_lease(stalled))
        assert list(await live.dead()) == [stalled]
        await live.forget(stalled)  # its sessions were ended
        assert await live.dead() == {}
        assert await s.hash_field(s.keys.transaction_owners, stalled) is None
        await going.leave()  # a graceful stop: gone, never taken for dead
        assert await s.hash_field(s.keys.transaction_owners, leaving) is None
        assert not await s.exists(s.keys.transaction_lease(leaving))
        assert await live.dead() == {}
        await live.leave()
        assert not await s.exists(s.keys.transaction_owners)  # nobody is left

    run(server, body)


def test_two_namespaces_never_see_each_others_leases(server: Server) -> None:
    async def body(s: Stores) -> None:
        theirs_ns = "ct-" + uuid.uuid4().hex[:12]
        stalled, sessions, their_session = pid(), [lsid()], lsid()
        lapsing, live = s.leases(stalled, SHORT_LEASE), s.leases(pid(), LIVE_LEASE)
        # Another deployment on the same server, with a live process of the same id.
        namesake, theirs = s.leases(stalled, LIVE_LEASE, theirs_ns), s.leases(pid(), LIVE_LEASE, theirs_ns)
        for session in sessions:
            await lapsing.register(session)
        await namesake.register(their_session)
        await s.wait_gone(s.keys.transaction_lease(stalled))
        assert await theirs.dead() == {}  # their reaper never ends my sessions: their namesake is live
        assert await live.dead() == {stalled: sessions}  # mine lapsed, whatever lives elsewhere
        await live.forget(stalled)
        assert await s.hash_field(Keys(theirs_ns).transaction_owners, stalled) == their_session  # theirs stays
        await namesake.leave()
        assert await s.hash_field(Keys(theirs_ns).transaction_owners, stalled) is None
        assert (await live.dead(), await theirs.dead()) == ({}, {})

    run(server, body)


# --- The Redis store's errors: the project's, never the driver's ------------------------------


def test_an_unreachable_redis_is_store_unavailable() -> None:
    async def body() -> None:
        store = RedisSessionStore(redis_client.connect(f"redis://127.0.0.1:{devstack.free_port()}/0", 1.0))
        try:
            with pytest.raises(StoreUnavailable) as raised:
                await store.load(sid())
            assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)  # kept for the log
            with pytest.raises(StoreUnavailable):
                await store.publish_kb_version("kb", 1)
        finally:
            await store.close()

    asyncio.run(body())


@pytest.mark.parametrize("kind", ["valkey", "valkey_cluster"])
def test_a_refused_command_is_store_failed(kind: str, request: pytest.FixtureRequest) -> None:
    found: Server = request.getfixturevalue(kind)

    async def body(s: Stores) -> None:
        store, session = s.open(), sid()
        await s.write_raw(s.keys.state(session), b"not a hash")  # WRONGTYPE for every script on it
        with pytest.raises(StoreError) as raised:
            await store.load(session)
        assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)

    run(found, body)


def test_every_store_is_a_session_backend() -> None:
    """The Protocols are structural: this is what mypy checks (``SessionBackend`` annotations
    above), stated at run time too for the methods a Protocol lists."""
    members = {
        name: value
        for cls in SessionBackend.__mro__
        if cls not in (object, SessionBackend)
        for name, value in vars(cls).items()
        if not name.startswith("_")
    }
    properties = {name for name, value in members.items() if isinstance(value, property)}
    names = set(members) - properties
    assert {"load", "compare_and_set", "commit_or_load", "delete", "remember", "due_outboxes", "ping"} <= names
    assert properties == {"checks_kb_version"}
    for cls in (InMemorySessionStore, RedisSessionStore):
        missing = sorted(name for name in names if not callable(getattr(cls, name, None)))
        assert missing == [], (cls.__name__, missing)

    async def redis_store() -> RedisSessionStore:  # a client that never connects
        return RedisSessionStore(redis_client.connect("redis://127.0.0.1:1", STORE_TIMEOUT))

    for store in (InMemorySessionStore(), asyncio.run(redis_store())):
        assert all(isinstance(getattr(store, name), bool) for name in properties), type(store).__name__
