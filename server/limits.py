"""Request checks done before any work (architecture.md §9): identifiers, size limits, numbers.

The one place requests are checked: unary Observe, ObserveSequence, every ObserveStream
message and UpdatePattern all go through ``check_observation`` / the functions below, so a
request is accepted or refused the same way whichever path it takes. Every refusal is
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kato_grpc.engine.naming import strip_pattern_prefix
from kato_grpc.engine.observation import check_finite, validate_observation
from kato_grpc.errors import InvalidArgument
from kato_grpc.settings import Settings
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

MAX_NODE_ID_BYTES = 256
MAX_ID_CHARS = 128
# Session ids are made by the server (``new_session_id``): nothing else can name a session.
SESSION_ID = re.compile(r"s-[0-9a-f]{32}")
PATTERN_NAME = re.compile(r"[0-9a-f]{40}")
# Frequencies a client may set: far enough below 2^63 that learns can never overflow the
# stored 64-bit counter, and exact in JSON / JavaScript numbers.
MAX_FREQUENCY = 2**53 - 1


def require_session_id(session_id: str, field: str = "session_id") -> None:
    if not session_id:
        raise InvalidArgument.for_field(field, "is required", reason="MISSING_FIELD")
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidArgument.for_field(
            field, "is not a session id this service issued ('s-' and 32 hex digits)", reason="MALFORMED_ID"
        )


def require_node_id(node_id: str, field: str = "node_id") -> None:
    if not node_id:
        raise InvalidArgument.for_field(field, "is required", reason="MISSING_FIELD")
    if len(node_id.encode("utf-8")) > MAX_NODE_ID_BYTES:
        raise InvalidArgument.for_field(field, f"is longer than {MAX_NODE_ID_BYTES} bytes")


def check_ids(session_id: str, request_id: str) -> None:
    """The ids every session call carries (the transaction runner checks them on load)."""
    require_session_id(session_id)
    check_request_id(request_id)


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field("request_id", f"is longer than {MAX_ID_CHARS} characters")


def pattern_name(name: str, field: str = "name") -> str:
    """The bare 40-hex name of ``name`` (``PTRN|`` optional); anything else is refused."""
    if not name:
        raise InvalidArgument.for_field(field, "is required", reason="MISSING_FIELD")
    bare = strip_pattern_prefix(name)
    if not PATTERN_NAME.fullmatch(bare):
        raise InvalidArgument.for_field(
            field, "is not a pattern name (40 lowercase hex digits, optionally after 'PTRN|')", reason="MALFORMED_ID"
        )
    return bare


def check_ttl(ttl_seconds: int, settings: Settings, field: str = "ttl_seconds") -> None:
    if not settings.min_ttl_seconds <= ttl_seconds <= settings.max_ttl_seconds:
        raise InvalidArgument.for_field(
            field, f"must be between {settings.min_ttl_seconds} and {settings.max_ttl_seconds} seconds"
        )


def check_observe(req: svc.ObserveRequest, settings: Settings) -> None:
    """Everything about one ObserveRequest (unary or one message of a stream)."""
    require_session_id(req.session_id)
    check_request_id(req.request_id)
    check_observation(req.observation, settings)


def check_sequence(req: svc.ObserveSequenceRequest, settings: Settings) -> None:
    require_session_id(req.session_id)
    check_request_id(req.request_id)
    if len(req.observations) > settings.max_observations_per_sequence:
        raise InvalidArgument.for_field(
            "observations",
            f"has more than {settings.max_observations_per_sequence} observations",
            reason="TOO_MANY_OBSERVATIONS",
        )
    for i, obs in enumerate(req.observations):
        check_observation(obs, settings, f"observations[{i}]")


def check_observation(obs: pb.Observation, settings: Settings, field: str = "observation") -> None:
    """Sizes first (cheap), then the numbers (finite, consistent vector dimensions)."""
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
    validate_observation(obs, field)


def check_emotives(values: Mapping[str, float], settings: Settings, field: str) -> None:
    if len(values) > settings.max_emotives:
        raise InvalidArgument.for_field(field, f"has more than {settings.max_emotives} keys")
    check_finite(values, field)


PATTERN_FIELDS = frozenset({"frequency", "emotives", "metadata"})


def check_pattern_update(req: svc.UpdatePatternRequest, settings: Settings) -> tuple[str, set[str]]:
    """The bare pattern name and the fields to change (AIP-134): the mask's paths; ``*`` for
    all; no mask, the fields the request sets."""
    require_node_id(req.node_id)
    bare = pattern_name(req.pattern.name, "pattern.name")
    paths = list(req.update_mask.paths)
    if not paths:
        p = req.pattern
        mask = {
            f
            for f, given in (("frequency", p.frequency != 0), ("emotives", p.emotives), ("metadata", p.metadata))
            if given
        }
        if not mask:
            raise InvalidArgument.for_field(
                "update_mask", "is empty and the pattern sets none of frequency, emotives, metadata: nothing to update"
            )
    elif paths == ["*"]:
        mask = set(PATTERN_FIELDS)
    else:
        mask = set(paths)
        unknown = mask - PATTERN_FIELDS
        if unknown:
            raise InvalidArgument.for_field(
                "update_mask", f"unknown fields: {', '.join(sorted(unknown))} (use frequency, emotives, metadata or *)"
            )
    if "frequency" in mask and not 1 <= req.pattern.frequency <= MAX_FREQUENCY:
        raise InvalidArgument.for_field("pattern.frequency", f"must be between 1 and {MAX_FREQUENCY}")
    if "emotives" in mask:
        if len(req.pattern.emotives) > settings.max_pattern_emotive_records:
            raise InvalidArgument.for_field(
                "pattern.emotives", f"has more than {settings.max_pattern_emotive_records} records"
            )
        for i, r in enumerate(req.pattern.emotives):
            check_emotives(r.values, settings, f"pattern.emotives[{i}]")
    if "metadata" in mask and len(req.pattern.metadata) > settings.max_metadata_keys:
        raise InvalidArgument.for_field("pattern.metadata", f"has more than {settings.max_metadata_keys} keys")
    return bare, mask


SESSION_FIELDS = ("config", "ttl_seconds", "metadata")
CONFIG_FIELDS = frozenset(f.name for f in pb.SessionConfig.DESCRIPTOR.fields)


def check_session_update(req: svc.UpdateSessionRequest, settings: Settings) -> list[str]:
    """The paths UpdateSession changes (AIP-134): the mask's (``*`` for all), or without one
    the fields the request sets; their values checked here, the config by the engine."""
    check_request_id(req.request_id)
    s = req.session
    require_session_id(s.session_id, "session.session_id")
    paths = list(req.update_mask.paths)
    if not paths:
        paths = [f"config.{f.name}" for f, _ in s.config.ListFields()]
        paths += [name for name, given in (("ttl_seconds", s.ttl_seconds != 0), ("metadata", s.metadata)) if given]
        if not paths:
            raise InvalidArgument.for_field("update_mask", "is empty and the session sets nothing to update")
    elif paths == ["*"]:
        paths = list(SESSION_FIELDS)
    for path in paths:
        known = path in SESSION_FIELDS or (path.startswith("config.") and path[len("config.") :] in CONFIG_FIELDS)
        if not known:
            raise InvalidArgument.for_field(
                "update_mask", f"cannot update {path!r} (use config, config.<parameter>, ttl_seconds, metadata or *)"
            )
    if "ttl_seconds" in paths:
        check_ttl(s.ttl_seconds, settings, "session.ttl_seconds")
    if "metadata" in paths and len(s.metadata) > settings.max_metadata_keys:
        raise InvalidArgument.for_field("session.metadata", f"has more than {settings.max_metadata_keys} keys")
    return paths
