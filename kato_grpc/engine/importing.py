"""An imported pattern as the learns it stands for (docs/formats.md): pure, like learning.

A pattern imported with frequency ``f`` counts as ``f`` learns of its events: the pattern's
frequency and the KB's total frequency grow by ``f``, each symbol's frequency by ``f`` times
its count, its pattern-member frequency by one when the pattern is new. Symbol statistics are
derived here from the events, never taken from a file. Affinity: the pattern's symbols get
what its learns added (the export keeps that sum per pattern); for a pattern exported without
it (learned before it was kept), each of the ``f`` learns is taken to carry the average of the
pattern's emotive window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import average_emotives, canonical_values
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb


def pattern_write(pattern: pb.Pattern, affinity: Mapping[str, float], field: str) -> storage.PatternWrite:
    """The write of one imported pattern (checked by the caller: events, sizes, frequency)."""
    events = [list(e.symbols) for e in pattern.events]
    frequency = pattern.frequency or 1
    records = [dict(r.values) for r in pattern.emotives]
    write = storage.PatternWrite(
        name=pattern_name(events),
        events=[pb.Event(symbols=e) for e in events],
        emotives=[pb.EmotiveRecord(values=r) for r in records],
        persistence=len(records),
        frequency=frequency,
    )
    write.symbol_counts.update({s: n * frequency for s, n in Counter(s for e in events for s in e).items()})
    write.affinity_delta.update(affinity or {k: v * frequency for k, v in average_emotives(records).items()})
    for key, values in pattern.metadata.items():
        write.metadata[key].values.extend(canonical_values(values, f"{field}.metadata.{key}"))
    return write


def vector_write(vectors: Sequence[tuple[str, Sequence[float]]]) -> storage.PatternWrite:
    """One write adding vectors to the KB's vector index."""
    return storage.PatternWrite(
        vectors=[storage.PendingVector(name=n, vector=pb.Vector(values=list(v))) for n, v in vectors]
    )
