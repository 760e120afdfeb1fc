"""An in-memory knowledge base: the reference semantics of applying PatternWrites.

Used by the replay tool and by unit tests of the core; the MongoDB store applies the same
rules with upserts. Not shared between processes and not durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.knowledge import PatternRecord, SymbolStats, Totals
from kato_grpc.engine.records import merge_metadata, window_emotives
from kato_grpc.v1 import engine_pb2 as pb


class InMemoryKnowledgeBase:
    """One node's KB: patterns, symbol statistics, totals, vectors, and a write ledger."""

    def __init__(self) -> None:
        self.version = 0
        self._patterns: dict[str, PatternRecord] = {}
        self._symbols: dict[str, SymbolStats] = {}
        self._by_symbol: dict[str, set[str]] = {}
        self._totals = Totals()
        self._vectors: dict[str, npt.NDArray[np.float64]] = {}
        self._applied: set[str] = set()

    # --- KnowledgeView -------------------------------------------------------------------

    def totals(self) -> Totals:
        return self._totals

    def symbol(self, symbol: str) -> SymbolStats | None:
        return self._symbols.get(symbol)

    def pattern(self, name: str) -> PatternRecord | None:
        return self._patterns.get(name)

    def all_patterns(self) -> Iterable[PatternRecord]:
        return self._patterns.values()

    def patterns_sharing(self, symbols: Iterable[str]) -> Iterator[PatternRecord]:
        names: set[str] = set()
        for s in symbols:
            names |= self._by_symbol.get(s, set())
        return (self._patterns[n] for n in names)

    def vectors(self) -> tuple[list[str], npt.NDArray[np.float64]]:
        names = list(self._vectors)
        if not names:
            return [], np.empty((0, 0), dtype=np.float64)
        return names, np.vstack([self._vectors[n] for n in names])

    def vector_dimension(self) -> int | None:
        for v in self._vectors.values():
            return len(v)
        return None

    # --- writes --------------------------------------------------------------------------

    def apply(self, write: pb.PatternWrite) -> bool:
        """Apply a PatternWrite once; a write id seen before is ignored. True if applied."""
        if write.write_id and write.write_id in self._applied:
            return False
        if write.write_id:
            self._applied.add(write.write_id)
        for pv in write.vectors:
            # The first indexed vector locks the dimension; a mismatch was rejected at observe.
            dim = self.vector_dimension()
            if dim is None or dim == len(pv.vector.values):
                self._vectors.setdefault(pv.name, np.asarray(pv.vector.values, dtype=np.float64))
        if write.name:
            self._learn(write)
        self.version += 1
        return True

    def _learn(self, write: pb.PatternWrite) -> None:
        old = self._patterns.get(write.name)
        is_new = old is None
        incoming = [dict(r.values) for r in write.emotives]
        metadata = {k: list(v.values) for k, v in write.metadata.items()}
        if old is None:
            record = PatternRecord.build(
                write.name,
                [list(e.symbols) for e in write.events],
                1,
                window_emotives([], incoming, write.persistence),
                metadata,
            )
        else:
            record = PatternRecord.build(
                old.name,
                old.events,
                old.frequency + 1,
                window_emotives(old.emotives, incoming, write.persistence),
                merge_metadata(old.metadata, metadata),
            )
        self._patterns[write.name] = record
        for symbol, count in write.symbol_counts.items():
            stats = self._symbols.get(symbol, SymbolStats())
            affinity = dict(stats.affinity)
            for key, delta in write.affinity_delta.items():
                affinity[key] = affinity.get(key, 0.0) + delta
            self._symbols[symbol] = SymbolStats(
                frequency=stats.frequency + count,
                pattern_member_frequency=stats.pattern_member_frequency + (1 if is_new else 0),
                affinity=affinity,
            )
            self._by_symbol.setdefault(symbol, set()).add(write.name)
        t = self._totals
        self._totals = Totals(
            total_unique_patterns=t.total_unique_patterns + (1 if is_new else 0),
            total_pattern_frequencies=t.total_pattern_frequencies + 1,
            vocabulary_size=len(self._symbols),
        )

    def clear(self) -> None:
        """ClearKnowledgeBase: all data goes, the version moves on (DESIGN 4).

        The ledger of applied write ids stays, so a late retry of an old write cannot
        resurrect a pattern into the wiped KB.
        """
        self._patterns.clear()
        self._symbols.clear()
        self._by_symbol.clear()
        self._vectors.clear()
        self._totals = Totals()
        self.version += 1
