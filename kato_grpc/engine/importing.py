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
from dataclasses import dataclass

from kato_grpc.engine.naming import pattern_name
from kato_grpc.engine.records import average_emotives, canonical_values
from kato_grpc.errors import CounterLimit
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import engine_pb2 as pb

# What an import or an UpdatePattern may set or raise a counter to (D-30): exact in JSON and
# JavaScript numbers, and 2^63 − 2^53 learns below the stored 64-bit counters, so that no
# import can leave a knowledge base where learning fails.
MAX_SET_COUNT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Counters:
    """A KB's counters before a batch: the frequencies of the patterns the batch names (absent:
    new), its total frequency and the sum of its symbols' frequencies (which bounds each)."""

    frequencies: Mapping[str, int]
    total_pattern_frequencies: int
    symbol_frequencies: int


def check_counters(writes: Sequence[storage.PatternWrite], before: Counters) -> None:
    """CounterLimit at the first imported write (one with a frequency) after which a counter
    would pass MAX_SET_COUNT: the pattern's frequency, the KB's total frequency or its symbol
    frequencies. Learns (frequency 0: one each) only need the 64-bit headroom this leaves."""
    frequencies = dict(before.frequencies)
    total, symbols = before.total_pattern_frequencies, before.symbol_frequencies
    for position, write in enumerate(writes):
        if not write.name:
            continue
        learns = write.frequency or 1
        frequencies[write.name] = frequencies.get(write.name, 0) + learns
        total += learns
        symbols += sum(write.symbol_counts.values())
        if not write.frequency:
            continue
        for counter, value in (
            ("frequency", frequencies[write.name]),
            ("total_pattern_frequencies", total),
            ("symbol_frequencies", symbols),
        ):
            if value > MAX_SET_COUNT:
                raise CounterLimit(
                    f"importing it would take the knowledge base's {_COUNTERS[counter]} to {value:,}; an import "
                    f"may raise a counter to at most {MAX_SET_COUNT:,} (2^53 - 1): nothing of the batch was applied",
                    position=position,
                    counter=counter,
                    value=value,
                    bound=MAX_SET_COUNT,
                )


_COUNTERS = {
    "frequency": "pattern's frequency",
    "total_pattern_frequencies": "total pattern frequency",
    "symbol_frequencies": "sum of symbol frequencies",
}


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
