"""Deterministic replay of a recorded KATO session through the engine and the transaction runner.

    python -m kato_grpc.replay SCENARIO.json

reads a scenario (config + operations, the layout of the conformance README), runs it
through the service's transaction runner over in-memory stores (a fresh knowledge base) and prints ``{"results": [...],
"learned_patterns": [...]}`` as JSON. Same input, same output, on every run: an audit
trail for any session that was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.empty_pb2 import Empty

from kato_grpc import encoding, jsonview, names, request_ids
from kato_grpc.access import ANYONE
from kato_grpc.engine import processor
from kato_grpc.engine.naming import strip_pattern_prefix
from kato_grpc.engine.observation import validate_observation
from kato_grpc.engine.predict import PredictionSet
from kato_grpc.errors import InvalidArgument, KatoError
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import TransactionRunner
from kato_grpc.stores.memory import InMemoryKnowledgeBase, InMemoryPatternStore
from kato_grpc.stores.memory_sessions import InMemorySessionStore
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

SESSION_ID = "replay"
NODE_ID = "replay"


def config_from_json(raw: Mapping[str, Any]) -> pb.SessionConfig:
    """A SessionConfig from the scenario's plain config (enum values by their short names)."""
    values = dict(raw)
    if "stm_mode" in values:
        values["stm_mode"] = _enum_name(pb.StmMode, "STM_MODE_", "stm_mode", values["stm_mode"])
    if "rank_sort_algo" in values:
        values["rank_sort_algo"] = _enum_name(
            pb.RankSortAlgo, "RANK_SORT_ALGO_", "rank_sort_algo", values["rank_sort_algo"]
        )
    try:
        return json_format.ParseDict(values, pb.SessionConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"config: {exc}", reason="INVALID_CONFIG") from exc


def _enum_name(enum: Any, prefix: str, field: str, value: Any) -> str:
    name = prefix + str(value).upper()
    known = list(enum.keys())
    if name not in known or name.endswith("_UNSPECIFIED"):
        raise InvalidArgument.for_field(f"config.{field}", f"unknown value {value!r}")
    return name


def observation_from_json(op: Mapping[str, Any]) -> pb.Observation:
    obs = pb.Observation(strings=op.get("strings", []), emotives=op.get("emotives", {}))
    for vector in op.get("vectors", []):
        obs.vectors.add(values=vector)
    for key, value in op.get("metadata", {}).items():
        obs.metadata[key].CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
    validate_observation(obs)  # the replay's edge: the engine takes validated observations
    return obs


