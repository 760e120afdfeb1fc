"""The in-process index of one knowledge base: what a KnowledgeView reads.

Filled either by applying PatternWrites directly (the in-memory KB) or from MongoDB
documents (the per-process KB cache). Symbol -> patterns is an inverted index of compact
typed arrays (pattern id, count, first position, event length), handed to the engine as numpy
arrays, so candidate selection never scans the whole KB and screens candidates vectorised.
"""

from __future__ import annotations

import bisect
import itertools
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kato_grpc.engine.knowledge import PatternRecord, PostingArrays, SymbolStats, Totals, name_key
from kato_grpc.stores.postings import Postings


@dataclass(frozen=True, slots=True)
class SymbolChange:
    """What one learn does to symbol statistics (engine.md §1.6, 1.8): +count per distinct symbol,
    +1 pmf when the pattern is new, + the learn's average emotives to its affinity."""

    counts: Mapping[str, int]
    is_new: bool
    affinity: Mapping[str, float]


# Memory per item of an index (tracemalloc over indexes of short and long patterns; see
# docs/performance.md, "KB cache memory"): what a cache budget (KATO_KB_CACHE_MAX_MB) counts.
_TOKENS = itertools.count()
PATTERN_BYTES = 1000
SYMBOL_BYTES = 100
VECTOR_BYTES = 1000
_NO_POSTINGS = PostingArrays(*(np.empty(0, dtype=np.int32) for _ in range(4)))


@dataclass(slots=True)
class IndexParts:
    """Everything an index holds, as plain values (what a snapshot stores: ``snapshot.py``).
    ``records`` is indexed by pattern id, None where a pattern was removed."""

    version: int
    records: list[PatternRecord | None]
    lengths: array[int]
    name_keys: array[int]
    postings: dict[str, PostingArrays]
    symbols: dict[str, SymbolStats]
    vectors: dict[str, npt.NDArray[np.float64]]
    totals: Totals
    stored_symbols: int


