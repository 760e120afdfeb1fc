"""The public API shows what clients send and receive, nothing of how sessions are stored."""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor

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
