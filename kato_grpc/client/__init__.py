"""The Python client of kato-grpc: ``KatoClient`` (blocking) and ``AsyncKatoClient`` (asyncio).

Needs grpcio, protobuf and googleapis-common-protos only — not the server's dependencies. Every mutating
call carries a fresh request id (or the one given), and UNAVAILABLE and a retryable ABORTED
are retried with the same request, so the server applies it once, all within the call's
``timeout`` (the whole budget: each attempt gets what is left of it). Failures
raise the ``kato_grpc.errors`` class of their status, with ``reason``, ``metadata`` and
``violations`` from the status details::

    from kato_grpc.client import KatoClient, NotFound

    with KatoClient("127.0.0.1:50051") as kato:
        session = kato.create_session("demo", config={"recall_threshold": 0.1})
        for word in ("hello", "world", "again"):
            kato.observe(session.name, [word])
        learned = kato.learn(session.name)

``AsyncKatoClient`` (``aio.py``) is the one written by hand; ``KatoClient`` (``sync.py``) is
generated from it by ``scripts/gen_sync_client.py`` (``make client``) — edit ``aio.py``, or
what both share (``channel.py``, ``requests.py``, ``errors.py``), and regenerate
(docs/architecture.md §1).
"""

from kato_grpc.client.aio import AsyncKatoClient
from kato_grpc.client.channel import Options
from kato_grpc.client.errors import from_rpc_error
from kato_grpc.client.requests import observation
from kato_grpc.client.sync import KatoClient
from kato_grpc.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    KatoError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncKatoClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "KatoClient",
    "KatoError",
    "NotFound",
    "Options",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "observation",
]
