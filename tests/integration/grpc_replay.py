"""Replay a conformance scenario through the gRPC API, in the pure replay's output layout
(KATO's forms: a learned pattern as ``PTRN|<sha1>``, mapped back from its resource name)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from kato_grpc import jsonview, names
from kato_grpc.replay import config_from_json, observation_from_json
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc

_STATUS = {svc.LEARN_STATUS_LEARNED: "LEARNED", svc.LEARN_STATUS_INSUFFICIENT_DATA: "INSUFFICIENT_DATA"}


def replay_grpc(stub: svc_grpc.KatoServiceStub, node_id: str, scenario: Mapping[str, Any]) -> dict[str, Any]:
    session = stub.CreateSession(
        svc.CreateSessionRequest(
            session=svc.Session(
                knowledge_base=names.knowledge_base(node_id), config=config_from_json(scenario.get("config", {}))
            )
        )
    )
    sid = session.name
    learned: list[str] = []
    results: list[dict[str, Any]] = []
    for op in scenario["operations"]:
        kind = op["op"]
        out: dict[str, Any] = {"op": kind}
        if kind == "observe":
            r = stub.Observe(
                svc.ObserveRequest(name=sid, observation=observation_from_json(op), return_predictions=True)
            )
            stm = stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid))
            auto = r.auto_learned_pattern if r.HasField("auto_learned_pattern") else None
            if auto:
                learned.append(auto)
            out |= {
                "stm_length": r.stm_length,
                "time": r.time,
                "auto_learned_pattern": auto and names.kato_pattern_name(auto),
                "stm": jsonview.events(stm.events),
            }
            if op.get("record", True):
                out["predictions"] = [jsonview.prediction(p) for p in r.predictions]
                out["future_potentials"] = [jsonview.future_potential(f) for f in r.future_potentials]
        elif kind == "learn":
            try:
                lr = stub.Learn(svc.LearnRequest(name=sid))
            except grpc.RpcError as exc:
                out["error"] = exc.code().name
            else:
                out |= {"status": _STATUS[lr.status], "pattern_name": names.kato_pattern_name(lr.pattern)}
                if lr.pattern:
                    learned.append(lr.pattern)
        elif kind == "predictions":
            pr = stub.GetPredictions(svc.GetPredictionsRequest(name=sid))
            out["predictions"] = [jsonview.prediction(p) for p in pr.predictions]
            out["future_potentials"] = [jsonview.future_potential(f) for f in pr.future_potentials]
        elif kind == "clear_stm":
            stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
        elif kind == "clear_all":
            stub.ClearKnowledgeBase(svc.ClearKnowledgeBaseRequest(session=sid))
        elif kind == "get_pattern":
            index = int(op.get("index", -1))
            try:
                name = learned[index]
                out["pattern"] = jsonview.pattern(stub.GetPattern(svc.GetPatternRequest(name=name)))
            except IndexError:
                out["error"] = "NOT_FOUND"
            except grpc.RpcError as exc:
                out["error"] = exc.code().name
        elif kind == "get_stm":
            stm = stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid))
            out["stm"] = jsonview.events(stm.events)
        else:
            raise ValueError(f"unknown op {kind}")
        results.append(out)
    return {"results": results, "learned_patterns": [names.kato_pattern_name(n) for n in learned]}
