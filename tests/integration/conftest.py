"""Session-wide local Redis and MongoDB-compatible servers and one KATO server process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server


@pytest.fixture(scope="session")
def stores(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[devstack.LocalServer, devstack.LocalServer]]:
    with devstack.local_stores(tmp_path_factory.mktemp("stores"), throwaway=True) as servers:
        yield servers


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def server(stores: tuple[devstack.LocalServer, devstack.LocalServer], log_dir: Path) -> Iterator[ServerProcess]:
    proc = new_server(*stores, log_dir).start()
    yield proc
    proc.stop()


Stores = tuple[devstack.LocalServer, devstack.LocalServer]


@pytest.fixture
def two_servers(stores: Stores, log_dir: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes sharing the stores and a database of their own."""
    database = "kato_" + uuid.uuid4().hex[:8]
    a = new_server(*stores, log_dir, database).start()
    b = new_server(*stores, log_dir, database).start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def stub(server: ServerProcess) -> svc_grpc.KatoServiceStub:
    return server.stub()


@pytest.fixture
def node_id() -> str:
    return "node-" + uuid.uuid4().hex
