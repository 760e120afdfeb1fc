"""Every conformance scenario replayed through the gRPC API gives the pure replay's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kato_grpc.replay import replay
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from tests.conformance.compare import SCENARIOS, differences
from tests.integration.grpc_replay import replay_grpc


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_through_grpc_matches_pure_replay(path: Path, stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    scenario = json.loads(path.read_text(encoding="utf-8"))
    via_grpc = replay_grpc(stub, node_id, scenario)
    diffs = differences(scenario["results"], via_grpc["results"], "results")
    diffs += differences(scenario["learned_patterns"], via_grpc["learned_patterns"], "learned_patterns")
    assert diffs == [], "\n".join(diffs[:20])
    # And the service agrees with the pure engine on every field, recorded or not.
    assert via_grpc == json.loads(json.dumps(replay(scenario)))
