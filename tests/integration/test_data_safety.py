"""Issue 9, data loss: outboxes, request-id records and their scopes.

Each test runs its own server on its own Redis database, so no other server's outbox relay
can do the work the test expects of this one.
"""

from __future__ import annotations

import itertools
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.stores.keys import Keys, namespace_for
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.integration.support import details, error_info, eventually, frequency

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
_DB = itertools.count(1)


def _server(stores: Stores, log_dir: Path, **env: str) -> ServerProcess:
    return new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8], redis_db=next(_DB) % 16 or 1).start(**env)


@pytest.fixture
def quiet(stores: Stores, log_dir: Path) -> Iterator[ServerProcess]:
    """A server whose relay never runs within a test: whatever lands, the calls landed."""
    server = _server(stores, log_dir, KATO_OUTBOX_RELAY_AFTER_SECONDS="3600")
    yield server
    server.stop()


def _outbox(server: ServerProcess, sid: str) -> str:
    """The Redis key of the session's outbox (``redis_sessions.Keys``)."""
    return Keys(namespace_for(server.env["KATO_MONGODB_DATABASE"])).outbox(sid.removeprefix("sessions/"))


def _cut_off_learn(server: ServerProcess, mongo: devstack.LocalServer, node: str, symbols: list[str]) -> str:
    """A Learn cut off (its client gone) while MongoDB is stalled, once its session commit is
    in Redis — a signal, not a deadline a loaded machine might miss: committed to the session,
    not yet in the KB. Returns the session name."""
    stub = server.stub()
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
    ).name
    for s in symbols:
        stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[s])))
    outbox = _outbox(server, sid)
    mongo.proc.send_signal(signal.SIGSTOP)
    try:
        call = stub.Learn.future(svc.LearnRequest(name=sid, request_id="learn-1"), timeout=120)
        with redis.Redis.from_url(server.env["KATO_REDIS_URL"]) as r:
            assert eventually(lambda: r.exists(outbox) == 1, timeout=60), "the learn was committed"
        assert call.cancel(), "still waiting on MongoDB"
    finally:
        mongo.proc.send_signal(signal.SIGCONT)
    return sid  # (no call on the session here: any call would apply the outbox)


def test_cut_off_learn_lands_once_on_retry(quiet: ServerProcess, stores: Stores) -> None:
    stub, node = quiet.stub(), "retry-" + uuid.uuid4().hex
    name = names.pattern(node, pattern_name([["r1"], ["r2"]]))
    sid = _cut_off_learn(quiet, stores[1], node, ["r1", "r2"])
    retry = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-1"), timeout=30)
    assert (retry.status, retry.pattern) == (svc.LEARN_STATUS_LEARNED, name)
    assert frequency(stub, name) == 1  # the replay applied the outbox before answering
    assert stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events == []  # committed once
    stub.Learn(svc.LearnRequest(name=sid, request_id="learn-1"), timeout=30)
    assert frequency(stub, name) == 1


def test_cut_off_learn_lands_once_when_the_session_is_deleted(quiet: ServerProcess, stores: Stores) -> None:
    stub, node = quiet.stub(), "delete-" + uuid.uuid4().hex
    name = names.pattern(node, pattern_name([["d1"], ["d2"]]))
    sid = _cut_off_learn(quiet, stores[1], node, ["d1", "d2"])
    stub.DeleteSession(svc.DeleteSessionRequest(name=sid), timeout=30)
    assert frequency(stub, name) == 1


def test_cut_off_learn_lands_once_when_nobody_calls_again(stores: Stores, log_dir: Path) -> None:
    server = _server(stores, log_dir, KATO_OUTBOX_RELAY_AFTER_SECONDS="1", KATO_OUTBOX_RELAY_INTERVAL_SECONDS="0.5")
    try:
        stub, node = server.stub(), "silence-" + uuid.uuid4().hex
        name = names.pattern(node, pattern_name([["q1"], ["q2"]]))
        sid = _cut_off_learn(server, stores[1], node, ["q1", "q2"])
        # The relay drops the outbox once it has applied it: with the outbox gone nothing can
        # apply it again, so the count read then is the final one (no waiting to see whether
        # a second application comes). Polled: the deadline only bounds a hang.
        with redis.Redis.from_url(server.env["KATO_REDIS_URL"]) as r:
            assert eventually(lambda: r.exists(_outbox(server, sid)) == 0, timeout=60), "the relay applied it"
        assert frequency(stub, name) == 1
    finally:
        server.stop()


