"""The documents of the pattern store: how a PatternWrite becomes MongoDB documents and
operations, and how documents become the records the KB cache indexes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from pymongo import UpdateOne

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.engine.records import canonical_json, kept_affinity, merge_metadata, window_emotives
from kato_grpc.internal.v1 import session_pb2 as storage

Doc = dict[str, Any]
# A symbol_log document holds the learns of one batch; past this many bytes of symbols it is
# split in parts (MongoDB documents end at 16 MiB).
SYMBOL_LOG_PART_BYTES = 4 * 1024 * 1024


# What a PatternRecord is built from: decoding nothing else keeps a large refresh's garbage
# (and the heap fragmentation it leaves behind) small.
RECORD_FIELDS = {"_id": 0, "name": 1, "events": 1, "frequency": 1, "emotives": 1, "metadata": 1}


def pattern_from_doc(doc: Mapping[str, Any], singles: dict[str, tuple[str]] | None = None) -> PatternRecord:
    metadata: dict[str, set[str]] = {}
    for key, value in doc.get("metadata", []):
        metadata.setdefault(key, set()).add(_canonical(value))
    return PatternRecord.build(
        doc["name"],
        doc["events"],
        int(doc.get("frequency", 0)),
        [{k: float(v) for k, v in record} for record in doc.get("emotives", [])],
        {k: sorted(v) for k, v in metadata.items()},
        singles,
    )


def _canonical(stored: str) -> str:
    """A stored metadata value as canonical JSON (D-29). Values stored before D-29 are Python
    ``str()`` texts: one that parses as JSON is read as that value (``3``, ``[1, 2]``), any
    other as a string (``hello``, ``True``) — what a string value was stored as."""
    try:
        return canonical_json(json.loads(stored))
    except ValueError:
        return canonical_json(stored)


def totals_from_doc(doc: Mapping[str, Any] | None) -> Totals:
    if not doc:
        return Totals()
    return Totals(
        total_unique_patterns=int(doc.get("total_unique_patterns", 0)),
        total_pattern_frequencies=int(doc.get("total_pattern_frequencies", 0)),
        # The vocabulary is the number of distinct symbols: the cache counts it itself.
        vocabulary_size=0,
    )


def symbol_log_parts(
    kb_id: str, version: int, learns: Sequence[storage.PatternWrite], new_flags: Sequence[bool]
) -> list[Doc]:
    """A batch's symbol-statistics log: one document, or several parts (in order) when its
    symbols would make one too large."""
    parts: list[Doc] = []
    current: list[Doc] = []
    size = 0
    for w, is_new in zip(learns, new_flags, strict=True):
        entry_bytes = sum(len(k) + 16 for k in w.symbol_counts) + sum(len(k) + 16 for k in w.affinity_delta)
        if current and size + entry_bytes > SYMBOL_LOG_PART_BYTES:
            parts.append({"kb_id": kb_id, "kb_version": version, "part": len(parts), "learns": current})
            current, size = [], 0
        current.append(
            {
                "c": sorted([k, v] for k, v in w.symbol_counts.items()),
                "n": is_new,
                "a": sorted([k, v] for k, v in w.affinity_delta.items()),
            }
        )
        size += entry_bytes
    parts.append({"kb_id": kb_id, "kb_version": version, "part": len(parts), "learns": current})
    return parts


# The empty emotive name as a field name: an update path may not end in an empty one
# ("affinity." is refused), and a lone "%" is no other name's encoding ("%" is always "%25").
EMPTY_KEY = "%"


def field_key(key: str) -> str:
    """An emotive name as a MongoDB field name ("." and a leading "$" would be paths and
    operators, "" no field at all): "%", "." and "$" percent-encoded, "" as a lone "%";
    reversibly."""
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24") if key else EMPTY_KEY


def affinity_from_doc(doc: Mapping[str, Any]) -> dict[str, float]:
    """What a pattern's learns added to its symbols' affinity (kept since the export format).
    A pattern created before the empty name was encoded may hold it under "" as well as
    "%": both are its accumulations, added up."""
    out: dict[str, float] = {}
    for k, v in doc.get("affinity", {}).items():
        name = "" if k == EMPTY_KEY else unquote(k)
        out[name] = out.get(name, 0.0) + float(v)
    return out


def exported_pattern(doc: Mapping[str, Any]) -> tuple[PatternRecord, dict[str, float]]:
    """A pattern document as an export has it: the record and what its learns added to affinity."""
    return pattern_from_doc(doc), affinity_from_doc(doc)


def learns(write: storage.PatternWrite) -> int:
    """How many learns a write counts for (an import's pattern: its frequency)."""
    return write.frequency or 1


@dataclass(slots=True)
class Accumulated:
    """What a pattern's learns accumulate in its document: its emotive window, its metadata
    (canonical texts) and the emotive names whose affinity it keeps."""

    emotives: list[dict[str, float]] = field(default_factory=list)
    metadata: dict[str, list[str]] = field(default_factory=dict)
    affinity: set[str] = field(default_factory=set)


def accumulated(doc: Mapping[str, Any] | None) -> Accumulated:
    """A pattern document's accumulations (empty for None)."""
    if doc is None:
        return Accumulated()
    record = pattern_from_doc({"name": "", "events": [], **doc})
    return Accumulated(
        [dict(r) for r in record.emotives],
        {k: list(v) for k, v in record.metadata.items()},
        set(affinity_from_doc(doc)),
    )


def accumulate(before: Accumulated, write: storage.PatternWrite) -> tuple[Accumulated, dict[str, float]]:
    """What a pattern holds after a learn adds its emotive records, metadata and affinity —
    the rules of engine.md §1.6, §1.7 and their bounds (D-31), the same as the in-memory
    KB's — and the affinity it adds."""
    incoming = [dict(r.values) for r in write.emotives]
    metadata = {k: list(v.values) for k, v in write.metadata.items()}
    affinity = kept_affinity(before.affinity, write.affinity_delta)
    after = Accumulated(
        window_emotives(before.emotives, incoming, write.persistence),
        merge_metadata(before.metadata, metadata),
        before.affinity | set(affinity),
    )
    return after, affinity


def _emotive_docs(emotives: Sequence[Mapping[str, float]]) -> list[list[list[Any]]]:
    return [sorted([k, v] for k, v in r.items()) for r in emotives]


def _metadata_docs(metadata: Mapping[str, Sequence[str]]) -> list[list[str]]:
    return [[k, v] for k in sorted(metadata) for v in metadata[k]]


def pattern_doc(
    kb_id: str, write: storage.PatternWrite, version: int, after: Accumulated, affinity: Mapping[str, float]
) -> Doc:
    """The document a first learn creates; ``after`` and ``affinity``: what it accumulates
    (``accumulate``)."""
    events = [list(e.symbols) for e in write.events]
    return {
        "kb_id": kb_id,
        "name": write.name,
        "events": events,
        "length": sum(len(e) for e in events),
        "frequency": learns(write),
        "kb_version": version,
        "emotives": _emotive_docs(after.emotives),
        "metadata": _metadata_docs(after.metadata),
        "affinity": {field_key(k): v for k, v in affinity.items()},
    }


def pattern_op(
    kb_id: str, write: storage.PatternWrite, version: int, after: Accumulated | None, affinity: Mapping[str, float]
) -> UpdateOne:
    """A learn of a pattern the KB has. ``after``: its accumulations once this learn added to
    them (None: it adds no emotives or metadata), set whole rather than pushed, because
    keeping them within their bounds depends on what they hold (D-31); ``affinity``: what of
    the learn's affinity the pattern keeps."""
    inc = {"frequency": learns(write)} | {f"affinity.{field_key(k)}": v for k, v in affinity.items()}
    update: Doc = {"$inc": inc, "$set": {"kb_version": version}}
    if after is not None and (write.emotives or write.metadata):
        update["$set"] |= {"emotives": _emotive_docs(after.emotives), "metadata": _metadata_docs(after.metadata)}
    return UpdateOne({"kb_id": kb_id, "name": write.name}, update)
