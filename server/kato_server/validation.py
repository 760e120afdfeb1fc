"""Request checks done before any work (architecture.md §9): names, size limits, numbers.

The one place requests are checked: unary Observe, ObserveSequence, every ObserveStream
message and UpdatePattern all go through ``check_observation`` / the functions below, so a
request is accepted or refused the same way whichever path it takes. Every refusal is
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kato_grpc import names
from kato_grpc.engine import importing, records
from kato_grpc.engine.learning import MIN_PATTERN_SYMBOLS
from kato_grpc.engine.naming import vector_name
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
VECTOR_NAME = re.compile(r"VCTR\|[0-9a-f]{40}")
# Frequencies a client may set: far enough below 2^63 that learns can never overflow the
# stored 64-bit counter, and exact in JSON / JavaScript numbers (engine.md D-30).
MAX_FREQUENCY = importing.MAX_SET_COUNT


# An import message carries whole patterns: a pattern's events (at most a session's bytes),
# what it accumulated (D-31) and room for its name, frequency and the message's own fields.
IMPORT_MESSAGE_OVERHEAD = 64 * 1024
ACCUMULATED_BYTES = (
    records.MAX_PATTERN_METADATA_BYTES + records.MAX_PATTERN_EMOTIVE_BYTES + records.MAX_PATTERN_AFFINITY_BYTES
)


def message_limit(settings: Settings, method: str = "") -> int:
    """The bytes a request message of ``method`` may have (every method: the largest):
    KATO_MAX_MESSAGE_BYTES, or for ImportKnowledgeBase at least what the largest pattern a
    session can learn needs, so that every exported pattern imports with the default limits."""
    largest_pattern = settings.max_session_bytes + ACCUMULATED_BYTES + IMPORT_MESSAGE_OVERHEAD
    if method in ("ImportKnowledgeBase", ""):
        return max(settings.max_message_bytes, largest_pattern)
    return settings.max_message_bytes


def require_session_id(session_id: str, field: str = "name") -> None:
    """A bare session id (the transaction runner checks it again on every load)."""
    if not SESSION_ID.fullmatch(session_id):
        raise _malformed(field, "a session this service issued", "sessions/s-{32 hex digits}")


def _malformed(field: str, what: str, form: str) -> InvalidArgument:
    """MALFORMED_ID: a name that is not of its resource's form. The field and the form are in
    the message, the BadRequest violation and ErrorInfo's metadata (``field``, ``expected``),
    so that a client can tell them apart without parsing text."""
    error = InvalidArgument.for_field(field, f"is not {what} ('{form}')", reason="MALFORMED_ID")
    error.metadata.update(field=field, expected=form)
    return error


def require_node_id(node_id: str, field: str) -> None:
    if not node_id:
        raise InvalidArgument.for_field(field, "names no knowledge base ('knowledgeBases/' and its id)")
    if len(node_id.encode("utf-8")) > MAX_NODE_ID_BYTES:
        raise InvalidArgument.for_field(field, f"has a knowledge base id longer than {MAX_NODE_ID_BYTES} bytes")


def _required(name: str, field: str) -> None:
    if not name:
        raise InvalidArgument.for_field(field, "is required", reason="MISSING_FIELD")


def session_id(name: str, field: str = "name") -> str:
    """The session id of ``sessions/{session}``; anything else is refused."""
    _required(name, field)
    sid = names.parse_session(name)
    require_session_id("" if sid is None else sid, field)
    return str(sid)


def node_id(name: str, field: str) -> str:
    """The node id of ``knowledgeBases/{knowledge_base}`` (D-28: non-empty, ≤ 256 bytes)."""
    _required(name, field)
    node = names.parse_knowledge_base(name)
    if node is None:
        raise _malformed(field, "a knowledge base name", "knowledgeBases/{knowledge_base}")
    require_node_id(node, field)
    return node


def pattern_ref(name: str, field: str = "name") -> tuple[str, str]:
    """(node id, sha1) of ``knowledgeBases/{knowledge_base}/patterns/{pattern}``."""
    _required(name, field)
    parsed = names.parse_pattern(name)
    if parsed is None or not PATTERN_NAME.fullmatch(parsed[1]):
        raise _malformed(field, "a pattern name", "knowledgeBases/{knowledge_base}/patterns/{40 lowercase hex digits}")
    require_node_id(parsed[0], field)
    return parsed


def symbol_ref(name: str, field: str = "name") -> tuple[str, str]:
    """(node id, symbol) of ``knowledgeBases/{knowledge_base}/symbols/{percent-encoded symbol}``."""
    _required(name, field)
    parsed = names.parse_symbol(name)
    if parsed is None:
        raise _malformed(field, "a symbol name", "knowledgeBases/{knowledge_base}/symbols/{percent-encoded symbol}")
    require_node_id(parsed[0], field)
    return parsed


def session_call(name: str, request_id: str, field: str = "name") -> str:
    """A session-changing call's ids, checked once here (the runner trusts them); its session id."""
    sid = session_id(name, field)
    check_request_id(request_id)
    return sid


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field("request_id", f"is longer than {MAX_ID_CHARS} characters")


