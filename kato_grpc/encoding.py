"""Engine values as protobuf messages: predictions, future potentials, patterns.

The engine computes plain values (``engine.predict.PredictionSet``, ``PatternRecord``); this
module is the one place they become messages — for a response (GetPredictions, Observe with
``return_predictions``, the KB reads) and for the session state's record of the last
predictions, which the Observe transition writes with the same function. There is one build
path, ``add_predictions``, and it builds straight into the repeated field that holds the
result: a response made of hundreds of messages built apart would copy each one once more.

Events go out as protobuf wire bytes. Creating one ``Event`` message per event (six event
fields per prediction, plus a future per group) was most of the cost of building a response;
the same fields written as bytes and merged in one ``MergeFromString`` give an identical
message at a fraction of the cost (tests compare the two). Only the length-delimited framing
is written here; field numbers come from the generated descriptors. Nothing is cached across
calls: within one call a pattern's events are encoded once and shared by its past, present,
future, sequence and future-potential fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from kato_grpc.engine.ensemble import FutureGroup, Scored
from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.engine.naming import PATTERN_PREFIX
from kato_grpc.engine.predict import PredictionSet
from kato_grpc.engine.records import average_emotives
from kato_grpc.v1 import engine_pb2 as pb

_LENGTH_DELIMITED = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_varint(n) for n in range(128))


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 128 else _varint(n)


def field_tag(message: Descriptor, field: str) -> bytes:
    """The key of a length-delimited field of ``message``, from its descriptor."""
    return _varint(message.fields_by_name[field].number << 3 | _LENGTH_DELIMITED)


_SYMBOL_TAG = field_tag(pb.Event.DESCRIPTOR, "symbols")


def _event(event: Sequence[str]) -> bytes:
    """One ``Event`` as the value of a length-delimited field: its length, then its body."""
    parts = []
    for symbol in event:
        data = symbol.encode()
        parts.append(_SYMBOL_TAG + _length(len(data)) + data)
    body = b"".join(parts)
    return _length(len(body)) + body


def encode_events(events: Sequence[Sequence[str]]) -> list[bytes]:
    """Each event encoded as a field value; slices of the result give past, present, future."""
    return [_event(e) for e in events]


def join_field(tag: bytes, encoded: Sequence[bytes]) -> bytes:
    """A repeated message field from values encoded by ``encode_events``."""
    return tag + tag.join(encoded) if encoded else b""


_P = pb.Prediction.DESCRIPTOR
_PAST, _PRESENT, _FUTURE, _SEQUENCE = (field_tag(_P, f) for f in ("past", "present", "future", "sequence"))
_MISSING, _EXTRAS = field_tag(_P, "missing"), field_tag(_P, "extras")
_FUTURE_POTENTIAL_FUTURE = field_tag(pb.FuturePotential.DESCRIPTOR, "future")


def add_predictions(
    result: PredictionSet,
    predictions: RepeatedCompositeFieldContainer[pb.Prediction],
    futures: RepeatedCompositeFieldContainer[pb.FuturePotential] | None = None,
) -> None:
    """Append the ranked predictions (and, given a field for them, the future potentials)."""
    encoded: dict[int, list[bytes]] = {}  # id(pattern) -> its events, for this call only

    def events_of(record: PatternRecord) -> list[bytes]:
        found = encoded.get(id(record))
        if found is None:
            found = encoded[id(record)] = encode_events(record.events)
        return found

    for r in result.ranked:
        _fill_prediction(predictions.add(**_prediction_fields(r)), r, events_of(r.match.pattern))
    if futures is not None:
        for g in result.futures:
            _fill_future(futures.add(), g, events_of(g.representative.pattern))


def prediction_proto(r: Scored) -> pb.Prediction:
    """One prediction as a message (tests and tools; responses use ``add_predictions``)."""
    out = pb.Prediction(**_prediction_fields(r))
    _fill_prediction(out, r, encode_events(r.match.pattern.events))
    return out


def future_proto(g: FutureGroup) -> pb.FuturePotential:
    out = pb.FuturePotential()
    _fill_future(out, g, encode_events(g.representative.pattern.events))
    return out


def _prediction_fields(r: Scored) -> dict[str, Any]:
    m = r.match
    return dict(
        type="prototypical",
        name=m.name,
        frequency=m.frequency,
        emotives=average_emotives(m.pattern.emotives),
        metadata={k: pb.StringList(values=v) for k, v in m.pattern.metadata.items()},
        matches=m.matches,
        anomalies=[pb.Anomaly(observed=a.observed, expected=a.expected, similarity=a.similarity) for a in m.anomalies],
        similarity=m.similarity,
        evidence=m.evidence,
        confidence=m.confidence,
        snr=m.snr,
        fragmentation=m.fragmentation,
        itfdf_similarity=r.itfdf_similarity,
        confluence=r.confluence,
        entropy=r.entropy,
        normalized_entropy=r.normalized_entropy,
        global_normalized_entropy=r.global_normalized_entropy,
        tfidf_score=r.tfidf_score,
        pattern_probability=r.pattern_probability,
        weighted_strength=r.weighted_strength,
        predictive_information=r.predictive_information,
        bayesian_prior=r.bayesian_prior,
        bayesian_likelihood=r.bayesian_likelihood,
        bayesian_posterior=r.bayesian_posterior,
        potential=r.potential,
    )


def _fill_prediction(out: pb.Prediction, r: Scored, encoded: list[bytes]) -> None:
    """The event fields (as wire bytes) and the weighted metrics."""
    m = r.match
    out.MergeFromString(
        b"".join(
            (
                join_field(_PAST, encoded[: m.present_start]),
                join_field(_PRESENT, encoded[m.present_start : m.future_start]),
                join_field(_FUTURE, encoded[m.future_start :]),
                join_field(_MISSING, encode_events(m.missing)),
                join_field(_EXTRAS, encode_events(m.extras)),
                join_field(_SEQUENCE, encoded),
            )
        )
    )
    if m.weighted is not None:
        if m.weighted.similarity is not None:
            out.weighted_similarity = m.weighted.similarity
        out.weighted_evidence = m.weighted.evidence
        out.weighted_confidence = m.weighted.confidence
        out.weighted_snr = m.weighted.snr


def _fill_future(out: pb.FuturePotential, g: FutureGroup, encoded: list[bytes]) -> None:
    out.aggregate_potential = g.aggregate_potential
    out.supporting_patterns = g.supporting_patterns
    out.total_weighted_frequency = g.total_weighted_frequency
    out.MergeFromString(join_field(_FUTURE_POTENTIAL_FUTURE, encoded[g.representative.future_start :]))


def pattern_proto(record: PatternRecord) -> pb.Pattern:
    return pb.Pattern(
        name=PATTERN_PREFIX + record.name,
        events=[pb.Event(symbols=e) for e in record.events],
        length=record.length,
        frequency=record.frequency,
        emotives=[pb.EmotiveRecord(values=e) for e in record.emotives],
        metadata={k: pb.StringList(values=v) for k, v in record.metadata.items()},
    )
