"""Request ids: what a retry gets back, what a reuse is refused, and write identity.

A ``request_id`` makes a mutating call idempotent: the session remembers which method used
it, a fingerprint of the whole request and the first response. The same method with the
same request gets that response again and changes nothing; anything else with a used id —
another method, or the same method with another body — is refused with ALREADY_EXISTS
naming the method the id was used for (never a silent no-op, never another method's bytes).

Pattern writes get ids that the MongoDB ledger deduplicates. An id is unique per execution
of a call: derived from the request id, the request's fingerprint and the session version
the call started from, so a re-execution of the *same* call from the *same* state (Redis
lost the first commit's record in a crash) is recognised and not applied twice, while a
later, legitimate reuse of an id whose record was evicted starts from another version and
learns again. Without a request id the id is random.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

from google.protobuf.message import Message

from kato_grpc.errors import AlreadyExists
from kato_grpc.internal.v1 import session_pb2 as storage

R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class Call(Generic[R]):
    """A session-changing call as its retries see it: the method, the whole request, the
    client's request id (empty: none) and the response type a recorded answer decodes to."""

    method: str
    request: Message
    request_id: str
    response: type[R]

    @cached_property
    def fingerprint(self) -> bytes:
        """Computed once per call, and only when a request id makes it matter."""
        return fingerprint(self.method, self.request) if self.request_id else b""


def fingerprint(method: str, request: Message) -> bytes:
    """The identity of a request: its method and every field, deterministically encoded."""
    return hashlib.sha256(method.encode() + b"\0" + request.SerializeToString(deterministic=True)).digest()


def record(method: str, fp: bytes, response: Message | bytes) -> storage.RequestRecord:
    body = response if isinstance(response, bytes) else response.SerializeToString()
    return storage.RequestRecord(method=method, fingerprint=fp, response=body)


def check_replay(previous: storage.RequestRecord, method: str, fp: bytes) -> None:
    """Allow a retry of the recorded request; refuse any other use of its id."""
    if previous.method != method:
        raise AlreadyExists(
            f"request_id was already used for {previous.method} on this session; use a new request_id",
            reason="REQUEST_ID_REUSED",
            metadata={"method": previous.method},
        )
    if previous.fingerprint != fp:
        raise AlreadyExists(
            f"request_id was already used for a different {method} request; use a new request_id",
            reason="REQUEST_ID_REUSED",
            metadata={"method": previous.method},
        )


def identify_writes(
    writes: list[storage.PatternWrite], session_id: str, request_id: str, fp: bytes, base_version: int
) -> None:
    """Give one execution's pattern writes their ledger ids (see the module docstring)."""
    if request_id:
        execution = hashlib.sha256(request_id.encode() + b"\0" + fp).hexdigest()[:24]
        call = f"r{base_version}-{execution}"
    else:
        call = f"x{secrets.token_hex(12)}"
    for n, write in enumerate(writes):
        write.write_id = f"{session_id}:{call}:{n}"
