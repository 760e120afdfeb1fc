"""The request messages of every RPC, built from plain arguments (shared by both clients).

Mutating calls get a fresh ``request_id`` unless one is given: the client retries with the
same message, so the server applies the call once (AIP-155). Knowledge bases may be given
as a name (``knowledgeBases/demo``) or as KATO's node id (``demo``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import field_mask_pb2, json_format, struct_pb2

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

Config = pb.SessionConfig | Mapping[str, Any] | None


def new_request_id() -> str:
    return uuid.uuid4().hex


def knowledge_base(kb: str) -> str:
    """A knowledge base's name, from its name or its node id."""
    return kb if kb.startswith(names.KNOWLEDGE_BASES) else names.knowledge_base(kb)


def config(value: Config) -> pb.SessionConfig | None:
    """A SessionConfig from a message or a plain mapping (enum values by name: "STM_MODE_ROLLING")."""
    if value is None or isinstance(value, pb.SessionConfig):
        return value
    return json_format.ParseDict(dict(value), pb.SessionConfig())


def observation(
    strings: Iterable[str] = (),
    *,
    vectors: Iterable[Sequence[float]] = (),
    emotives: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    unique_id: str = "",
) -> pb.Observation:
    """One observation; metadata values are any JSON values (D-29)."""
    obs = pb.Observation(strings=list(strings), emotives=dict(emotives or {}), unique_id=unique_id)
    for v in vectors:
        obs.vectors.add(values=list(v))
    for key, value in (metadata or {}).items():
        obs.metadata[key].CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
    return obs


def create_session(
    kb: str, cfg: Config = None, ttl_seconds: int = 0, metadata: Mapping[str, str] | None = None, request_id: str = ""
) -> svc.CreateSessionRequest:
    session = svc.Session(knowledge_base=knowledge_base(kb), ttl_seconds=ttl_seconds, metadata=dict(metadata or {}))
    built = config(cfg)
    if built is not None:
        session.config.CopyFrom(built)
    return svc.CreateSessionRequest(session=session, request_id=request_id or new_request_id())


def update_session(session: svc.Session, paths: Sequence[str] = (), request_id: str = "") -> svc.UpdateSessionRequest:
    mask = field_mask_pb2.FieldMask(paths=list(paths)) if paths else None
    return svc.UpdateSessionRequest(session=session, update_mask=mask, request_id=request_id or new_request_id())


def update_pattern(pattern: pb.Pattern, paths: Sequence[str] = ()) -> svc.UpdatePatternRequest:
    mask = field_mask_pb2.FieldMask(paths=list(paths)) if paths else None
    return svc.UpdatePatternRequest(pattern=pattern, update_mask=mask)


def clear_knowledge_base(
    session: str | None = None, kb: str | None = None, request_id: str = ""
) -> svc.ClearKnowledgeBaseRequest:
    if (session is None) == (kb is None):
        raise ValueError("name exactly one of session and knowledge_base")
    rid = request_id or new_request_id()
    if session is not None:
        return svc.ClearKnowledgeBaseRequest(session=session, request_id=rid)
    return svc.ClearKnowledgeBaseRequest(knowledge_base=knowledge_base(str(kb)), request_id=rid)


def observe(
    session: str, strings: Iterable[str], return_predictions: bool, request_id: str, **fields: Any
) -> svc.ObserveRequest:
    return svc.ObserveRequest(
        name=session,
        observation=observation(strings, **fields),
        return_predictions=return_predictions,
        request_id=request_id or new_request_id(),
    )


def observe_sequence(
    session: str, observations: Iterable[pb.Observation], request_id: str, learn_after: Iterable[int], **flags: bool
) -> svc.ObserveSequenceRequest:
    """``flags``: learn_after_each, learn_at_end, clear_stm_between, return_predictions."""
    return svc.ObserveSequenceRequest(
        name=session,
        observations=list(observations),
        request_id=request_id or new_request_id(),
        learn_after=list(learn_after),
        **flags,
    )


def learn(session: str, request_id: str) -> svc.LearnRequest:
    return svc.LearnRequest(name=session, request_id=request_id or new_request_id())


def clear_short_term_memory(session: str, request_id: str) -> svc.ClearShortTermMemoryRequest:
    return svc.ClearShortTermMemoryRequest(name=session, request_id=request_id or new_request_id())


def list_patterns(kb: str, page_size: int, page_token: str) -> svc.ListPatternsRequest:
    return svc.ListPatternsRequest(parent=knowledge_base(kb), page_size=page_size, page_token=page_token)


def get_symbol(kb: str, symbol: str) -> svc.GetSymbolRequest:
    node = str(names.parse_knowledge_base(knowledge_base(kb)))
    return svc.GetSymbolRequest(name=names.symbol(node, symbol))


def list_symbols(kb: str, page_size: int, page_token: str) -> svc.ListSymbolsRequest:
    return svc.ListSymbolsRequest(parent=knowledge_base(kb), page_size=page_size, page_token=page_token)


def import_requests(
    kb: str,
    import_id: str,
    patterns: Iterable[svc.ExportedPattern | pb.Pattern],
    vectors: Iterable[svc.NamedVector] = (),
    batch_size: int = 500,
    first_batch: int = 0,
) -> Iterator[svc.ImportKnowledgeBaseRequest]:
    """An ImportKnowledgeBase stream: the patterns, then the vectors, ``batch_size`` a message
    (fewer when they would pass ``IMPORT_MESSAGE_BYTES``), batches numbered from
    ``first_batch`` (the same numbers for the same input, so an import resumed with the same
    ``import_id`` skips what was applied)."""
    name, batch = knowledge_base(kb), first_batch
    first = True

    def message(**items: Any) -> svc.ImportKnowledgeBaseRequest:
        nonlocal first, batch
        out = svc.ImportKnowledgeBaseRequest(knowledge_base=name, import_id=import_id, batch=batch, **items)
        first, batch = False, batch + 1
        return out

    exported = (p if isinstance(p, svc.ExportedPattern) else svc.ExportedPattern(pattern=p) for p in patterns)
    for chunk in _chunks(exported, batch_size):
        yield message(patterns=chunk)
    for chunk in _chunks(vectors, batch_size):
        yield message(vectors=chunk)
    if first:  # nothing to import: still say where, so the server answers with the KB
        yield message()


# What an import message holds besides patterns that fill it: a server's default message
# limit is 4 MiB, and one pattern alone may be larger (the server takes it: D-31).
IMPORT_MESSAGE_BYTES = 3 * 1024 * 1024


def _chunks(items: Iterable[Any], size: int, max_bytes: int = IMPORT_MESSAGE_BYTES) -> Iterator[list[Any]]:
    """At most ``size`` items and, but for a single item, ``max_bytes`` a chunk (the same
    chunks for the same items: a resumed import numbers its batches as the first run did)."""
    chunk: list[Any] = []
    held = 0
    for item in items:
        item_bytes = item.ByteSize() + 8  # with its tag and length
        if chunk and held + item_bytes > max_bytes:
            yield chunk
            chunk, held = [], 0
        chunk.append(item)
        held += item_bytes
        if len(chunk) == size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def watch(kb: str, since_version: int | None) -> svc.WatchKnowledgeBaseRequest:
    request = svc.WatchKnowledgeBaseRequest(name=knowledge_base(kb))
    if since_version is not None:
        request.since_version = since_version
    return request
