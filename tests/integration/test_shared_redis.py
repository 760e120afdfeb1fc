"""Issue 21 (1): deployments that share one Redis — a set-up as ordinary as staging beside
production — own disjoint key namespaces. A relay only ever applies its own deployment's
outboxes, into its own database; a namespace is bound to one MongoDB database."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
import redis

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.stores.keys import Keys, namespace_for
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import ROOT, new_server
from tests.integration.crashing_server import CRASH_EXIT_CODE
from tests.integration.support import doomed_session, eventually, frequency

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
# Both deployments on this Redis database (the one other tests use too: namespaces, not
# database numbers, keep them apart).
SHARED_DB = 0
QUICK_RELAY = {"KATO_OUTBOX_RELAY_AFTER_SECONDS": "0.2", "KATO_OUTBOX_RELAY_INTERVAL_SECONDS": "0.1"}


def _cut_off(stores: Stores, log_dir: Path, database: str) -> tuple[str, str]:
    """A learn committed in ``database``'s namespace whose server died before applying it:
    (session name, the pattern's name)."""
    doomed, stub, node, sid = doomed_session(stores, log_dir, SHARED_DB, database)
    with pytest.raises(grpc.RpcError):
        stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"), timeout=30)
    assert doomed.proc is not None and doomed.proc.wait(30) == CRASH_EXIT_CODE
    return sid, names.pattern(node, pattern_name([["a"], ["b"]]))


def test_a_relay_applies_only_its_own_deployments_learns(stores: Stores, log_dir: Path) -> None:
    db_a, db_b = "kato_a_" + uuid.uuid4().hex[:8], "kato_b_" + uuid.uuid4().hex[:8]
    sid_a, pattern_a = _cut_off(stores, log_dir, db_a)  # A's learn, cut off first
    _, pattern_b = _cut_off(stores, log_dir, db_b)
    b = new_server(*stores, log_dir, db_b, redis_db=SHARED_DB).start(**QUICK_RELAY)
    try:
        stub_b = b.stub()
        # B's relay applies B's own outbox; A's mark is older, so any pass that could see it
        # would have taken it first.
        assert eventually(lambda: frequency(stub_b, pattern_b) == 1), "B's relay applied B's learn"
        assert frequency(stub_b, pattern_a) == 0  # not applied into B's database
        with redis.Redis(port=stores[0].port, db=SHARED_DB) as r:
            keys_a = Keys(namespace_for(db_a))
            assert r.exists(keys_a.outbox(sid_a.removeprefix("sessions/"))) == 1  # A's outbox waits for A
            assert r.zscore(keys_a.due, sid_a.removeprefix("sessions/")) is not None
    finally:
        b.stop()
    a = new_server(*stores, log_dir, db_a, redis_db=SHARED_DB).start(**QUICK_RELAY)
    try:
        stub_a = a.stub()
        assert eventually(lambda: frequency(stub_a, pattern_a) == 1), "A, restarted, applied its own learn"
        retry = stub_a.Learn(svc.LearnRequest(name=sid_a, request_id="learn-once"))
        assert retry.pattern == pattern_a  # the recorded answer: the learn happened once
        assert frequency(stub_a, pattern_a) == 1
        assert frequency(stub_a, pattern_b) == 0
    finally:
        a.stop()


def test_a_namespace_serves_one_database(stores: Stores, log_dir: Path) -> None:
    first = new_server(*stores, log_dir, "kato_ns_" + uuid.uuid4().hex[:8], redis_db=SHARED_DB).start()
    namespace = "shared-" + uuid.uuid4().hex[:8]
    first.stop()
    first.start(KATO_REDIS_NAMESPACE=namespace)  # binds the namespace to its database
    try:
        env = new_server(*stores, log_dir, "kato_other_" + uuid.uuid4().hex[:8], redis_db=SHARED_DB).env
        refused = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
            [sys.executable, "-m", "kato_server"],
            cwd=ROOT,
            env=env | {"KATO_REDIS_NAMESPACE": namespace},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2
        assert "KATO_REDIS_NAMESPACE" in refused.stderr and namespace in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        first.stop()
    first.start(KATO_REDIS_NAMESPACE=namespace)  # its own database: welcome back
    first.stop()
