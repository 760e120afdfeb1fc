"""Repeated ``Event`` fields encoded straight to protobuf wire bytes.

Building predictions was dominated by creating one ``Event`` message per event (six event
fields per prediction, plus a future per future group), each a Python-level call into
protobuf. The same fields written as wire bytes and merged into the message in one
``MergeFromString`` give an identical message at a fraction of the cost (a test compares the
two). Only the length-delimited framing of the protobuf encoding is written here; field
numbers come from the generated descriptors, never from this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from google.protobuf.descriptor import Descriptor

from kato_grpc.v1 import engine_pb2 as pb

_LENGTH_DELIMITED = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_varint(n) for n in range(128))


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 128 else _varint(n)


def field_tag(message: Descriptor, field: str) -> bytes:
    """The key of a length-delimited field of ``message``, from its descriptor."""
    return _varint(message.fields_by_name[field].number << 3 | _LENGTH_DELIMITED)


_SYMBOL_TAG = field_tag(pb.Event.DESCRIPTOR, "symbols")


@lru_cache(maxsize=1 << 16)
def _symbol(symbol: str) -> bytes:
    data = symbol.encode()
    return _SYMBOL_TAG + _length(len(data)) + data


def _event(event: Sequence[str]) -> bytes:
    """One ``Event`` as the value of a length-delimited field: its length, then its body."""
    body = b"".join(map(_symbol, event))
    return _length(len(body)) + body


@lru_cache(maxsize=1 << 11)
def encoded_events(events: tuple[tuple[str, ...], ...]) -> tuple[bytes, ...]:
    """A learned pattern's events, encoded once while the pattern is hot. Past, present,
    future and sequence of a prediction are slices of these."""
    return tuple(map(_event, events))


def join_field(tag: bytes, encoded: Sequence[bytes]) -> bytes:
    """A repeated message field from values already encoded by ``encoded_events``."""
    return tag + tag.join(encoded) if encoded else b""


def events_field(tag: bytes, events: Sequence[Sequence[str]]) -> bytes:
    """A repeated ``Event`` field from plain events (missing, extras)."""
    return join_field(tag, [_event(e) for e in events])
