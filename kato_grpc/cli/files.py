"""Reading the files the commands are given, a numbered line at a time, so that whatever is
wrong with one (bytes that are not UTF-8 text, a compressed or binary file) is one
``InvalidFile`` naming the file and the line — never a decoder's traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kato_grpc.errors import InvalidFile

# The first bytes of compressed files someone may hand over instead of the text inside.
_COMPRESSED = {"\x1f\udc8b": "gzip", "\udcfd7zXZ\x00": "xz", "(\udcb5/\udcfd": "zstd", "PK\x03\x04": "zip"}


def lines(path: Path, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` from 1, line endings kept; ``newline`` as ``open``'s (the csv
    module wants ``""``). Undecodable bytes are escaped while reading (``surrogateescape``) and
    refused per line, so the error names the line they are on."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline=newline) as text:
        for number, line in enumerate(text, 1):
            yield number, checked(path, number, line)


def checked(path: Path, number: int, line: str) -> str:
    """``line`` if it is text; else the InvalidFile that says why not."""
    if number == 1:
        kind = next((name for magic, name in _COMPRESSED.items() if line.startswith(magic)), None)
        if kind is not None:
            raise InvalidFile(path, 1, "", f"is a {kind}-compressed file, not text: decompress it first")
    try:
        line.encode("utf-8")  # an escaped byte cannot be encoded: the line was not UTF-8
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00
        raise InvalidFile(
            path, number, "", f"is not UTF-8 text (byte 0x{byte:02x} in column {exc.start + 1}): a binary file?"
        ) from None
    if "\x00" in line:
        raise InvalidFile(path, number, "", f"has a NUL character in column {line.index(chr(0)) + 1}: a binary file?")
    return line


def json_value(path: Path, number: int, line: str) -> Any:
    """The JSON value on a line; if there is none, the InvalidFile that says where it breaks."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidFile(path, number, "", f"is not JSON ({exc.msg} at column {exc.pos + 1})") from None