def check_ttl(ttl_seconds: int, settings: Settings, field: str = "ttl_seconds") -> None:
    if not settings.min_ttl_seconds <= ttl_seconds <= settings.max_ttl_seconds:
        raise InvalidArgument.for_field(
            field, f"must be between {settings.min_ttl_seconds} and {settings.max_ttl_seconds} seconds"
        )


def check_observe(req: svc.ObserveRequest, settings: Settings) -> str:
    """Everything about one ObserveRequest (unary or one message of a stream); its session id."""
    sid = session_call(req.name, req.request_id)
    check_observation(req.observation, settings)
    return sid


def check_sequence(req: svc.ObserveSequenceRequest, settings: Settings) -> str:
    sid = session_call(req.name, req.request_id)
    if len(req.observations) > settings.max_observations_per_sequence:
        raise InvalidArgument.for_field(
            "observations",
            f"has more than {settings.max_observations_per_sequence} observations",
            reason="TOO_MANY_OBSERVATIONS",
        )
    for i, obs in enumerate(req.observations):
        check_observation(obs, settings, f"observations[{i}]")
    for i, index in enumerate(req.learn_after):
        if not 0 <= index < len(req.observations):
            raise InvalidArgument.for_field(f"learn_after[{i}]", "is not the index of an observation of the request")
    return sid


