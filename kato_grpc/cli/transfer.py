"""The knowledge-base file format of ``kato kb export`` / ``kato kb import`` (docs/formats.md):
JSON Lines, one record a line — a header, then patterns, then vectors. Streamed both ways.

An import stops at the file's first line that cannot be read: the batch holding it is never
sent, nor anything after it, and the server applies and answers the batches sent before.
So what is in the knowledge base afterwards is exactly the batches before that line, and the
error says which (docs/formats.md, "A file with a bad line"); the same holds when the server
refuses a batch (its ErrorInfo names the batch).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from kato_grpc.cli import files
from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
from kato_grpc.errors import InvalidFile, KatoError
from kato_grpc.v1 import kato_service_pb2 as svc

FORMAT = "kato-knowledge-base"
VERSION = 1


def _json(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def export(kato: KatoClient, kb: str, out: IO[str], batch_size: int = 0) -> tuple[int, int]:
    """Write a knowledge base to ``out``; (patterns, vectors) written."""
    patterns = vectors = 0
    for part in kato.export_knowledge_base(kb, batch_size=batch_size):
        if part.HasField("header"):
            header = {"format": FORMAT, "version": VERSION, "knowledge_base": _json(part.header.knowledge_base)}
            out.write(json.dumps(header, ensure_ascii=False) + "\n")
        for p in part.patterns:
            out.write(json.dumps(_json(p), ensure_ascii=False) + "\n")
        for v in part.vectors:
            out.write(json.dumps({"vector": _json(v)}, ensure_ascii=False) + "\n")
        patterns, vectors = patterns + len(part.patterns), vectors + len(part.vectors)
    return patterns, vectors


def read(path: Path) -> tuple[Iterator[svc.ExportedPattern], Iterator[svc.NamedVector]]:
    """The patterns and the vectors of a file (each read lazily, in a pass of its own)."""
    header(path)
    return (p for _, p in _records(path, "pattern")), (v for _, v in _records(path, "vector"))


def pattern_records(path: Path) -> int:
    """How many lines after the header are pattern records (a progress bar's total): a line
    that cannot be read is not counted here — the import stops at it and says so."""
    count = 0
    with path.open("rb") as fh:
        next(fh, None)
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                continue
            count += isinstance(record, dict) and "pattern" in record
    return count


def file_import_id(path: Path) -> str:
    """The default import id: the file's digest (importing the same file again applies nothing)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "file-" + h.hexdigest()[:32]


def import_file(
    kato: KatoClient, kb: str, path: Path, import_id: str, batch_size: int = 500
) -> svc.ImportKnowledgeBaseResponse:
    """Import a file; a bad line or a refused batch raises, saying what was imported (above)."""
    header(path)
    run = _Import(path, batch_size)
    requests = run.requests(kb, import_id)
    first = next(requests, None)
    if first is None:  # the first batch has the bad line: nothing is sent
        raise run.stopped(0, "")
    try:
        reply = kato.import_knowledge_base(chain([first], requests))
    except KatoError as exc:
        raise run.refused(exc, import_id) from exc
    if run.failure is not None:
        raise run.stopped(reply.batches, import_id)
    return reply


def header(path: Path) -> dict[str, Any]:
    """The file's first line, if it is the header of this format and version."""
    number, first = next(files.lines(path), (0, ""))
    if not first.strip():
        raise InvalidFile(path, number, "", f"is {'empty' if number else 'an empty file'}: not a {FORMAT} header")
    found = files.json_value(path, 1, first)
    if not isinstance(found, dict):
        raise InvalidFile(path, 1, "", f"is not a {FORMAT} header (not a JSON object)")
    if found.get("format") != FORMAT:
        raise InvalidFile(path, 1, "format", f"is {json.dumps(found.get('format'))[:60]}, not {json.dumps(FORMAT)}")
    if found.get("version") != VERSION:
        raise InvalidFile(path, 1, "version", f"is {json.dumps(found.get('version'))[:60]}; this kato reads {VERSION}")
    return found


class _Import:
    """One file's import stream: its requests, where each batch starts in the file, and the
    first failure reading it (which ends the stream cleanly, so the server answers)."""

    def __init__(self, path: Path, batch_size: int) -> None:
        self.path, self.size = path, batch_size
        self.failure: BaseException | None = None
        self.starts: dict[str, list[int]] = {"pattern": [], "vector": []}  # first line of each batch

    def requests(self, kb: str, import_id: str) -> Iterator[svc.ImportKnowledgeBaseRequest]:
        patterns, vectors = self._items("pattern"), self._items("vector")
        for request in build.import_requests(kb, import_id, patterns, vectors, self.size):
            if self.failure is not None:  # this batch stopped short at the bad line: never sent
                return
            yield request

    def _items(self, kind: str) -> Iterator[Any]:
        if self.failure is not None:
            return
        starts = self.starts[kind]
        try:
            for count, (number, item) in enumerate(_records(self.path, kind)):
                if count % self.size == 0:
                    starts.append(number)
                yield item
        except Exception as exc:  # any failure reading the file ends the stream cleanly
            self.failure = exc

    def stopped(self, sent: int, import_id: str) -> BaseException:
        """The failure reading the file, with what the ``sent`` batches imported."""
        assert self.failure is not None
        at = self.failure.line if isinstance(self.failure, InvalidFile) else 0
        self.failure.add_note(self._imported(sent, import_id, at))
        return self.failure

    def refused(self, error: KatoError, import_id: str) -> KatoError:
        """The server's refusal, as the line of the file it refused when it names one."""
        if "batch" not in error.metadata:  # not a batch's refusal (the stream was cut, ...)
            error.add_note("the batches the server applied stay imported: run the same command again to resume")
            return error
        batch = int(error.metadata["batch"])
        out: KatoError = error
        for violation in error.violations:
            found = re.fullmatch(r"(patterns|vectors)\[(\d+)\]\.?(.*)", violation.field)
            if found is None:
                continue
            kind = found.group(1)[:-1]
            first = batch - (len(self.starts["pattern"]) if kind == "vector" else 0)
            if 0 <= first < len(self.starts[kind]):
                line = self._line(kind, self.starts[kind][first], int(found.group(2)))
                field = f"{kind}.{found.group(3)}" if kind == "vector" else found.group(3)
                out = InvalidFile(self.path, line, field, f"{error.code} {error.reason}: {violation.description}")
                out.request_id = error.request_id
                break
        out.add_note(self._imported(batch, import_id))
        return out

    def _imported(self, batches: int, import_id: str, stopped_at: int = 0) -> str:
        """What ``batches`` applied batches hold: the records before the first line of the
        next batch (or of the line the reading stopped at, when that batch never started)."""
        if batches == 0:
            return "nothing was imported"
        starts = self.starts["pattern"] + self.starts["vector"]
        end = starts[batches] if batches < len(starts) else stopped_at
        where = f"the records before line {end}" if end else "the records read"
        applied = "batch 0 was" if batches == 1 else f"batches 0-{batches - 1} were"
        return (
            f"{applied} imported ({where}); after fixing it, "
            f"the same command with --import-id {import_id} imports the rest"
        )

    def _line(self, kind: str, start: int, index: int) -> int:
        """The line of the ``index``-th ``kind`` record from line ``start`` (an error's path only)."""
        for count, (number, _) in enumerate(n for n in _kinds(self.path, kind) if n[0] >= start):
            if count == index:
                return number
        return start


def _kinds(path: Path, kind: str) -> Iterator[tuple[int, str]]:
    for number, line in files.lines(path):
        if number > 1 and line.strip():
            record = json.loads(line)
            if isinstance(record, dict) and kind in record:
                yield number, kind


def _records(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """``(line, message)`` of every ``kind`` record ("pattern" or "vector"), after the header."""
    for number, line in files.lines(path):
        if number == 1 or not line.strip():
            continue
        record = files.json_value(path, number, line)
        if not isinstance(record, dict):
            raise InvalidFile(path, number, "", "is not a record (a JSON object)")
        try:  # unknown keys are ignored (docs/formats.md): a newer exporter may add some
            if kind == "vector" and "vector" in record:
                yield number, json_format.ParseDict(record["vector"], svc.NamedVector(), ignore_unknown_fields=True)
            elif kind == "pattern" and "pattern" in record:
                yield number, json_format.ParseDict(record, svc.ExportedPattern(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            field, description = _parse_error(str(exc))
            raise InvalidFile(path, number, f"vector.{field}" if kind == "vector" else field, description) from None


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_AT = re.compile(r" at (\w+)\.?([\w.\[\]]*?)\.*$")


def _parse_error(text: str) -> tuple[str, str]:
    """(field, what) of json_format's complaint: its "Failed to parse X field: " chain gives
    the field, its " at Message.x[0].y" the indexes when it has them."""
    chain_names: list[str] = []
    while (found := _FAILED_FIELD.match(text)) is not None:
        chain_names.append(found.group(1))
        text = text[found.end() :]
    field = ".".join(chain_names)
    at = _AT.search(text)
    if at is not None:
        text = text[: at.start()]
        precise = at.group(2)
        plain = re.sub(r"\[[^\]]*\]", "", precise).split(".") if precise else []
        if plain and plain == chain_names[: len(plain)]:  # the same field, with its indexes
            field = ".".join([precise, *chain_names[len(plain) :]])
    return field, text.rstrip(".") or "cannot be read"