def _redis_ms(r: redis.Redis) -> int:
    """Redis's clock, in ms (the one its TTLs run on)."""
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _learned_then_kept(server: ServerProcess, r: redis.Redis, ttl: int) -> tuple[str, svc.LearnResponse, int] | None:
    """A session of ``ttl`` seconds that observed "t1", "t2" and learned with request id "L",
    then was given 600 s: (session name, the Learn's answer, when the session would have
    ended by Redis's clock as the record was written). None when the session ended before it
    was given longer (the calls took more than ``ttl`` seconds)."""
    stub, node = server.stub(), "ttl-" + uuid.uuid4().hex
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node), ttl_seconds=ttl))
    ).name
    state = Keys(namespace_for(server.env["KATO_MONGODB_DATABASE"])).state(sid.removeprefix("sessions/"))
    try:
        for s in ("t1", "t2"):
            stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[s])))
        first = stub.Learn(svc.LearnRequest(name=sid, request_id="L"))
        written_until = int(r.pexpiretime(state))  # nothing else calls the session meanwhile
        stub.UpdateSession(svc.UpdateSessionRequest(session=svc.Session(name=sid, ttl_seconds=600)))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    assert written_until > 0, "the session had a TTL"
    return sid, first, written_until


def test_request_records_live_as_long_as_their_session(stores: Stores, log_dir: Path) -> None:
    # A record written while its session had seconds to live is still there after they have
    # passed, once the session was given longer: it lives as long as the session, not as long
    # as the session had to live when it was written. Nothing must come in time: a machine
    # too slow to give the session longer before it ends starts over with twice the TTL (the
    # last only bounds a hang); the 600 s keep it meanwhile, and the time is Redis's own.
    server = _server(stores, log_dir, KATO_MIN_TTL_SECONDS="1")
    try:
        stub = server.stub()
        with redis.Redis.from_url(server.env["KATO_REDIS_URL"]) as r:
            kept = None
            for ttl in (2, 4, 8, 16, 32, 64):
                kept = _learned_then_kept(server, r, ttl)
                if kept is not None:
                    break
            assert kept is not None, "a session was given longer before it ended"
            sid, first, written_until = kept
            assert eventually(lambda: _redis_ms(r) > written_until, timeout=120), "Redis's clock passed it"
        for s in ("t1", "t2"):
            stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[s])))
        again = stub.Learn(svc.LearnRequest(name=sid, request_id="L"))
        assert again == first  # the record replayed: the learn did not run again
        assert frequency(stub, first.pattern) == 1
        assert len(stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events) == 2
    finally:
        server.stop()


def test_an_evicted_request_id_runs_again_and_its_learn_counts(stores: Stores, log_dir: Path) -> None:
    server = _server(stores, log_dir, KATO_MAX_REQUEST_RECORDS="2")
    try:
        stub, node = server.stub(), "evict-" + uuid.uuid4().hex
        sid = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        ).name
        name = ""
        for round_ in range(2):
            for s in ("e1", "e2"):
                stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[s])))
            name = stub.Learn(svc.LearnRequest(name=sid, request_id="L")).pattern
            for i in range(2):  # two newer records push "L" out
                stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid, request_id=f"c{round_}{i}"))
        assert frequency(stub, name) == 2  # a new execution: its write is not the first one's
    finally:
        server.stop()


def test_a_used_request_id_is_refused_by_every_other_call(quiet: ServerProcess) -> None:
    stub, node = quiet.stub(), "reuse-" + uuid.uuid4().hex
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
    ).name
    first = stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["a"]), request_id="r1"))
    same = stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["a"]), request_id="r1"))
    assert same == first
    others: list[Callable[[], object]] = [
        lambda: stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=["b"]), request_id="r1")),
        lambda: stub.Learn(svc.LearnRequest(name=sid, request_id="r1")),
        lambda: stub.ObserveSequence(
            svc.ObserveSequenceRequest(name=sid, observations=[pb.Observation(strings=["c"])], request_id="r1")
        ),
        lambda: stub.UpdateSession(
            svc.UpdateSessionRequest(
                session=svc.Session(name=sid, config=pb.SessionConfig(max_predictions=3)), request_id="r1"
            )
        ),
        lambda: stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid, request_id="r1")),
        lambda: stub.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest(session=sid, request_id="r1")),
    ]
    for call in others:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert error_info(info.value) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED", "Observe")
    # Nothing any of them would have done happened.
    session = stub.GetSession(svc.GetSessionRequest(name=sid))
    assert (session.time, session.stm_length, session.config.max_predictions) == (1, 1, 100)
    # The stream replays a unary Observe's id as the same call, and refuses another body.
    replies = list(
        stub.ObserveStream(
            iter([svc.ObserveStreamRequest(name=sid, observation=pb.Observation(strings=["a"]), request_id="r1")])
        )
    )
    # The stream's messages are Observe's, field for field: the same bytes as the first answer.
    assert [r.SerializeToString(deterministic=True) for r in replies] == [first.SerializeToString(deterministic=True)]


