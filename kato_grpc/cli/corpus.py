"""Training corpora: sequences read from text, JSONL or CSV files (docs/formats.md).

A sequence is a list of observations, learned as one pattern. Readers stream: a file of any
size is read a line at a time. Whatever a file gets wrong is one ``InvalidFile`` naming the
file, the line and, in JSONL, the field (``events[1].strings[0]``) — a sequence remembers
the line it came from, so a refusal by the server can name it too.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kato_grpc.cli import files
from kato_grpc.client.requests import observation
from kato_grpc.errors import InvalidFile
from kato_grpc.v1 import engine_pb2 as pb

Format = Literal["text", "jsonl", "csv"]
TextEvents = Literal["token", "line"]


@dataclass
class Sequence:
    observations: list[pb.Observation] = field(default_factory=list)
    path: Path | None = None  # where it was read: the file and its first line
    line: int = 0
    line_per_event: bool = False  # `--events line`: observation i is on line ``line + i``

    def line_of(self, index: int) -> int:
        """The line observation ``index`` of this sequence was read from."""
        return self.line + index if self.line_per_event else self.line


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
        for number, line in files.lines(path):
            if line.split():
                yield Sequence([observation([token]) for token in line.split()], path, number)
    else:
        yield from _blocks(path)


def _blocks(path: Path) -> Iterator[Sequence]:
    """A block of non-blank lines is a sequence; each line an event of its tokens."""
    current = Sequence(path=path, line_per_event=True)
    for number, line in files.lines(path):
        if line.split():
            current.line = current.line or number
            current.observations.append(observation(line.split()))
        elif current.observations:
            yield current
            current = Sequence(path=path, line_per_event=True)
    if current.observations:
        yield current


def _csv(path: Path) -> Iterator[Sequence]:
    """A row is a sequence; each non-empty cell an event of its whitespace-separated symbols."""
    numbered = files.lines(path, newline="")
    current = 0  # the line the row being read starts on (a quoted cell may span lines)

    def text() -> Iterator[str]:
        nonlocal current
        for number, line in numbered:
            current = current or number
            yield line

    rows = csv.reader(text())
    while True:
        try:
            row = next(rows, None)
        except csv.Error as exc:
            raise InvalidFile(path, current, "", f"is not CSV ({exc})") from None
        if row is None:
            return
        events = [cell.split() for cell in row if cell.split()]
        if events:
            yield Sequence([observation(e) for e in events], path, current)
        current = 0


def _jsonl(path: Path) -> Iterator[Sequence]:
    for number, line in files.lines(path):
        if not line.strip():
            continue
        yield _json_sequence(_Line(path, number), files.json_value(path, number, line))


@dataclass(frozen=True)
class _Line:
    """Where a JSON sequence is: its errors name the file, the line and the field."""

    path: Path
    number: int

    def error(self, field: str, description: str) -> InvalidFile:
        return InvalidFile(self.path, self.number, field, description)


def _json_sequence(at: _Line, data: Any) -> Sequence:
    """``{"events": [["a", "b"], {"strings": ["c"], "emotives": {...}}], "emotives": {...},
    "metadata": {...}}``: sequence-level emotives and metadata go with its first event."""
    if isinstance(data, list):
        data = {"events": data}
    if not isinstance(data, dict):
        raise at.error("", 'is not a sequence: a list of events, or an object with "events"')
    events = data.get("events")
    if not isinstance(events, list):
        raise at.error("events", "is missing" if events is None else "is not a list of events")
    emotives, metadata = _emotives(at, data, ""), _object(at, data, "metadata", "")
    out = Sequence(path=at.path, line=at.number)
    for i, event in enumerate(events):
        name = f"events[{i}]"
        if isinstance(event, list):
            fields, strings_field = {"strings": event}, name
        elif isinstance(event, dict):
            fields, strings_field = event, f"{name}.strings"
        else:
            raise at.error(name, 'is not an event: a list of strings, or an object with "strings"')
        strings = fields.get("strings", [])
        if not isinstance(strings, list):
            raise at.error(strings_field, "is not a list of strings")
        for j, s in enumerate(strings):
            if not isinstance(s, str):
                raise at.error(f"{strings_field}[{j}]", f"is not a string: {json.dumps(s)[:40]}")
        vectors = fields.get("vectors", [])
        if not isinstance(vectors, list) or not all(
            isinstance(v, list) and all(_number(x) for x in v) for v in vectors
        ):
            raise at.error(f"{name}.vectors", "is not a list of vectors (lists of finite numbers)")
        first = i == 0
        try:
            made = observation(
                strings,
                vectors=vectors,
                emotives={**(emotives if first else {}), **_emotives(at, fields, name)},
                metadata={**(metadata if first else {}), **_object(at, fields, "metadata", name)},
            )
        except (TypeError, ValueError) as exc:  # a metadata value JSON cannot hold as a protobuf Value
            raise at.error(f"{name}.metadata", str(exc)) from None
        out.observations.append(made)
    return out


def _object(at: _Line, data: dict[str, Any], key: str, within: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise at.error(f"{within}.{key}".lstrip("."), "is not an object")
    return value


def _emotives(at: _Line, data: dict[str, Any], within: str) -> dict[str, float]:
    values = _object(at, data, "emotives", within)
    for name, value in values.items():
        if not _number(value):
            raise at.error(f"{within}.emotives.{name}".lstrip("."), f"is not a finite number: {json.dumps(value)[:40]}")
    return values


def _number(value: Any) -> bool:
    """A finite JSON number (an integer too large for a float is not one)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
