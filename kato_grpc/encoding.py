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
is written here; field numbers come from the generated descriptors. Each distinct event is
encoded once (``EventMemo``: per call, or the service's bounded one across calls), and a
pattern's encoded events serve its past, present, future, sequence and future-potential fields.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from kato_grpc import names
from kato_grpc.engine.ensemble import FutureGroup, Scored
from kato_grpc.engine.knowledge import PatternRecord
from kato_grpc.engine.learning import forget_predictions
from kato_grpc.engine.predict import PredictionSet
from kato_grpc.engine.records import average_emotives, metadata_value
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

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


# What one memo entry costs beyond its bytes (dict slot, bytes header, a share of the key).
ENTRY_OVERHEAD = 160
DEFAULT_MEMO_BYTES = 8 * 1024 * 1024
# A session's stored predictions from this size on are kept zlib-compressed (level 1): about
# 4x smaller in Redis on the benchmark's predictions for ~6 µs of CPU per KB; below it zlib's
# fixed cost outweighs the bytes (docs/performance.md, "The per-call floor").
COMPRESSED_PREDICTIONS_BYTES = 8192
K = TypeVar("K")


class _Bounded(dict[K, bytes]):
    """A dict of encodings that starts over past ``max_bytes`` (0: unbounded)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes, self.size = max_bytes, 0

    def _keep(self, key: K, value: bytes) -> bytes:
        if self.max_bytes:
            self.size += len(value) + ENTRY_OVERHEAD
            if self.size > self.max_bytes:
                self.clear()
                self.size = len(value) + ENTRY_OVERHEAD
        self[key] = value
        return value


class _Symbols(_Bounded[str]):
    """Symbol -> its ``symbols`` field (key, length, UTF-8)."""

    def __missing__(self, symbol: str) -> bytes:
        data = symbol.encode()
        return self._keep(symbol, _SYMBOL_TAG + _length(len(data)) + data)


class EventMemo(_Bounded[tuple[str, ...]]):
    """Event -> its encoding as a field value (length, then body), each distinct event encoded
    once: a KB's patterns share most of their events.

    A pure memo — an event's encoding depends on its symbols alone, so an entry is never
    stale. One per call by default; the service keeps one per process across calls (hot
    patterns are predicted again and again), bounded by ``max_bytes``: past it, the memo
    starts over. Engine threads share it: dict operations are atomic, a race at worst encodes
    an event twice or miscounts the size a little.
    """

    def __init__(self, max_bytes: int = 0) -> None:  # 0: unbounded (one call's memo)
        super().__init__(max_bytes)
        self._symbols = _Symbols(max_bytes // 4)

    def __missing__(self, event: tuple[str, ...]) -> bytes:
        body = b"".join(map(self._symbols.__getitem__, event))
        return self._keep(event, _length(len(body)) + body)


def encode_events(events: Iterable[Sequence[str]], memo: EventMemo | None = None) -> list[bytes]:
    """Each event encoded as a field value; slices of the result give past, present, future."""
    return list(map((memo if memo is not None else EventMemo()).__getitem__, map(tuple, events)))


def join_field(tag: bytes, encoded: Sequence[bytes]) -> bytes:
    """A repeated message field from values encoded by ``encode_events``."""
    return tag + tag.join(encoded) if encoded else b""


_P = pb.Prediction.DESCRIPTOR
_PAST, _PRESENT, _FUTURE, _SEQUENCE = (field_tag(_P, f) for f in ("past", "present", "future", "sequence"))
_MISSING, _EXTRAS = field_tag(_P, "missing"), field_tag(_P, "extras")
_FUTURE_POTENTIAL_FUTURE = field_tag(pb.FuturePotential.DESCRIPTOR, "future")


def add_predictions(
    result: PredictionSet,
    prefix: str,
    predictions: RepeatedCompositeFieldContainer[pb.Prediction],
    futures: RepeatedCompositeFieldContainer[pb.FuturePotential] | None = None,
    memo: EventMemo | None = None,
) -> None:
    """Append the ranked predictions (and, given a field for them, the future potentials).
    ``prefix`` is the knowledge base's ``names.pattern_prefix``: a prediction names its
    pattern by the pattern's resource name."""
    memo = EventMemo() if memo is None else memo
    # A future potential's representative is often a prediction too: its events are at hand.
    encoded: dict[int, list[bytes]] = {}  # id(pattern) -> its events
    for r in result.ranked:
        events = encoded[id(r.match.pattern)] = encode_events(r.match.pattern.events, memo)
        _fill_prediction(predictions.add(**_prediction_fields(r, prefix)), r, events, memo)
    if futures is not None:
        for g in result.futures:
            m = g.representative
            known = encoded.get(id(m.pattern))
            future = known[m.future_start :] if known is not None else encode_events(m.future, memo)
            _fill_future(futures.add(), g, future)


def prediction_proto(r: Scored, prefix: str) -> pb.Prediction:
    """One prediction as a message (tests and tools; responses use ``add_predictions``)."""
    out = pb.Prediction(**_prediction_fields(r, prefix))
    memo = EventMemo()
    _fill_prediction(out, r, encode_events(r.match.pattern.events, memo), memo)
    return out


def future_proto(g: FutureGroup) -> pb.FuturePotential:
    out = pb.FuturePotential()
    _fill_future(out, g, encode_events(g.representative.future))
    return out


def _prediction_fields(r: Scored, prefix: str) -> dict[str, Any]:
    m = r.match
    return dict(
        type=pb.PREDICTION_TYPE_PROTOTYPICAL,
        pattern=prefix + m.name,
        frequency=m.frequency,
        emotives=average_emotives(m.pattern.emotives),
        metadata=json_lists(m.pattern.metadata),
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


def _fill_prediction(out: pb.Prediction, r: Scored, encoded: list[bytes], memo: EventMemo) -> None:
    """The event fields (as wire bytes) and the weighted metrics."""
    m = r.match
    out.MergeFromString(
        b"".join(
            (
                join_field(_PAST, encoded[: m.present_start]),
                join_field(_PRESENT, encoded[m.present_start : m.future_start]),
                join_field(_FUTURE, encoded[m.future_start :]),
                join_field(_MISSING, encode_events(m.missing, memo)),
                join_field(_EXTRAS, encode_events(m.extras, memo)),
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


def _fill_future(out: pb.FuturePotential, g: FutureGroup, future: list[bytes]) -> None:
    out.aggregate_potential = g.aggregate_potential
    out.supporting_patterns = g.supporting_patterns
    out.total_weighted_frequency = g.total_weighted_frequency
    out.MergeFromString(join_field(_FUTURE_POTENTIAL_FUTURE, future))


def pattern_proto(record: PatternRecord, node_id: str) -> pb.Pattern:
    return pb.Pattern(
        name=names.pattern(node_id, record.name),
        events=[pb.Event(symbols=e) for e in record.events],
        length=record.length,
        frequency=record.frequency,
        emotives=[pb.EmotiveRecord(values=e) for e in record.emotives],
        metadata=json_lists(record.metadata),
    )


def json_lists(metadata: Mapping[str, Sequence[str]]) -> dict[str, struct_pb2.ListValue]:
    """Stored metadata (canonical JSON texts) as the JSON values a client sent (D-29)."""
    out = {}
    for key, texts in metadata.items():
        values = struct_pb2.ListValue()
        values.extend(cast(Any, [metadata_value(t) for t in texts]))  # nested lists and dicts too
        out[key] = values
    return out


def record_predictions(
    state: storage.SessionState,
    predictions: PredictionSet,
    memo: EventMemo | None = None,
    *,
    basis: bytes | None = None,
    kb_version: int | None = None,
) -> bytes:
    """Record a call's last predictions in the session state it commits (GetCognitionData
    reads them back; GetPredictions serves them while they are current): once per call, after
    the engine's transition, which left them empty — encoded once, as a GetPredictionsResponse
    (``stored_predictions`` reads it). ``basis`` (``processor.prediction_basis``) and
    ``kb_version``: what they were computed from, when they are exactly what GetPredictions
    would compute for the state's STM and config on that KB version."""
    forget_predictions(state)
    out = svc.GetPredictionsResponse()
    add_predictions(predictions, names.pattern_prefix(state.node_id), out.predictions, out.future_potentials, memo)
    encoded = out.SerializeToString()
    if encoded:
        _keep(state, encoded)
    if basis is not None and kb_version is not None:
        state.predictions_basis.kb_version = kb_version
        state.predictions_basis.digest = basis
    return encoded


# An encoded GetPredictionsResponse's top-level keys, and an ObserveResponse's for the same
# fields (both length-delimited): ``observe_predictions`` swaps one for the other.
_OBSERVE_KEYS = {
    field_tag(svc.GetPredictionsResponse.DESCRIPTOR, name)[0]: field_tag(svc.ObserveResponse.DESCRIPTOR, name)
    for name in ("predictions", "future_potentials")
}


def observe_predictions(encoded: bytes) -> bytes:
    """An encoded GetPredictionsResponse (``record_predictions``' return) as the predictions
    and future potentials of an encoded ObserveResponse, to merge into one: the call that
    recorded them answers with them without encoding them twice. Walks only the top-level
    entries (a key byte, a length, the body each)."""
    out = []
    i, n = 0, len(encoded)
    while i < n:
        key = _OBSERVE_KEYS[encoded[i]]  # field numbers 1 and 2: one key byte each
        j = i + 1
        length = shift = 0
        while True:
            byte = encoded[j]
            length |= (byte & 0x7F) << shift
            j += 1
            if byte < 0x80:
                break
            shift += 7
        out.append(key)
        out.append(encoded[i + 1 : j + length])
        i = j + length
    return b"".join(out)


def _keep(state: storage.SessionState, encoded: bytes) -> None:
    """Store an encoded GetPredictionsResponse in the state: compressed when it is large."""
    if len(encoded) >= COMPRESSED_PREDICTIONS_BYTES:
        state.last_prediction_set_zlib = zlib.compress(encoded, 1)
    else:
        state.last_prediction_set = encoded


def stored_predictions(state: storage.SessionState) -> svc.GetPredictionsResponse:
    """The predictions (and future potentials) a session keeps; a session an older server
    stored has its predictions in ``last_predictions`` instead."""
    if state.last_prediction_set_zlib:
        return svc.GetPredictionsResponse.FromString(zlib.decompress(state.last_prediction_set_zlib))
    if state.last_prediction_set:
        return svc.GetPredictionsResponse.FromString(state.last_prediction_set)
    return svc.GetPredictionsResponse(predictions=state.last_predictions)


def cut_predictions(state: storage.SessionState, limit: int) -> None:
    """Make the state's encoding at most ``limit`` bytes by what it keeps of its last
    predictions: a cut copy is no longer GetPredictions' whole answer, so the basis and the
    future potentials go first (GetCognitionData shows only the predictions), then the
    lowest-ranked predictions until it fits (or none is left). A compressed copy shrinks by
    less than what is dropped from it: the excess is scaled by its compression ratio, a pass
    or two."""
    kept = stored_predictions(state)
    del kept.future_potentials[:]
    forget_predictions(state)
    if kept.predictions:
        _keep(state, kept.SerializeToString())
    while kept.predictions and state.ByteSize() > limit:
        plain = kept.ByteSize()
        stored = len(state.last_prediction_set_zlib) or plain
        excess = (state.ByteSize() - limit) * plain / max(1, stored)  # in encoded bytes
        while kept.predictions and excess > 0:
            body = kept.predictions[-1].ByteSize()
            excess -= 1 + (body.bit_length() + 6) // 7 + body  # the element's tag, length and body
            del kept.predictions[-1]
        forget_predictions(state)
        if kept.predictions:
            _keep(state, kept.SerializeToString())


def cognition_data(state: storage.SessionState) -> svc.GetCognitionDataResponse:
    """KATO's cognition view of a session (docs/engine.md §5.6), from its stored state."""
    out = svc.GetCognitionDataResponse(
        predictions=stored_predictions(state).predictions,
        symbols=[s for e in state.stm for s in e.symbols],
        short_term_memory=state.stm,
        time=state.time,
    )
    if state.emotives_accumulator:
        out.emotives.update(state.emotives_accumulator[-1].values)
    return out