class KnowledgeIndex:
    """Patterns, symbol statistics, totals and vectors of one KB, versioned.

    Not thread-safe for writes: the KB cache changes an index only while no engine thread
    reads it (``readers``, counted by the engine runner on the event loop), and otherwise
    changes a ``clone``.
    """

    def __init__(self, singles: dict[str, tuple[str]] | None = None) -> None:
        self.version = 0
        self.readers = 0
        self._token = next(_TOKENS)  # owns the postings it made (see Postings)
        # One tuple per one-symbol event, shared by this KB's records (PatternRecord.build).
        self.singles: dict[str, tuple[str]] = {} if singles is None else singles
        self._symbols: dict[str, SymbolStats] = {}
        # name -> id -> record: one dict entry per pattern (a second dict by name cost ~10 MB
        # per 100k patterns); removed patterns leave None so ids stay stable.
        self._ids: dict[str, int] = {}
        self._records: list[PatternRecord | None] = []
        self._lengths = array("i")
        self._lengths_np: npt.NDArray[np.int32] | None = None
        self._name_keys = array("Q")
        self._name_keys_np: npt.NDArray[np.uint64] | None = None
        self._postings: dict[str, Postings] = {}
        self._totals = Totals()
        self._vectors: dict[str, npt.NDArray[np.float64]] = {}
        self._sorted_symbols: tuple[int, list[str]] | None = None  # (version, symbols in order)
        self.stored_symbols = 0  # symbols of all its patterns' events (the memory estimate's input)

    # --- KnowledgeView -------------------------------------------------------------------

    def totals(self) -> Totals:
        return self._totals

    def symbol(self, symbol: str) -> SymbolStats | None:
        return self._symbols.get(symbol)

    def pattern(self, name: str) -> PatternRecord | None:
        pattern_id = self._ids.get(name)
        return None if pattern_id is None else self._records[pattern_id]

    def all_patterns(self) -> Iterable[PatternRecord]:
        return (r for r in self._records if r is not None)

    def pattern_count(self) -> int:
        return len(self._ids)

    def patterns_sharing(self, symbols: Iterable[str]) -> Iterator[PatternRecord]:
        ids: set[int] = set()
        for s in symbols:
            postings = self._postings.get(s)
            if postings is not None:
                ids.update(postings.ids)
        return (self.pattern_by_id(i) for i in ids)

    def posting_arrays(self, symbol: str) -> PostingArrays:
        postings = self._postings.get(symbol)
        return postings.arrays() if postings is not None else _NO_POSTINGS

    def pattern_lengths(self) -> npt.NDArray[np.int32]:
        if self._lengths_np is None or len(self._lengths_np) != len(self._lengths):
            self._lengths_np = np.array(self._lengths, dtype=np.int32)
        return self._lengths_np

    def name_keys(self) -> npt.NDArray[np.uint64]:
        if self._name_keys_np is None or len(self._name_keys_np) != len(self._name_keys):
            self._name_keys_np = np.array(self._name_keys, dtype=np.uint64)
        return self._name_keys_np

    def pattern_by_id(self, pattern_id: int) -> PatternRecord:
        record = self._records[pattern_id]
        assert record is not None, "a posting points at a removed pattern"
        return record

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
        return len(self._ids)

    def symbol_count(self) -> int:
        return len(self._symbols)

    def vector_count(self) -> int:
        return len(self._vectors)

    def symbols_after(self, after: str | None, limit: int) -> list[tuple[str, SymbolStats]]:
        """Up to ``limit`` symbols in code-point order, after ``after`` (None: from the first).

        The order is sorted once per KB version (O(V log V)), then each page is a bisection.
        """
        if self._sorted_symbols is None or self._sorted_symbols[0] != self.version:
            self._sorted_symbols = (self.version, sorted(self._symbols))
        order = self._sorted_symbols[1]
        start = 0 if after is None else bisect.bisect_right(order, after)
        return [(s, self._symbols[s]) for s in order[start : start + limit]]

    def estimated_bytes(self) -> int:
        """What this index holds in memory, estimated from its patterns and their symbols with
        per-item costs measured on this layout (docs/performance.md, "KB cache memory")."""
        return PATTERN_BYTES * len(self._ids) + SYMBOL_BYTES * self.stored_symbols + VECTOR_BYTES * len(self._vectors)

    def clone(self) -> KnowledgeIndex:
        """A copy that can be changed while this one is being read (postings copied on write)."""
        new = KnowledgeIndex(self.singles)  # tuples are immutable: the table can be shared
        new.version = self.version
        new._symbols = dict(self._symbols)
        new._ids = dict(self._ids)
        new._records = list(self._records)
        new._lengths = array("i", self._lengths)
        new._name_keys = array("Q", self._name_keys)
        new._postings = dict(self._postings)
        new._totals = self._totals
        new._vectors = dict(self._vectors)
        new.stored_symbols = self.stored_symbols
        return new

    def parts(self) -> IndexParts:
        """This index's contents (shared, not copied: read them, do not change them)."""
        return IndexParts(
            version=self.version,
            records=self._records,
            lengths=self._lengths,
            name_keys=self._name_keys,
            postings={s: p.arrays() for s, p in self._postings.items()},
            symbols=self._symbols,
            vectors=self._vectors,
            totals=self._totals,
            stored_symbols=self.stored_symbols,
        )

    @staticmethod
    def from_parts(parts: IndexParts, singles: dict[str, tuple[str]]) -> KnowledgeIndex:
        """An index of these contents (the records' one-symbol events come from ``singles``)."""
        index = KnowledgeIndex(singles)
        index.version = parts.version
        index._records = parts.records
        index._ids = {r.name: i for i, r in enumerate(parts.records) if r is not None}
        index._lengths = parts.lengths
        index._name_keys = parts.name_keys
        index._postings = {s: Postings.of(index._token, p) for s, p in parts.postings.items()}
        index._symbols = parts.symbols
        index._vectors = parts.vectors
        index._totals = parts.totals
        index.stored_symbols = parts.stored_symbols
        return index

    def _own_postings(self, symbol: str) -> Postings:
        postings = self._postings.get(symbol)
        if postings is None:
            postings = self._postings[symbol] = Postings(self._token)
        elif postings.owner != self._token:
            postings = self._postings[symbol] = postings.copy(self._token)
        return postings

    def put_pattern(self, record: PatternRecord) -> None:
        pattern_id = self._ids.get(record.name)
        if pattern_id is not None:
            # Same name, same events (the name is their hash): the postings stand as they are.
            self._records[pattern_id] = record
            return
        pattern_id = len(self._records)
        self._ids[record.name] = pattern_id
        self._records.append(record)
        self.stored_symbols += record.length
        self._lengths.append(record.length)
        self._name_keys.append(name_key(record.name))
        # One pass over the pattern (linear in its length: a 30,000-symbol pattern once cost
        # seconds as ``flat.index`` / ``flat.count`` per distinct symbol); postings are added in
        # the order of each symbol's first occurrence.
        flat = record.flat
        counts = Counter(flat)
        first: dict[str, int] = {}
        for position, symbol in enumerate(flat):
            first.setdefault(symbol, position)
        event_length_at = [len(e) for e in record.events for _ in e]
        for symbol, count in counts.items():
            position = first[symbol]
            self._own_postings(symbol).add(pattern_id, count, position, event_length_at[position])

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

    def drop_patterns(self) -> None:
        """Drop the patterns, keep symbol statistics, totals and vectors (a snapshot whose
        patterns a delete or an update made stale: its statistics still stand)."""
        self._ids.clear()
        self._records.clear()
        self._lengths = array("i")
        self._lengths_np = None
        self._name_keys = array("Q")
        self._name_keys_np = None
        self._postings.clear()
        self.stored_symbols = 0

    def reset(self) -> None:
        """Drop all data (the version is the caller's business)."""
        self.drop_patterns()
        self._symbols.clear()
        self._vectors.clear()
        self._totals = Totals()
