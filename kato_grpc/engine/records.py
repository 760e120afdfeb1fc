"""Emotive and metadata records: averaging (engine.md §1.6), canonical JSON values (D-29),
merging (§1.7).

A metadata value is kept as its canonical JSON text: two values are the same when their texts
are equal, and a key's values are ordered by that text (code-point order, which is the byte
order of UTF-8). The text is what the session and the KB store; clients get the JSON value back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf import struct_pb2

from kato_grpc.errors import InvalidArgument

# JSON numbers without a fractional part are ints below this magnitude (D-29).
_INT_LIMIT = 2**53

PyValue = None | bool | int | float | str | list["PyValue"] | dict[str, "PyValue"]


def average_emotives(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the mean over the records that contain the key; {} for no records."""
    sums: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.items():
            sums.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in sums.items()}


def to_python(value: struct_pb2.Value, field: str) -> PyValue:
    """A protobuf JSON value as the Python value KATO would have seen (D-29)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument.for_field(field, "must be a finite number", reason="NON_FINITE_NUMBER")
        if number.is_integer() and abs(number) < _INT_LIMIT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [to_python(v, f"{field}[{i}]") for i, v in enumerate(value.list_value.values)]
    if kind == "struct_value":
        return {k: to_python(v, f"{field}.{k}") for k, v in value.struct_value.fields.items()}
    return None


def canonical_json(value: PyValue) -> str:
    """The canonical JSON text of a value (D-29): integral numbers below 2^53 as integers
    (``3.0`` is ``3``), other numbers in shortest round-trip form, strings escaping only
    ``"``, ``\\`` and control characters, no spaces, object keys sorted."""
    return json.dumps(_normalized(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _normalized(value: PyValue) -> PyValue:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < _INT_LIMIT else number
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return {k: _normalized(v) for k, v in value.items()}


def canonical_metadata(metadata: Mapping[str, struct_pb2.Value], field: str = "metadata") -> dict[str, str]:
    """Observation metadata as stored: each value's canonical JSON text (D-29). A NaN or an
    infinity anywhere in a value is INVALID_ARGUMENT naming it."""
    return {key: canonical_json(to_python(value, f"{field}.{key}")) for key, value in metadata.items()}


def canonical_values(values: struct_pb2.ListValue, field: str) -> list[str]:
    """A key's values given as a JSON list (UpdatePattern): their canonical texts."""
    return [canonical_json(to_python(v, f"{field}[{i}]")) for i, v in enumerate(values.values)]


def metadata_value(text: str) -> PyValue:
    """A stored canonical text as the JSON value it stands for."""
    value: PyValue = json.loads(text)
    return value


def accumulate_metadata(records: Iterable[Mapping[str, str]]) -> dict[str, list[str]]:
    """key -> unique canonical texts over all records, in canonical order (engine.md §1.7)."""
    merged: dict[str, set[str]] = {}
    for record in records:
        for key, value in record.items():
            merged.setdefault(key, set()).add(value)
    return {key: sorted(values) for key, values in merged.items()}


# What a pattern accumulates over its learns is bounded (D-31), so that however often it is
# learned it stays observable, exportable and importable with the default limits: its metadata
# at most this many bytes (each value's canonical text and its key, in UTF-8), its emotive
# window at most that many (each record's keys in UTF-8 and 8 bytes per value), and the
# emotive names whose affinity it keeps for exports as many (UTF-8 and 8 bytes each).
MAX_PATTERN_METADATA_BYTES = 256 * 1024
MAX_PATTERN_EMOTIVE_BYTES = 256 * 1024
MAX_PATTERN_AFFINITY_BYTES = 256 * 1024


def metadata_bytes(metadata: Mapping[str, Iterable[str]]) -> int:
    return sum(len(key.encode()) + len(value.encode()) for key, values in metadata.items() for value in values)


def emotive_bytes(record: Mapping[str, float]) -> int:
    return sum(len(key.encode()) + 8 for key in record)


def kept_affinity(kept: Iterable[str], delta: Mapping[str, float]) -> dict[str, float]:
    """What of a learn's affinity ``delta`` a pattern that keeps affinity for the names
    ``kept`` records (D-31): every name it has; a new one while the names fit the bound, in
    code-point order. (The symbols' own affinity takes the whole delta, always.)"""
    names = set(kept)
    room = MAX_PATTERN_AFFINITY_BYTES - sum(len(k.encode()) + 8 for k in names)
    out: dict[str, float] = {}
    for key in sorted(delta):
        if key not in names:
            size = len(key.encode()) + 8
            if size > room:
                continue
            room -= size
        out[key] = delta[key]
    return out


def merge_metadata(old: Mapping[str, Sequence[str]], new: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Union per key, sorted (re-learn rule of engine.md §1.7), within the pattern's metadata
    bound (D-31): what the pattern has stays; a new value joins while it fits, keys in
    code-point order and each key's values in canonical order; the rest is left out."""
    out = {key: set(values) for key, values in old.items()}
    room = MAX_PATTERN_METADATA_BYTES - metadata_bytes(out)
    for key in sorted(new):
        for value in sorted(set(new[key]) - out.get(key, set())):
            size = len(key.encode()) + len(value.encode())
            if size <= room:
                out.setdefault(key, set()).add(value)
                room -= size
    return {key: sorted(values) for key, values in out.items()}


def window_emotives(
    stored: Sequence[Mapping[str, float]], incoming: Sequence[Mapping[str, float]], persistence: int
) -> list[dict[str, float]]:
    """The pattern's emotive window after a learn (engine.md §1.6, D-4): the last
    ``persistence`` records, and of those the newest that fit its bound together (D-31)."""
    if not incoming:
        return [dict(r) for r in stored]
    window = [dict(r) for r in [*stored, *incoming][-persistence:]]
    total = sum(map(emotive_bytes, window))
    while window and total > MAX_PATTERN_EMOTIVE_BYTES:
        total -= emotive_bytes(window.pop(0))
    return window
