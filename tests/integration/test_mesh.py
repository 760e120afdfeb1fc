"""Running in a mesh: mutual TLS, and calls spread over replicas by a round_robin client
(connections age out so a long-lived client rebalances)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kato_grpc import names
from kato_grpc.client import KatoClient
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, launch, new_server

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _pki(d: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed."""
    files = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files["ca-key"]), "-out",
             str(files["ca"]), "-days", "1", "-subj", "/CN=kato-test-ca")  # fmt: skip
    for who, san in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "subjectAltName=DNS:client")):
        csr, ext = d / f"{who}.csr", d / f"{who}.ext"
        ext.write_text(san + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files[f"{who}-key"]), "-out", str(csr),
                 "-subj", f"/CN={who}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
                 "-CAcreateserial", "-out", str(files[who]), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return files


def test_mutual_tls_refuses_a_client_without_a_certificate(stores: Stores, log_dir: Path, tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    server = new_server(*stores, log_dir)
    env = {"KATO_TLS_CERT_FILE": str(pki["server"]), "KATO_TLS_KEY_FILE": str(pki["server-key"]),
           "KATO_TLS_CLIENT_CA_FILE": str(pki["ca"])}  # fmt: skip
    server.env |= env
    server.proc = launch("kato_server", server.env, server.log_path)  # not waiting: TLS-only health
    ca = pki["ca"].read_bytes()
    request = svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("mtls")))
    try:
        with_cert = grpc.ssl_channel_credentials(ca, pki["client-key"].read_bytes(), pki["client"].read_bytes())
        with grpc.secure_channel(server.address, with_cert) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            assert svc_grpc.KatoServiceStub(channel).CreateSession(request).knowledge_base == "knowledgeBases/mtls"
        with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca)) as anonymous:
            with pytest.raises(grpc.RpcError) as refused:
                svc_grpc.KatoServiceStub(anonymous).CreateSession(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    finally:
        server.stop()


@pytest.fixture
def three_servers(stores: Stores, log_dir: Path) -> Iterator[list[ServerProcess]]:
    database = "kato_" + uuid.uuid4().hex[:8]
    servers = [new_server(*stores, log_dir, database).start(KATO_MAX_CONNECTION_AGE_SECONDS="2") for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


def test_round_robin_spreads_calls_over_replicas_and_results_stay_exact(three_servers: list[ServerProcess]) -> None:
    # One channel over the three processes, round_robin: each process keeps its own KB cache,
    # so GetKnowledgeBase answers "not cached" exactly once per process it reaches first.
    target = "ipv4:" + ",".join(s.address for s in three_servers)
    options = [("grpc.lb_policy_name", "round_robin")]
    kb = "spread-" + uuid.uuid4().hex
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = svc_grpc.KatoServiceStub(channel)
        first_time = [
            not stub.GetKnowledgeBase(svc.GetKnowledgeBaseRequest(name=names.knowledge_base(kb))).cache.cached
            for _ in range(30)
        ]
        # One first call per process: all three reached. Not necessarily the first three calls:
        # round_robin rotates over the subchannels READY at the time, and on a loaded machine
        # the third may connect a call or two late (seen in a CI run).
        assert sum(first_time) == 3 and first_time[0]
    # Sessions used through all three processes: every result exact.
    with KatoClient(target, load_balancing="round_robin") as kato:
        sessions = [kato.create_session(kb).name for _ in range(4)]
        for _ in range(3):
            for name in sessions:
                for word in ("a", "b", "c"):
                    kato.observe(name, [word])
                kato.learn(name)
        assert [kato.get_session(name).time for name in sessions] == [9] * 4
        learned = kato.get_pattern(names.pattern(kb, pattern_name([["a"], ["b"], ["c"]])))
        assert learned.frequency == 12
