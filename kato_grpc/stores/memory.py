"""An in-memory knowledge base: the reference semantics of applying a PatternWrite.

Used by the replay tool and by unit tests of the core; the MongoDB store applies the same
rules with upserts in a transaction. Not shared between processes and not durable.
"""

from __future__ import annotations

from collections.abc import Sequence

from kato_grpc.engine import importing
from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.engine.records import merge_metadata, window_emotives
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.index import KnowledgeIndex, SymbolChange
from kato_grpc.stores.mongo_docs import learns
from kato_grpc.stores.protocols import Applied


class InMemoryKnowledgeBase(KnowledgeIndex):
    """One node's KB with a ledger of applied write ids (exactly-once, like the MongoDB one)."""

    def __init__(self) -> None:
        super().__init__()
        self._applied: set[str] = set()

    def apply(self, write: storage.PatternWrite) -> bool:
        """Apply a PatternWrite once; a write id seen before is ignored. True if applied."""
        if write.write_id and write.write_id in self._applied:
            return False
        if write.write_id:
            self._applied.add(write.write_id)
        for pv in write.vectors:
            self.put_vector(pv.name, pv.vector.values)
        if write.name:
            self._learn(write)
        self.version += 1
        return True

    def check_counters(self, writes: Sequence[storage.PatternWrite]) -> None:
        """CounterLimit when the writes not applied yet would take a counter past the bound
        an import may raise it to (D-30)."""
        todo = [w for w in writes if not (w.write_id and w.write_id in self._applied)]
        if not any(w.frequency for w in todo):
            return
        frequencies = {w.name: p.frequency for w in todo if (p := self.pattern(w.name)) is not None}
        symbols = sum(stats.frequency for _, stats in self.symbols_after(None, self.symbol_count()))
        importing.check_counters(
            todo, importing.Counters(frequencies, self.totals().total_pattern_frequencies, symbols)
        )

    def _learn(self, write: storage.PatternWrite) -> None:
        old = self.pattern(write.name)
        is_new = old is None
        incoming = [dict(r.values) for r in write.emotives]
        metadata = {k: list(v.values) for k, v in write.metadata.items()}
        if old is None:
            record = PatternRecord.build(
                write.name,
                [list(e.symbols) for e in write.events],
                learns(write),
                window_emotives([], incoming, write.persistence),
                merge_metadata({}, metadata),
                self.singles,
            )
        else:
            record = PatternRecord.build(
                old.name,
                old.events,
                old.frequency + learns(write),
                window_emotives(old.emotives, incoming, write.persistence),
                merge_metadata(old.metadata, metadata),
                self.singles,
            )
        self.put_pattern(record)
        self.apply_symbol_change(
            SymbolChange(counts=dict(write.symbol_counts), is_new=is_new, affinity=dict(write.affinity_delta))
        )
        t = self.totals()
        self.set_totals(
            Totals(
                total_unique_patterns=t.total_unique_patterns + (1 if is_new else 0),
                total_pattern_frequencies=t.total_pattern_frequencies + learns(write),
                vocabulary_size=self.symbol_count(),
            )
        )

    def clear(self) -> None:
        """ClearKnowledgeBase: all data goes, the version moves on (architecture.md §4).

        The ledger of applied write ids stays, so a late retry of an old write cannot
        resurrect a pattern into the wiped KB.
        """
        self.reset()
        self.version += 1


class InMemoryPatternStore:
    """The pattern store's in-memory twin: one InMemoryKnowledgeBase per node, the same
    exactly-once ledger per KB. Refuses nothing, so it keeps no dead letters."""

    def __init__(self) -> None:
        self._kbs: dict[str, InMemoryKnowledgeBase] = {}

    def kb(self, kb_id: str) -> InMemoryKnowledgeBase:
        return self._kbs.setdefault(kb_id, InMemoryKnowledgeBase())

    async def apply_many(self, kb_id: str, writes: Sequence[storage.PatternWrite]) -> Applied:
        kb = self.kb(kb_id)
        kb.check_counters(writes)  # all or nothing, like the MongoDB store's transaction
        return Applied(sum(kb.apply(w) for w in writes), kb.version)

    async def dead_letter(self, kb_id: str, write: storage.PatternWrite, error: BaseException) -> None:
        raise AssertionError("the in-memory pattern store refuses no write")

    def is_permanent(self, error: BaseException) -> bool:
        return False
