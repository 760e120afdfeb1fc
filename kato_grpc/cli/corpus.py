"""Training corpora: sequences read from text, JSONL or CSV files (docs/formats.md).

A sequence is a list of observations, learned as one pattern. Readers stream: a file of any
size is read a line at a time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kato_grpc.client.requests import observation
from kato_grpc.v1 import engine_pb2 as pb

Format = Literal["text", "jsonl", "csv"]
TextEvents = Literal["token", "line"]


@dataclass
class Sequence:
    observations: list[pb.Observation] = field(default_factory=list)


def detect(path: Path) -> Format:
    suffix = path.suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson") else "csv" if suffix == ".csv" else "text"


def read(path: Path, fmt: Format, text_events: TextEvents = "token") -> Iterator[Sequence]:
    """The sequences of a file, in file order (empty ones skipped)."""
    if fmt == "jsonl":
        yield from _jsonl(path)
    elif fmt == "csv":
        yield from _csv(path)
    elif text_events == "token":
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.split():
                    yield Sequence([observation([token]) for token in line.split()])
    else:
        yield from _blocks(path)


def _blocks(path: Path) -> Iterator[Sequence]:
    """A block of non-blank lines is a sequence; each line an event of its tokens."""
    current = Sequence()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.split():
                current.observations.append(observation(line.split()))
            elif current.observations:
                yield current
                current = Sequence()
    if current.observations:
        yield current


def _csv(path: Path) -> Iterator[Sequence]:
    """A row is a sequence; each non-empty cell an event of its whitespace-separated symbols."""
    with path.open(encoding="utf-8", newline="") as rows:
        for row in csv.reader(rows):
            events = [cell.split() for cell in row if cell.split()]
            if events:
                yield Sequence([observation(e) for e in events])


def _jsonl(path: Path) -> Iterator[Sequence]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield _json_sequence(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: not a sequence ({exc})") from exc


def _json_sequence(data: Any) -> Sequence:
    """``{"events": [["a", "b"], {"strings": ["c"], "emotives": {...}}], "emotives": {...},
    "metadata": {...}}``: sequence-level emotives and metadata go with its first event."""
    if isinstance(data, list):
        data = {"events": data}
    out = Sequence()
    for i, event in enumerate(data["events"]):
        fields = event if isinstance(event, dict) else {"strings": event}
        strings = fields.get("strings", [])
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            raise TypeError("an event is a list of strings")
        emotives = {**(data.get("emotives", {}) if i == 0 else {}), **fields.get("emotives", {})}
        metadata = {**(data.get("metadata", {}) if i == 0 else {}), **fields.get("metadata", {})}
        out.observations.append(
            observation(strings, vectors=fields.get("vectors", []), emotives=emotives, metadata=metadata)
        )
    return out
