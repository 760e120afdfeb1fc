"""Issue 21 (6): what a pattern accumulates over its learns — metadata values, emotive
records, the emotive names whose affinity it keeps — is bounded (engine.md D-31), so that
however it was learned a pattern stays observable, exportable and importable with the
server's default limits; and a session's copy of its last predictions never makes an
Observe fail."""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any

import grpc
from google.protobuf import json_format

from kato_grpc import names
from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
from kato_grpc.engine import records
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server.devserver import ServerProcess

QUIET = {"process_predictions": False}


def _metadata_bytes(pattern: pb.Pattern) -> int:
    values = json_format.MessageToDict(pattern, preserving_proto_field_name=True).get("metadata", {})
    return sum(len(k.encode()) + len(records.canonical_json(v).encode()) for k, vs in values.items() for v in vs)


def _copy_with_default_limits(
    server: ServerProcess, source: str, target: str, receive: int | None = None
) -> svc.ImportKnowledgeBaseResponse:
    """Export and import through a plain channel: grpc's default limits (4 MiB received),
    or ``receive`` bytes received (a pattern alone may be larger than a default message)."""
    options = [] if receive is None else [("grpc.max_receive_message_length", receive)]
    with grpc.insecure_channel(server.address, options) as channel:
        stub = svc_grpc.KatoServiceStub(channel)
        parts = list(stub.ExportKnowledgeBase(svc.ExportKnowledgeBaseRequest(name=names.knowledge_base(source))))
        patterns = [p for part in parts for p in part.patterns]
        return stub.ImportKnowledgeBase(build.import_requests(target, "copy", patterns))


def _same_pattern(kato: KatoClient, source: str, target: str, name: str) -> None:
    original, copy = kato.get_pattern(name), kato.get_pattern(name.replace(source, target, 1))
    original.ClearField("name")
    copy.ClearField("name")
    assert copy == original


def test_ten_learns_each_with_new_metadata_keep_a_pattern_usable(server: ServerProcess) -> None:
    """The issue's case: each learn brings ~1.4 MiB of new metadata values (within limits)."""
    kb, copy = "meta-" + uuid.uuid4().hex, "meta-copy-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        for learn in range(10):
            session = kato.create_session(kb, config=QUIET).name
            values: dict[str, Any] = {f"k{j}": f"{learn}-{j}-" + "v" * 100_000 for j in range(14)}
            kato.observe(session, ["a"], metadata=values)
            kato.observe(session, ["b"])
            name = kato.learn(session).pattern
        pattern = kato.get_pattern(name)
        assert pattern.frequency == 10
        assert 0 < _metadata_bytes(pattern) <= records.MAX_PATTERN_METADATA_BYTES  # the first values that fit
        assert [v.string_value[:4] for v in pattern.metadata["k0"].values] == ["0-0-"]
        observer = kato.create_session(kb).name
        seen = kato.observe(observer, ["a"], return_predictions=True)  # was RESOURCE_EXHAUSTED
        assert [p.pattern for p in seen.predictions] == [name]
        assert _copy_with_default_limits(server, kb, copy).patterns == 1
        _same_pattern(kato, kb, copy, name)


def test_a_large_pattern_with_all_it_can_accumulate_exports_and_imports(server: ServerProcess) -> None:
    """A pattern near the session's size, learned three times with new metadata, emotive
    records and emotive names each time: larger than a default message, still copied."""
    kb, copy = "big-" + uuid.uuid4().hex, "big-copy-" + uuid.uuid4().hex
    events = [[f"{e:03}-{s:03}-" + "x" * 392 for s in range(100)] for e in range(94)]  # 3.8 MB of symbols
    with KatoClient(server.address) as kato:
        for learn in range(3):
            session = kato.create_session(kb, config={**QUIET, "persistence": 100}).name
            emotives = {f"{learn}-{j:03}-" + "e" * 1018: 0.5 for j in range(100)}  # ~103 KB a record
            metadata = {"doc": f"{learn}-" + "m" * 128_000}
            kato.observe(session, events[0], emotives=emotives, metadata=metadata)
            for event in events[1:]:
                kato.observe(session, event)
            name = kato.learn(session).pattern
        pattern = kato.get_pattern(name)
        assert pattern.frequency == 3 and pattern.ByteSize() > 4 * 1024 * 1024  # over a default message
        assert len(pattern.metadata["doc"].values) == 2  # the third did not fit
        assert sum(records.emotive_bytes(r.values) for r in pattern.emotives) <= records.MAX_PATTERN_EMOTIVE_BYTES
        # The server takes an import message as large as its largest pattern needs.
        assert _copy_with_default_limits(server, kb, copy, receive=8 * 1024 * 1024).patterns == 1
        _same_pattern(kato, kb, copy, name)
        exported = [p for part in kato.export_knowledge_base(copy) for p in part.patterns]
        assert sum(len(k.encode()) + 8 for k in exported[0].affinity) <= records.MAX_PATTERN_AFFINITY_BYTES


def test_an_observe_matching_many_heavy_patterns_succeeds(server: ServerProcess) -> None:
    """Twenty-four patterns with ~240 KB of metadata each, all matching: their predictions
    exceed a session's 4 MiB even compressed (random base64: ~77 % of it stays); the session
    keeps the best ranked, the answer has them all."""
    kb = "heavy-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        for i in range(24):
            session = kato.create_session(kb, config=QUIET).name
            noise = base64.b64encode(random.Random(i).randbytes(180_000)).decode()
            kato.observe(session, ["a"], metadata={"m": f"{i}-{noise}"})
            kato.observe(session, [f"b{i}"])
            kato.learn(session)
        observer = kato.create_session(kb).name
        seen = kato.observe(observer, ["a"], return_predictions=True)
        assert len(seen.predictions) == 24
        kept = kato.get_cognition_data(observer).predictions
        assert 0 < len(kept) < 24
        assert [p.pattern for p in kept] == [p.pattern for p in seen.predictions[: len(kept)]]
        assert json.dumps(len(kept))  # (a count, for the log when it fails)
