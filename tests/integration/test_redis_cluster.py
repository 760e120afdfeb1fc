"""The service on a Redis Cluster (issue 14): 3 masters + 3 replicas of the local Valkey, joined
by the test run. Every conformance scenario through gRPC, and two processes under 64 clients
on 8 shared sessions, give what they give on one Redis server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kato_grpc import names
from kato_grpc.replay import replay
from kato_grpc.stores.keys import Keys
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devcluster, devstack
from kato_server.devserver import ServerProcess, new_server
from tests.conformance.compare import SCENARIOS, differences
from tests.integration.grpc_replay import replay_grpc
from tests.integration.test_resilience import lose_and_double_nothing

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
        keys = Keys(cluster_servers[0].env["KATO_MONGODB_DATABASE"])
        key = keys.state(session.name.removeprefix("sessions/"))
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
    stubs = [s.stub() for s in cluster_servers for _ in range(4)]
    lose_and_double_nothing(stubs, clients=64, sessions_count=8, calls=2000)
