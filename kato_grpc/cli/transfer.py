"""The knowledge-base file format of ``kato kb export`` / ``kato kb import`` (docs/formats.md):
JSON Lines, one record a line — a header, then patterns, then vectors. Streamed both ways."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
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
    _header(path)
    return _records(path, "pattern"), _records(path, "vector")


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
    patterns, vectors = read(path)
    return kato.import_knowledge_base(build.import_requests(kb, import_id, patterns, vectors, batch_size))


def _header(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as lines:
        first = lines.readline()
    try:
        header: dict[str, Any] = json.loads(first)
    except ValueError as exc:
        raise ValueError(f"{path}: the first line is not a header ({exc})") from exc
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version {VERSION}")
    return header


def _records(path: Path, kind: str) -> Iterator[Any]:
    with path.open(encoding="utf-8") as lines:
        next(lines)  # the header
        for number, line in enumerate(lines, 2):
            record = json.loads(line)
            try:
                if kind == "vector" and "vector" in record:
                    yield json_format.ParseDict(record["vector"], svc.NamedVector())
                elif kind == "pattern" and "pattern" in record:
                    yield json_format.ParseDict(record, svc.ExportedPattern())
            except json_format.ParseError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
