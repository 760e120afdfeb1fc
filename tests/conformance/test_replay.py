"""Every recorded scenario replays through the pure engine to its recorded outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kato_grpc.replay import replay
from tests.conformance.compare import SCENARIOS, differences, load


def test_all_55_scenarios_are_present() -> None:
    assert len(SCENARIOS) == 55


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_replays_to_recorded_results(path: Path) -> None:
    scenario = load(path)
    output = replay(scenario)
    diffs = differences(scenario["results"], output["results"], "results")
    diffs += differences(scenario["learned_patterns"], output["learned_patterns"], "learned_patterns")
    assert diffs == [], "\n".join(diffs[:20])


def test_comparison_catches_a_changed_value() -> None:
    # Guards the guard: a one-ulp-scale change far beyond the tolerance must be reported.
    scenario = load(Path(__file__).parent / "scenarios" / "rank_potential_explicit.json")
    output = replay(scenario)
    output["results"][7]["predictions"][0]["potential"] += 1e-6
    assert differences(scenario["results"], output["results"])
    output = replay(scenario)
    output["results"][7]["predictions"].reverse()
    output["results"][7]["predictions"].append(output["results"][7]["predictions"][0])
    assert differences(scenario["results"], output["results"])


def test_replay_cli_prints_the_same_json_as_the_library(tmp_path: Path) -> None:
    path = Path(__file__).parent / "scenarios" / "discrim_02_three_patterns.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kato_grpc.replay", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout) == json.loads(json.dumps(replay(load(path))))


def test_replay_cli_rejects_an_unknown_stm_mode(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"config": {"stm_mode": "SIDEWAYS"}, "operations": []}))
    proc = subprocess.run(
        [sys.executable, "-m", "kato_grpc.replay", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "INVALID_ARGUMENT" in proc.stderr
    assert "stm_mode" in proc.stderr