def test_create_session_request_ids_are_scoped_by_node_and_caller(quiet: ServerProcess) -> None:
    stub = quiet.stub()
    a, b = "node-a-" + uuid.uuid4().hex, "node-b-" + uuid.uuid4().hex
    made = stub.CreateSession(
        svc.CreateSessionRequest(
            session=svc.Session(knowledge_base=names.knowledge_base(a), metadata={"who": "a"}), request_id="X"
        )
    )
    stub.Observe(svc.ObserveRequest(name=made.name, observation=pb.Observation(strings=["secret"])))
    other = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(b)), request_id="X")
    )
    assert other.name != made.name and other.knowledge_base == names.knowledge_base(b) and dict(other.metadata) == {}
    assert other.stm_length == 0
    again = stub.CreateSession(
        svc.CreateSessionRequest(
            session=svc.Session(knowledge_base=names.knowledge_base(a), metadata={"who": "a"}), request_id="X"
        )
    )
    assert again.name == made.name
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateSession(
            svc.CreateSessionRequest(
                session=svc.Session(knowledge_base=names.knowledge_base(a), metadata={"who": "z"}), request_id="X"
            )
        )
    assert error_info(info.value) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED", "CreateSession")


def test_create_session_request_ids_do_not_cross_tenants(stores: Stores, log_dir: Path) -> None:
    tokens = {"alice-token": ["alice"], "bob-token": ["bob"], "ops-token": ["*"]}
    server = _server(stores, log_dir, KATO_AUTH_TOKENS=json.dumps(tokens))
    try:
        stub = server.stub()

        def create(node: str, token: str) -> svc.Session:
            request = svc.CreateSessionRequest(
                session=svc.Session(knowledge_base=names.knowledge_base(node)), request_id="shared-id"
            )
            return stub.CreateSession(request, metadata=(("authorization", f"Bearer {token}"),))

        alice = create("alice", "alice-token")
        bob = create("bob", "bob-token")  # not refused, and not told the id was used
        ops = create("alice", "ops-token")
        assert len({alice.name, bob.name, ops.name}) == 3
        assert bob.knowledge_base == "knowledgeBases/bob"
        assert create("alice", "alice-token").name == alice.name
    finally:
        server.stop()


def test_observe_stream_keeps_valid_observations_before_a_bad_one(quiet: ServerProcess) -> None:
    stub = quiet.stub()
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("stream-" + uuid.uuid4().hex)))
    ).name
    requests = [
        svc.ObserveStreamRequest(name=sid, observation=pb.Observation(strings=[s])) for s in ("a", "b", "x" * 2000)
    ]
    answers: list[int] = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.ObserveStream(iter(requests)):
            answers.append(reply.stm_length)
    assert answers == [1, 2]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stm = stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid)).events
    assert [list(e.symbols) for e in stm] == [["a"], ["b"]]


def test_clear_knowledge_base_refuses_a_session_and_another_node(quiet: ServerProcess) -> None:
    stub = quiet.stub()
    mine, theirs = "mine-" + uuid.uuid4().hex, "theirs-" + uuid.uuid4().hex
    victim = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(theirs)))
    ).name
    stub.ObserveSequence(
        svc.ObserveSequenceRequest(
            name=victim,
            observations=[pb.Observation(strings=["v1"]), pb.Observation(strings=["v2"])],
            learn_at_end=True,
        )
    )
    sid = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(mine)))
    ).name
    with pytest.raises(grpc.RpcError) as info:
        stub.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest(request_id="no-target"))
    assert details(info.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, ["target"])
    # The target is a oneof: a request carrying both on the wire means its last one, never
    # "the session silently wins".
    both = (
        svc.ClearKnowledgeBaseRequest(knowledge_base=names.knowledge_base(theirs)).SerializeToString()
        + svc.ClearKnowledgeBaseRequest(session=sid).SerializeToString()
    )
    assert svc.ClearKnowledgeBaseRequest.FromString(both).WhichOneof("target") == "session"
    stub.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest.FromString(both))
    assert len(stub.ListPatterns(svc.ListPatternsRequest(parent=names.knowledge_base(theirs))).patterns) == 1
