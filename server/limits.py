"""Request checks done before any work (DESIGN 9): identifiers and size limits."""

from __future__ import annotations

from kato_grpc.errors import InvalidArgument
from kato_grpc.settings import Settings
from kato_grpc.v1 import engine_pb2 as pb

MAX_NODE_ID_BYTES = 256
MAX_ID_CHARS = 128


def require_session_id(session_id: str) -> None:
    if not session_id:
        raise InvalidArgument.for_field("session_id", "is required", reason="MISSING_FIELD")
    if len(session_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field("session_id", f"is longer than {MAX_ID_CHARS} characters")


def require_node_id(node_id: str, field: str = "node_id") -> None:
    if not node_id:
        raise InvalidArgument.for_field(field, "is required", reason="MISSING_FIELD")
    if len(node_id.encode("utf-8")) > MAX_NODE_ID_BYTES:
        raise InvalidArgument.for_field(field, f"is longer than {MAX_NODE_ID_BYTES} bytes")


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field("request_id", f"is longer than {MAX_ID_CHARS} characters")


def check_ttl(ttl_seconds: int, settings: Settings, field: str = "ttl_seconds") -> None:
    if not settings.min_ttl_seconds <= ttl_seconds <= settings.max_ttl_seconds:
        raise InvalidArgument.for_field(
            field, f"must be between {settings.min_ttl_seconds} and {settings.max_ttl_seconds} seconds"
        )


def check_observation(obs: pb.Observation, settings: Settings, field: str = "observation") -> None:
    if len(obs.strings) > settings.max_symbols_per_event:
        raise InvalidArgument.for_field(
            f"{field}.strings",
            f"has more than {settings.max_symbols_per_event} symbols",
            reason="TOO_MANY_SYMBOLS",
        )
    for i, s in enumerate(obs.strings):
        if len(s.encode("utf-8")) > settings.max_symbol_bytes:
            raise InvalidArgument.for_field(
                f"{field}.strings[{i}]",
                f"is longer than {settings.max_symbol_bytes} bytes",
                reason="SYMBOL_TOO_LONG",
            )
    if len(obs.vectors) > settings.max_vectors_per_observation:
        raise InvalidArgument.for_field(
            f"{field}.vectors", f"has more than {settings.max_vectors_per_observation} vectors"
        )
    for i, v in enumerate(obs.vectors):
        if len(v.values) > settings.max_vector_dimension:
            raise InvalidArgument.for_field(
                f"{field}.vectors[{i}]", f"has more than {settings.max_vector_dimension} components"
            )
    if len(obs.emotives) > settings.max_emotives:
        raise InvalidArgument.for_field(f"{field}.emotives", f"has more than {settings.max_emotives} keys")
    if len(obs.metadata) > settings.max_metadata_keys:
        raise InvalidArgument.for_field(f"{field}.metadata", f"has more than {settings.max_metadata_keys} keys")
    if len(obs.unique_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field(f"{field}.unique_id", f"is longer than {MAX_ID_CHARS} characters")
