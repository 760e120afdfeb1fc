"""The documents of the pattern store: how a PatternWrite becomes MongoDB documents and
operations, and how documents become the records the KB cache indexes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from pymongo import UpdateOne

from kato_grpc.engine.knowledge import PatternRecord, Totals
from kato_grpc.engine.records import canonical_json
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


def field_key(key: str) -> str:
    """An emotive name as a MongoDB field name ("." and a leading "$" would be paths and
    operators): "%", "." and "$" percent-encoded, reversibly."""
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


def affinity_from_doc(doc: Mapping[str, Any]) -> dict[str, float]:
    """What a pattern's learns added to its symbols' affinity (kept since the export format)."""
    return {unquote(k): float(v) for k, v in doc.get("affinity", {}).items()}


def exported_pattern(doc: Mapping[str, Any]) -> tuple[PatternRecord, dict[str, float]]:
    """A pattern document as an export has it: the record and what its learns added to affinity."""
    return pattern_from_doc(doc), affinity_from_doc(doc)


def learns(write: storage.PatternWrite) -> int:
    """How many learns a write counts for (an import's pattern: its frequency)."""
    return write.frequency or 1


def pattern_doc(kb_id: str, write: storage.PatternWrite, version: int) -> Doc:
    """The document a first learn creates: what the upsert below would produce on insert."""
    events = [list(e.symbols) for e in write.events]
    records = [sorted([k, v] for k, v in r.values.items()) for r in write.emotives]
    pairs = [[k, v] for k, values in sorted(write.metadata.items()) for v in values.values]
    unique_pairs = [list(p) for p in dict.fromkeys(tuple(p) for p in pairs)]
    return {
        "kb_id": kb_id,
        "name": write.name,
        "events": events,
        "length": sum(len(e) for e in events),
        "frequency": learns(write),
        "kb_version": version,
        "emotives": records[-write.persistence :] if records else [],
        "metadata": unique_pairs,
        "affinity": {field_key(k): v for k, v in write.affinity_delta.items()},
    }


def pattern_op(kb_id: str, write: storage.PatternWrite, version: int) -> UpdateOne:
    events = [list(e.symbols) for e in write.events]
    on_insert: Doc = {
        "events": events,
        "length": sum(len(e) for e in events),
    }
    inc = {"frequency": learns(write)} | {f"affinity.{field_key(k)}": v for k, v in write.affinity_delta.items()}
    update: Doc = {"$inc": inc, "$set": {"kb_version": version}, "$setOnInsert": on_insert}
    records = [sorted([k, v] for k, v in r.values.items()) for r in write.emotives]
    if records:
        update["$push"] = {"emotives": {"$each": records, "$slice": -write.persistence}}
    else:
        on_insert["emotives"] = []
    pairs = [[k, v] for k, values in sorted(write.metadata.items()) for v in values.values]
    if pairs:
        update["$addToSet"] = {"metadata": {"$each": pairs}}
    else:
        on_insert["metadata"] = []
    return UpdateOne({"kb_id": kb_id, "name": write.name}, update, upsert=True)
