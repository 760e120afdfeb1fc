"""The service on a Redis Cluster (issue 14): 3 masters + 3 replicas of the local Valkey, joined
by the test run. Every conformance scenario through gRPC, and two processes under 64 clients
on 8 shared sessions, give what they give on one Redis server."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from kato_grpc import devcluster, devstack, names
from kato_grpc.devserver import ServerProcess, new_server
from kato_grpc.engine.naming import pattern_name
from kato_grpc.replay import replay
from kato_grpc.stores import redis_sessions
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.conformance.compare import SCENARIOS, differences
from tests.integration.grpc_replay import replay_grpc
from tests.integration.test_resilience import with_retry

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.LocalCluster]:
    with devcluster.local_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def cluster_servers(
    cluster: devcluster.LocalCluster, stores: Stores, log_dir: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    database = "kato_cluster_" + uuid.uuid4().hex[:8]
    servers = tuple(new_server(*stores, log_dir, database).start(KATO_REDIS_URL=cluster.url) for _ in range(2))
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def test_the_cluster_spreads_sessions_over_its_masters(
    cluster: devcluster.LocalCluster, cluster_servers: tuple[ServerProcess, ServerProcess]
) -> None:
    assert sorted(cluster.roles().values()) == ["master"] * 3 + ["slave"] * 3
    stub = cluster_servers[0].stub()
    kb = names.knowledge_base("spread-" + uuid.uuid4().hex)
    owners = set()
    for _ in range(40):
        session = stub.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb)))
        key = redis_sessions.state_key(session.name.removeprefix("sessions/"))
        owner = cluster.master_of(key)
        with redis.Redis(port=owner.port) as node:
            assert node.exists(key) == 1  # stored where the cluster says the slot lives
        owners.add(owner.port)
    assert len(owners) == 3  # 40 random sessions missing a master of three: 3 × (2/3)^40 ≈ 2e-7


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_through_grpc_on_a_cluster_matches_pure_replay(
    path: Path, cluster_servers: tuple[ServerProcess, ServerProcess]
) -> None:
    scenario = json.loads(path.read_text(encoding="utf-8"))
    via_grpc = replay_grpc(cluster_servers[0].stub(), "cl-" + uuid.uuid4().hex, scenario)
    diffs = differences(scenario["results"], via_grpc["results"], "results")
    diffs += differences(scenario["learned_patterns"], via_grpc["learned_patterns"], "learned_patterns")
    assert diffs == [], "\n".join(diffs[:20])
    assert via_grpc == json.loads(json.dumps(replay(scenario)))


def test_two_processes_on_a_cluster_lose_and_double_nothing(
    cluster_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    clients, sessions_count, calls, learns = 64, 8, 2000, 200
    stubs = [s.stub() for s in cluster_servers for _ in range(4)]
    node = "clconc-" + uuid.uuid4().hex
    kb = names.knowledge_base(node)
    sessions = [
        stubs[0].CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb))).name
        for _ in range(sessions_count)
    ]

    def observe(i: int) -> str:
        sid = sessions[i % len(sessions)]
        request = svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[f"s{i % 7}"]), request_id=f"obs-{i}")
        with_retry(lambda: stubs[i % len(stubs)].Observe(request, timeout=60))
        return sid

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        sent = Counter(pool.map(observe, range(calls)))
    print(f"{calls} observes on the cluster in {time.monotonic() - started:.1f}s")
    for sid in sessions:
        assert stubs[1].GetSession(svc.GetSessionRequest(name=sid)).time == sent[sid] == calls // sessions_count
        stubs[0].ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))

    def learn(i: int) -> None:
        request = svc.ObserveSequenceRequest(
            name=sessions[i % len(sessions)],
            observations=[pb.Observation(strings=["p"]), pb.Observation(strings=["q"])],
            learn_at_end=True,
            request_id=f"learn-{i}",
        )
        with_retry(lambda: stubs[i % len(stubs)].ObserveSequence(request, timeout=60))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(learn, range(learns)))
    name = names.pattern(node, pattern_name([["p"], ["q"]]))
    for stub in (stubs[0], stubs[-1]):
        assert stub.GetPattern(svc.GetPatternRequest(name=name)).frequency == learns
