"""The read-only view of a knowledge base that the pure engine computes against.

The shell builds it (from its in-process KB cache, or the in-memory store in tests); the
core only reads it. Records are immutable plain-Python values so that prediction loops do
not pay protobuf attribute costs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

Events = tuple[tuple[str, ...], ...]
_NO_METADATA: Mapping[str, tuple[str, ...]] = MappingProxyType({})


def _single(shared: dict[str, tuple[str]], symbol: str) -> tuple[str]:
    event = shared.get(symbol)
    if event is None:
        event = shared[symbol] = (symbol,)
    return event


@dataclass(frozen=True, slots=True)
class PatternRecord:
    """One learned pattern as the engine sees it."""

    name: str  # bare 40-hex
    events: Events
    frequency: int
    emotives: tuple[Mapping[str, float], ...] = ()
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    flat: tuple[str, ...] = ()

    @staticmethod
    def build(
        name: str,
        events: Sequence[Sequence[str]],
        frequency: int,
        emotives: Sequence[Mapping[str, float]] = (),
        metadata: Mapping[str, Sequence[str]] | None = None,
        singles: dict[str, tuple[str]] | None = None,
    ) -> PatternRecord:
        """``singles`` shares one tuple per one-symbol event (about half of all events in
        typical KBs) between the records built with it: a KB's index keeps one such table,
        so its lifetime and size are the KB's (no process-wide cache)."""
        # Interned symbols: a KB repeats a small alphabet across many patterns, and one str
        # object per symbol (not per occurrence) is most of a cached pattern's memory.
        shared = {} if singles is None else singles
        evs = tuple(_single(shared, sys.intern(e[0])) if len(e) == 1 else tuple(map(sys.intern, e)) for e in events)
        return PatternRecord(
            name=name,
            events=evs,
            frequency=frequency,
            emotives=tuple(dict(e) for e in emotives) if emotives else (),
            metadata={k: tuple(v) for k, v in metadata.items()} if metadata else _NO_METADATA,
            flat=tuple(s for e in evs for s in e),
        )

    @property
    def length(self) -> int:
        return len(self.flat)


class PostingArrays(NamedTuple):
    """The patterns containing one symbol, as parallel arrays (one entry per pattern)."""

    ids: npt.NDArray[np.int32]  # pattern ids (see KnowledgeView.pattern_by_id)
    counts: npt.NDArray[np.int32]  # occurrences of the symbol in the pattern
    positions: npt.NDArray[np.int32]  # flat position of its first occurrence
    event_lengths: npt.NDArray[np.int32]  # length of the event holding that occurrence


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """Statistics of one symbol (engine.md §1.8, HEAD rules)."""

    frequency: int = 0
    pattern_member_frequency: int = 0
    affinity: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Totals:
    """KB-wide counters (D-6)."""

    total_unique_patterns: int = 0  # N
    total_pattern_frequencies: int = 0  # sum of frequencies over the KB
    vocabulary_size: int = 0  # V: distinct symbols ever learned


@dataclass(frozen=True, slots=True)
class VectorNeighbour:
    name: str
    distance: float


def name_key(name: str) -> int:
    """The first 8 bytes of a name's UTF-8, zero-padded, as a big-endian integer.

    Ordering by these keys never contradicts ordering by name (UTF-8 bytes sort like code
    points), so a tie-break by name only needs the full names where keys are equal.
    """
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "big")


class KnowledgeView(Protocol):
    """What the engine may read of a knowledge base."""

    def totals(self) -> Totals: ...

    def symbol(self, symbol: str) -> SymbolStats | None: ...

    def pattern(self, name: str) -> PatternRecord | None: ...

    def all_patterns(self) -> Iterable[PatternRecord]:
        """Every pattern (threshold-0 predictions)."""
        ...

    def pattern_count(self) -> int:
        """How many patterns the KB holds."""
        ...

    def patterns_sharing(self, symbols: Iterable[str]) -> Iterable[PatternRecord]:
        """Every pattern that contains at least one of ``symbols`` (each once)."""
        ...

    def posting_arrays(self, symbol: str) -> PostingArrays:
        """The patterns that contain ``symbol``, as arrays."""
        ...

    def pattern_lengths(self) -> npt.NDArray[np.int32]:
        """Length of every pattern, indexed by pattern id."""
        ...

    def pattern_by_id(self, pattern_id: int) -> PatternRecord:
        """The pattern of an id taken from ``posting_arrays``."""
        ...

    def name_keys(self) -> npt.NDArray[np.uint64]:
        """``name_key`` of every pattern's name, indexed by pattern id."""
        ...

    def vectors(self) -> tuple[Sequence[str], npt.NDArray[np.float64]]:
        """The indexed vectors: their names and one row per name (shape (n, dimension))."""
        ...

    def vector_dimension(self) -> int | None:
        """The dimension the KB's vector index is locked to, or None when it is empty."""
        ...
