"""The in-process index of one knowledge base: what a KnowledgeView reads.

Filled either by applying PatternWrites directly (the in-memory KB) or from MongoDB
documents (the per-process KB cache). Symbol -> patterns is an inverted index, so candidate
selection never scans the whole KB.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.knowledge import PatternRecord, SymbolStats, Totals

_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SymbolChange:
    """What one learn does to symbol statistics (spec 1.6, 1.8): +count per distinct symbol,
    +1 pmf when the pattern is new, + the learn's average emotives to its affinity."""

    counts: Mapping[str, int]
    is_new: bool
    affinity: Mapping[str, float]


class KnowledgeIndex:
    """Patterns, symbol statistics, totals and vectors of one KB, versioned."""

    def __init__(self) -> None:
        self.version = 0
        self._patterns: dict[str, PatternRecord] = {}
        self._symbols: dict[str, SymbolStats] = {}
        self._by_symbol: dict[str, set[str]] = {}
        self._totals = Totals()
        self._vectors: dict[str, npt.NDArray[np.float64]] = {}

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

    def postings(self, symbol: str) -> Collection[str]:
        return self._by_symbol.get(symbol, _EMPTY)

    def vectors(self) -> tuple[list[str], npt.NDArray[np.float64]]:
        names = list(self._vectors)
        if not names:
            return [], np.empty((0, 0), dtype=np.float64)
        return names, np.vstack([self._vectors[n] for n in names])

    def vector_dimension(self) -> int | None:
        for v in self._vectors.values():
            return len(v)
        return None

    # --- maintenance ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._patterns)

    def symbol_count(self) -> int:
        return len(self._symbols)

    def put_pattern(self, record: PatternRecord) -> None:
        old = self._patterns.get(record.name)
        if old is not None:
            for s in set(old.flat) - set(record.flat):
                self._by_symbol.get(s, set()).discard(record.name)
        self._patterns[record.name] = record
        for s in set(record.flat):
            self._by_symbol.setdefault(s, set()).add(record.name)

    def remove_pattern(self, name: str) -> None:
        old = self._patterns.pop(name, None)
        if old is not None:
            for s in set(old.flat):
                self._by_symbol.get(s, set()).discard(name)

    def apply_symbol_change(self, change: SymbolChange) -> None:
        """Apply one learn's statistics, in the order given (floats add up in that order)."""
        for symbol, count in change.counts.items():
            stats = self._symbols.get(symbol) or SymbolStats()
            affinity = dict(stats.affinity)
            for key, delta in change.affinity.items():
                affinity[key] = affinity.get(key, 0.0) + delta
            self._symbols[sys.intern(symbol)] = SymbolStats(
                frequency=stats.frequency + count,
                pattern_member_frequency=stats.pattern_member_frequency + (1 if change.is_new else 0),
                affinity=affinity,
            )

    def set_totals(self, totals: Totals) -> None:
        self._totals = totals

    def put_vector(self, name: str, values: Iterable[float]) -> None:
        vector = np.asarray(list(values), dtype=np.float64)
        # The first indexed vector locks the dimension; mismatches were rejected at observe.
        dim = self.vector_dimension()
        if dim is None or dim == len(vector):
            self._vectors.setdefault(name, vector)

    def reset(self) -> None:
        """Drop all data (the version is the caller's business)."""
        self._patterns.clear()
        self._symbols.clear()
        self._by_symbol.clear()
        self._vectors.clear()
        self._totals = Totals()
