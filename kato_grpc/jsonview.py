"""Plain-JSON views of engine messages, in the layout of the conformance scenarios: KATO's
forms, so a pattern's resource name becomes its bare sha1 in a prediction and ``PTRN|<sha1>``
in a pattern (``names.pattern_id`` / ``names.kato_pattern_name``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from kato_grpc import names
from kato_grpc.engine.records import canonical_json, metadata_value
from kato_grpc.v1 import engine_pb2 as pb

_FLOAT_FIELDS = (
    "similarity",
    "evidence",
    "confidence",
    "snr",
    "fragmentation",
    "itfdf_similarity",
    "confluence",
    "entropy",
    "normalized_entropy",
    "global_normalized_entropy",
    "tfidf_score",
    "pattern_probability",
    "weighted_strength",
    "predictive_information",
    "bayesian_prior",
    "bayesian_likelihood",
    "bayesian_posterior",
    "potential",
)
# KATO's names for the prediction types.
_TYPES = {pb.PREDICTION_TYPE_PROTOTYPICAL: "prototypical", pb.PREDICTION_TYPE_UNSPECIFIED: ""}
_OPTIONAL_FIELDS = ("weighted_similarity", "weighted_evidence", "weighted_confidence", "weighted_snr")


def events(evs: Iterable[pb.Event]) -> list[list[str]]:
    return [list(e.symbols) for e in evs]


def json_lists(m: Any) -> dict[str, list[Any]]:
    """key -> JSON values (D-29); integral numbers as integers, as their canonical text says."""
    return {k: [_json_value(x) for x in v.values] for k, v in sorted(m.items())}


def _json_value(value: Any) -> Any:
    return metadata_value(canonical_json(json_format.MessageToDict(value)))


def prediction(p: pb.Prediction) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _TYPES[p.type],
        "name": names.pattern_id(p.pattern),
        "frequency": p.frequency,
        "emotives": dict(sorted(p.emotives.items())),
        "metadata": json_lists(p.metadata),
        "matches": list(p.matches),
        "past": events(p.past),
        "present": events(p.present),
        "future": events(p.future),
        "missing": events(p.missing),
        "extras": events(p.extras),
        "anomalies": [
            {"observed": a.observed, "expected": a.expected, "similarity": a.similarity} for a in p.anomalies
        ],
        "sequence": events(p.sequence),
    }
    for name in _FLOAT_FIELDS:
        out[name] = getattr(p, name)
    for name in _OPTIONAL_FIELDS:
        out[name] = getattr(p, name) if p.HasField(name) else None  # type: ignore[arg-type]
    return out


def future_potential(f: pb.FuturePotential) -> dict[str, Any]:
    return {
        "future": events(f.future),
        "aggregate_potential": f.aggregate_potential,
        "supporting_patterns": f.supporting_patterns,
        "total_weighted_frequency": f.total_weighted_frequency,
    }


def pattern(p: pb.Pattern) -> dict[str, Any]:
    return {
        "name": names.kato_pattern_name(p.name),
        "events": events(p.events),
        "length": p.length,
        "frequency": p.frequency,
        "emotives": [dict(sorted(e.values.items())) for e in p.emotives],
        "metadata": json_lists(p.metadata),
    }