def check_observation(obs: pb.Observation, settings: Settings, field: str = "observation") -> None:
    """Sizes first (cheap), then the numbers (finite, consistent vector dimensions)."""
    check_symbols(obs.strings, settings, f"{field}.strings")
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
    check_keys(obs.metadata, settings, f"{field}.metadata")
    if len(obs.unique_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field(f"{field}.unique_id", f"is longer than {MAX_ID_CHARS} characters")
    validate_observation(obs, field)


def check_symbols(symbols: Sequence[str], settings: Settings, field: str) -> None:
    """An event's symbols, observed or imported: how many, and their bytes."""
    if len(symbols) > settings.max_symbols_per_event:
        raise InvalidArgument.for_field(
            field, f"has more than {settings.max_symbols_per_event} symbols", reason="TOO_MANY_SYMBOLS"
        )
    for i, s in enumerate(symbols):
        if len(s.encode("utf-8")) > settings.max_symbol_bytes:
            raise InvalidArgument.for_field(
                f"{field}[{i}]", f"is longer than {settings.max_symbol_bytes} bytes", reason="SYMBOL_TOO_LONG"
            )


def check_emotives(values: Mapping[str, float], settings: Settings, field: str) -> None:
    if len(values) > settings.max_emotives:
        raise InvalidArgument.for_field(field, f"has more than {settings.max_emotives} keys")
    check_keys(values, settings, field)
    check_finite(values, field)


def check_keys(keys: Iterable[str], settings: Settings, field: str) -> None:
    """Emotive and metadata names are bounded like symbols (a pattern keeps them: D-31)."""
    for key in keys:
        if len(key.encode("utf-8")) > settings.max_symbol_bytes:
            raise InvalidArgument.for_field(
                f"{field}.{key[:64]}", f"is a name longer than {settings.max_symbol_bytes} bytes", reason="KEY_TOO_LONG"
            )


def check_accumulations(
    emotives: Sequence[Mapping[str, float]],
    metadata: Mapping[str, Sequence[str]],
    field: str,
    affinity: tuple[Mapping[str, float], str] | None = None,
) -> None:
    """An emotive window, metadata (and an import's affinity, with its field) a client gives a
    pattern (UpdatePattern, an import) within the bounds learning keeps every pattern in (D-31)."""
    given, affinity_field = affinity or ({}, "")
    for name, path, size, bound in (
        ("emotives", f"{field}.emotives", sum(map(records.emotive_bytes, emotives)), records.MAX_PATTERN_EMOTIVE_BYTES),
        ("metadata", f"{field}.metadata", records.metadata_bytes(metadata), records.MAX_PATTERN_METADATA_BYTES),
        ("affinity", affinity_field, records.emotive_bytes(given), records.MAX_PATTERN_AFFINITY_BYTES),
    ):
        if size > bound:
            raise InvalidArgument.for_field(
                path,
                f"holds {size:,} bytes; a pattern's {name} hold at most {bound:,} (docs/engine.md D-31)",
                reason="PATTERN_TOO_LARGE",
            )


PATTERN_FIELDS = frozenset({"frequency", "emotives", "metadata"})


def check_pattern_update(req: svc.UpdatePatternRequest, settings: Settings) -> tuple[tuple[str, str], set[str]]:
    """The pattern's (node id, sha1) and the fields to change (AIP-134): the mask's paths;
    ``*`` for all; no mask, the fields the request sets."""
    ref = pattern_ref(req.pattern.name, "pattern.name")
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
    if "metadata" in mask:
        if len(req.pattern.metadata) > settings.max_metadata_keys:
            raise InvalidArgument.for_field("pattern.metadata", f"has more than {settings.max_metadata_keys} keys")
        check_keys(req.pattern.metadata, settings, "pattern.metadata")
    return ref, mask


SESSION_FIELDS = ("config", "ttl_seconds", "metadata")
CONFIG_FIELDS = frozenset(f.name for f in pb.SessionConfig.DESCRIPTOR.fields)


def check_session_update(req: svc.UpdateSessionRequest, settings: Settings) -> tuple[str, list[str]]:
    """The session id and the paths UpdateSession changes (AIP-134): the mask's (``*`` for
    all), or without one the fields the request sets; their values checked here, the config
    by the engine."""
    check_request_id(req.request_id)
    s = req.session
    sid = session_id(s.name, "session.name")
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
    return sid, paths


def import_id(value: str) -> str:
    if not value:
        raise InvalidArgument.for_field("import_id", "is required in the first message", reason="MISSING_FIELD")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument.for_field("import_id", f"is longer than {MAX_ID_CHARS} characters")
    return value


def check_imported_pattern(item: svc.ExportedPattern, settings: Settings, field: str) -> None:
    """An imported pattern is bounded like a learned one: symbols per event and their bytes,
    its events' size (a session's byte limit), emotive records, metadata keys, what it
    accumulated (D-31); 2+ symbols (D-22)."""
    check_keys(item.affinity, settings, f"{field}.affinity")
    check_finite(item.affinity, f"{field}.affinity")
    affinity, pattern = (item.affinity, f"{field}.affinity"), item.pattern
    field = f"{field}.pattern"
    for i, event in enumerate(pattern.events):
        check_symbols(event.symbols, settings, f"{field}.events[{i}].symbols")
    if sum(len(e.symbols) for e in pattern.events) < MIN_PATTERN_SYMBOLS:
        raise InvalidArgument.for_field(f"{field}.events", f"has fewer than {MIN_PATTERN_SYMBOLS} symbols")
    events = sum(e.ByteSize() for e in pattern.events)
    if events > settings.max_session_bytes:
        raise InvalidArgument.for_field(f"{field}.events", f"are larger than {settings.max_session_bytes} bytes")
    if not 0 <= pattern.frequency <= MAX_FREQUENCY:
        raise InvalidArgument.for_field(f"{field}.frequency", f"must be between 1 and {MAX_FREQUENCY} (0 means 1)")
    length = sum(len(e.symbols) for e in pattern.events)
    if length * (pattern.frequency or 1) > MAX_FREQUENCY:
        raise InvalidArgument.for_field(
            f"{field}.frequency",
            f"times the pattern's {length} symbols is over {MAX_FREQUENCY}: its symbols' frequencies would grow "
            "by that much, past what an import may raise them to (docs/engine.md D-30)",
            reason="COUNTER_LIMIT",
        )
    if len(pattern.emotives) > settings.max_pattern_emotive_records:
        raise InvalidArgument.for_field(
            f"{field}.emotives", f"has more than {settings.max_pattern_emotive_records} records"
        )
    for i, record in enumerate(pattern.emotives):
        check_emotives(record.values, settings, f"{field}.emotives[{i}]")
    if len(pattern.metadata) > settings.max_metadata_keys:
        raise InvalidArgument.for_field(f"{field}.metadata", f"has more than {settings.max_metadata_keys} keys")
    check_keys(pattern.metadata, settings, f"{field}.metadata")
    metadata = {k: records.canonical_values(v, f"{field}.metadata.{k}") for k, v in pattern.metadata.items()}
    check_accumulations([dict(r.values) for r in pattern.emotives], metadata, field, affinity)


def check_imported_vectors(vectors: Sequence[svc.NamedVector], settings: Settings) -> None:
    """Each vector under the name its values have (D-26: so no two differ under one name in a
    batch, which would keep one of them silently), once per batch."""
    seen: dict[str, int] = {}
    for i, v in enumerate(vectors):
        if not VECTOR_NAME.fullmatch(v.name):
            raise InvalidArgument.for_field(f"vectors[{i}].name", "is not a vector name ('VCTR|' and 40 hex digits)")
        if not 0 < len(v.values) <= settings.max_vector_dimension:
            raise InvalidArgument.for_field(
                f"vectors[{i}].values", f"must have 1 to {settings.max_vector_dimension} components"
            )
        check_finite({str(j): x for j, x in enumerate(v.values)}, f"vectors[{i}].values")
        if vector_name(np.asarray(v.values, dtype=np.float64)) != v.name:
            raise InvalidArgument.for_field(f"vectors[{i}].name", "is not the name of its values (docs/engine.md D-26)")
        if v.name in seen:
            raise InvalidArgument.for_field(f"vectors[{i}].name", f"repeats vectors[{seen[v.name]}].name")
        seen[v.name] = i
