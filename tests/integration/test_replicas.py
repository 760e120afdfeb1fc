"""Many replicas (issue 14): three server processes on their own ports share the stores; every
conformance scenario, with each call sent to the next replica in turn, gives the pure replay's
outputs — a learn through one replica is seen by the next call through another."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from kato_grpc.replay import replay
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.conformance.compare import SCENARIOS, differences
from tests.integration.grpc_replay import replay_grpc

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


class Rotating:
    """A stub whose every call goes to the next replica."""

    def __init__(self, stubs: Sequence[svc_grpc.KatoServiceStub]) -> None:
        self.stubs, self.calls = stubs, 0

    def __getattr__(self, method: str) -> Any:
        stub = self.stubs[self.calls % len(self.stubs)]
        self.calls += 1
        return getattr(stub, method)


@pytest.fixture(scope="module")
def replicas(stores: Stores, log_dir: Path) -> Iterator[list[ServerProcess]]:
    database = "kato_replicas_" + uuid.uuid4().hex[:8]
    # Each its own string-hash seed (fresh interpreters, not forks of one: docs/architecture.md
    # §8): an answer that hung on a set's or dict's hash order would differ between replicas.
    servers = [new_server(*stores, log_dir, database).start(PYTHONHASHSEED=str(seed)) for seed in (1, 2, 3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_rotated_over_three_replicas_matches_pure_replay(path: Path, replicas: list[ServerProcess]) -> None:
    scenario = json.loads(path.read_text(encoding="utf-8"))
    rotating = Rotating([server.stub() for server in replicas])
    via_grpc = replay_grpc(cast(svc_grpc.KatoServiceStub, rotating), "rot-" + uuid.uuid4().hex, scenario)
    assert rotating.calls >= 2  # more than one replica answered it
    diffs = differences(scenario["results"], via_grpc["results"], "results")
    diffs += differences(scenario["learned_patterns"], via_grpc["learned_patterns"], "learned_patterns")
    assert diffs == [], "\n".join(diffs[:20])
    assert via_grpc == json.loads(json.dumps(replay(scenario)))
