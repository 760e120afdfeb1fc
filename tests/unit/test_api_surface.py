"""The public API shows what clients send and receive, nothing of how sessions are stored."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FileDescriptor

from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.v1 import kato_service_pb2 as svc

STORAGE = {"SessionState", "PatternWrite", "Outbox", "RequestRecord", "MetadataRecord", "PendingVector"}


def _closure(root: FileDescriptor) -> list[FileDescriptor]:
    seen: dict[str, FileDescriptor] = {}
    todo = [root]
    while todo:
        f = todo.pop()
        if f.name not in seen:
            seen[f.name] = f
            todo.extend(f.dependencies)
    return list(seen.values())


def test_storage_messages_are_not_reachable_from_the_service() -> None:
    # What reflection serves for KatoService: its file and everything it imports.
    files = _closure(svc.DESCRIPTOR)
    assert all(not f.package.startswith("kato.internal") for f in files)
    public = {name for f in files if f.package == "kato.v1" for name in f.message_types_by_name}
    assert not public & STORAGE
    assert set(storage.DESCRIPTOR.message_types_by_name) >= STORAGE  # they live here instead


def _fields(message: Descriptor) -> list[tuple[str, int, int, bool]]:
    return [(f.name, f.number, f.type, f.has_presence) for f in message.fields]


def test_observe_stream_messages_are_observes_field_for_field() -> None:
    # The server decodes ObserveStream's messages as Observe's and encodes its answers so
    # (server/kato_server/handlers.py): the two pairs must never drift apart.
    assert _fields(svc.ObserveStreamRequest.DESCRIPTOR) == _fields(svc.ObserveRequest.DESCRIPTOR)
    assert _fields(svc.ObserveStreamResponse.DESCRIPTOR) == _fields(svc.ObserveResponse.DESCRIPTOR)
    for a, b in zip(svc.ObserveStreamRequest.DESCRIPTOR.fields, svc.ObserveRequest.DESCRIPTOR.fields, strict=True):
        assert (a.message_type and a.message_type.full_name) == (b.message_type and b.message_type.full_name)


def test_every_rpc_answers_with_its_own_message_or_the_resource() -> None:
    # AIP: standard methods return the resource (or Empty for Delete); every other method has
    # its own <Rpc>Response, so each can grow without touching the others.
    resources = {
        "kato.v1.Session",
        "kato.v1.Pattern",
        "kato.v1.KnowledgeBase",
        "kato.v1.Symbol",
        "google.protobuf.Empty",
    }
    for method in svc.DESCRIPTOR.services_by_name["KatoService"].methods:
        output = method.output_type.full_name
        assert output in resources or output == f"kato.v1.{method.name}Response", method.name
        assert method.input_type.full_name == f"kato.v1.{method.name}Request", method.name
