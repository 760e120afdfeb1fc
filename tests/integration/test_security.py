"""Bearer-token auth scoped to nodes, and TLS (KATO_AUTH_TOKENS, KATO_TLS_*)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import launch, new_server

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
TOKENS = {"alice-token": ["alice"], "ops-token": ["*"]}


def _with(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_tokens_authenticate_and_scope_nodes(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir).start(KATO_AUTH_TOKENS=json.dumps(TOKENS))
    try:
        stub = server.stub()
        with pytest.raises(grpc.RpcError) as missing:
            stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("alice")))
            )
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong:
            stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("alice"))),
                metadata=_with("nope"),
            )
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

        alice = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("alice"))),
            metadata=_with("alice-token"),
        )
        bob = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("bob"))),
            metadata=_with("ops-token"),
        )
        with pytest.raises(grpc.RpcError) as other_node:
            stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("bob"))),
                metadata=_with("alice-token"),
            )
        assert other_node.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # alice's token cannot touch bob's session or bob's KB, whatever the call.
        denied: list[Callable[[], object]] = [
            lambda: stub.Observe(
                svc.ObserveRequest(name=bob.name, observation=pb.Observation(strings=["x"])),
                metadata=_with("alice-token"),
            ),
            lambda: stub.GetSession(svc.GetSessionRequest(name=bob.name), metadata=_with("alice-token")),
            lambda: stub.DeleteSession(svc.DeleteSessionRequest(name=bob.name), metadata=_with("alice-token")),
            lambda: stub.ListPatterns(
                svc.ListPatternsRequest(parent=names.knowledge_base("bob")), metadata=_with("alice-token")
            ),
            lambda: stub.ClearKnowledgeBase(
                svc.ClearKnowledgeBaseRequest(knowledge_base=names.knowledge_base("bob")), metadata=_with("alice-token")
            ),
        ]
        for call in denied:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.Observe(
            svc.ObserveRequest(name=alice.name, observation=pb.Observation(strings=["x"])),
            metadata=_with("alice-token"),
        )
        assert stub.GetSession(svc.GetSessionRequest(name=bob.name), metadata=_with("ops-token")).time == 0
        assert server.health() == 1  # probes need no token
        log = server.log_path.read_text()
        assert "alice-token" not in log and bob.name not in log
    finally:
        server.stop()


def test_tls_serves_encrypted_only(stores: Stores, log_dir: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = new_server(*stores, log_dir)
    server.env |= {"KATO_TLS_CERT_FILE": str(cert), "KATO_TLS_KEY_FILE": str(key)}
    server.proc = launch("kato_server", server.env, server.log_path)  # not waiting: TLS-only health
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.address, credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = svc_grpc.KatoServiceStub(channel)
            assert (
                stub.CreateSession(
                    svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("tls")))
                ).knowledge_base
                == "knowledgeBases/tls"
            )
        with grpc.insecure_channel(server.address) as plain, pytest.raises(grpc.RpcError):
            svc_grpc.KatoServiceStub(plain).CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("tls"))), timeout=3
            )
    finally:
        server.stop()


def test_a_token_lists_only_the_knowledge_bases_it_may_use(stores: Stores, log_dir: Path) -> None:
    """ListKnowledgeBases (issue 24, item 7): alice's token sees her KBs only, written ones
    only; the ops token (``*``) sees every KB of the database, a page at a time."""
    database = "kato_list_" + uuid.uuid4().hex[:8]
    tokens = {"alice-token": ["alice-1", "alice-2", "alice-unwritten"], "ops-token": ["*"]}
    server = new_server(*stores, log_dir, database).start(KATO_AUTH_TOKENS=json.dumps(tokens))
    try:
        stub = server.stub()
        for kb, token in (("alice-2", "alice-token"), ("alice-1", "alice-token"), ("bob", "ops-token")):
            sid = stub.CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(kb))),
                metadata=_with(token),
            ).name
            for symbol in ("x", "y"):
                stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[symbol])),
                             metadata=_with(token))  # fmt: skip
            stub.Learn(svc.LearnRequest(name=sid), metadata=_with(token))

        def listed(token: str, page_size: int) -> list[list[tuple[str, int]]]:
            pages, page_token = [], ""
            while True:
                page = stub.ListKnowledgeBases(
                    svc.ListKnowledgeBasesRequest(page_size=page_size, page_token=page_token), metadata=_with(token)
                )
                pages.append([(kb.name, kb.pattern_count) for kb in page.knowledge_bases])
                page_token = page.next_page_token
                if not page_token:
                    return pages

        alice = [(names.knowledge_base("alice-1"), 1), (names.knowledge_base("alice-2"), 1)]
        assert listed("alice-token", 10) == [alice]
        assert listed("alice-token", 1) == [[alice[0]], [alice[1]]]
        assert listed("ops-token", 2) == [alice, [(names.knowledge_base("bob"), 1)]]
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.ListKnowledgeBases(svc.ListKnowledgeBasesRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as bad_token:
            stub.ListKnowledgeBases(svc.ListKnowledgeBasesRequest(page_token="%%%"), metadata=_with("ops-token"))
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop()