class Replayer:
    """A single session on one fresh in-memory KB, run like the service runs it: every
    operation goes through the real transaction runner (load, outbox, compare-and-set, apply)
    over the in-memory twins of the session and pattern stores."""

    def __init__(self, config: pb.SessionConfig) -> None:
        self.sessions = InMemorySessionStore()
        self.patterns = InMemoryPatternStore()
        self.runner = TransactionRunner(self.sessions, self.patterns)
        self.learned: list[str] = []
        self._observations = 0
        state = processor.new_session(SESSION_ID, NODE_ID, config)
        state.version = 1
        asyncio.run(self.sessions.compare_and_set(state, None, self.runner.ttl_ms(state)))

    @property
    def kb(self) -> InMemoryKnowledgeBase:
        return self.patterns.kb(NODE_ID)

    @property
    def state(self) -> storage.SessionState:
        """The session as last committed."""
        return asyncio.run(self.runner.read(SESSION_ID, ANYONE)).state

    def _commit(self, method: str, change: Callable[[storage.SessionState], storage.SessionState]) -> None:
        """One transaction of the runner whose transition is the pure ``change``."""

        async def transition(state: storage.SessionState, _kb: int | None) -> tuple[storage.SessionState, Empty]:
            return change(state), Empty()

        asyncio.run(
            self.runner.transact(SESSION_ID, request_ids.Call(method, Empty(), "", Empty), transition, caller=ANYONE)
        )

    def update_config(self, config: pb.SessionConfig) -> None:
        self._commit("UpdateSession", lambda state: processor.update_config(state, config))

    def run(self, op: Mapping[str, Any]) -> dict[str, Any]:
        kind = op["op"]
        handler = getattr(self, f"_op_{kind}", None)
        if handler is None:
            raise InvalidArgument.for_field("op", f"unknown operation {kind!r}")
        result: dict[str, Any] = {"op": kind, **handler(op)}
        return result

    def _op_observe(self, op: Mapping[str, Any]) -> dict[str, Any]:
        self._observations += 1
        observation, unique_id = observation_from_json(op), f"obs-{self._observations}"
        results: list[processor.ObserveResult] = []

        def observe(state: storage.SessionState) -> storage.SessionState:
            results.append(processor.observe(state, observation, self.kb, unique_id=unique_id))
            encoding.record_predictions(results[-1].state, results[-1].predictions)
            return results[-1].state

        self._commit("Observe", observe)
        r = results[-1]
        if r.auto_learned_pattern:
            self.learned.append(r.auto_learned_pattern)
        out: dict[str, Any] = {
            "stm_length": r.stm_length,
            "time": r.time,
            "auto_learned_pattern": r.auto_learned_pattern,
            "stm": jsonview.events(r.state.stm),
        }
        if op.get("record", True):
            out.update(_predictions_json(r.predictions))
        return out

    def _op_learn(self, op: Mapping[str, Any]) -> dict[str, Any]:
        results: list[processor.LearnResult] = []

        def learn(state: storage.SessionState) -> storage.SessionState:
            results.append(processor.learn(state))
            return results[-1].state

        try:
            self._commit("Learn", learn)
        except KatoError as exc:
            return {"error": exc.code}
        r = results[-1]
        if r.pattern_name:
            self.learned.append(r.pattern_name)
        return {"status": r.status, "pattern_name": r.pattern_name}

    def _op_predictions(self, op: Mapping[str, Any]) -> dict[str, Any]:
        return _predictions_json(processor.predictions(self.state, self.kb))

    def _op_clear_stm(self, op: Mapping[str, Any]) -> dict[str, Any]:
        self._commit("ClearShortTermMemory", processor.clear_stm)
        return {}

    def _op_clear_all(self, op: Mapping[str, Any]) -> dict[str, Any]:
        self.kb.clear()
        self._commit("ClearKnowledgeBase", processor.clear_stm)
        return {}

    def _op_get_pattern(self, op: Mapping[str, Any]) -> dict[str, Any]:
        index = int(op.get("index", -1))
        try:
            name = self.learned[index]
        except IndexError:
            return {"error": "NOT_FOUND"}
        record = self.kb.pattern(strip_pattern_prefix(name))
        if record is None:
            return {"error": "NOT_FOUND"}
        return {"pattern": jsonview.pattern(encoding.pattern_proto(record, NODE_ID))}

    def _op_get_stm(self, op: Mapping[str, Any]) -> dict[str, Any]:
        return {"stm": jsonview.events(self.state.stm)}


def _predictions_json(result: PredictionSet) -> dict[str, Any]:
    """Predictions as the service sends them: the same encoder, then the JSON view."""
    response = svc.GetPredictionsResponse()
    encoding.add_predictions(result, names.pattern_prefix(NODE_ID), response.predictions, response.future_potentials)
    return {
        "predictions": [jsonview.prediction(p) for p in response.predictions],
        "future_potentials": [jsonview.future_potential(f) for f in response.future_potentials],
    }


def replay(scenario: Mapping[str, Any]) -> dict[str, Any]:
    """Replay a scenario; returns ``{"results": [...], "learned_patterns": [...]}``."""
    replayer = Replayer(config_from_json(scenario.get("config", {})))
    results = [replayer.run(op) for op in scenario["operations"]]
    return {"results": results, "learned_patterns": replayer.learned}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kato-replay",
        description="Replay a recorded KATO session through the pure engine on a fresh in-memory "
        "knowledge base and print its results as JSON (the same bytes on every run).",
    )
    parser.add_argument("scenario", help="a scenario file (JSON: config and operations)")
    args = parser.parse_args(argv)
    try:
        with open(args.scenario, encoding="utf-8") as fh:
            scenario = json.load(fh)
        output = replay(scenario)
    except (OSError, ValueError, KeyError) as exc:
        print(f"replay: cannot read scenario: {exc}", file=sys.stderr)
        return 2
    except KatoError as exc:
        print(f"replay: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    json.dump(output, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
