"""The simulation's fixed budget in the test suite (docs/architecture.md §10):
seeded histories of calls, retries, store failures, crashes, expiries and relay passes over
the in-memory twins, every invariant checked after every step. ``make simulate`` runs more."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from kato_grpc import request_ids
from kato_grpc.access import Caller
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.stores.keys import Keys
from kato_server import kb_admin, kb_transfer
from tests.simulation.sim import HISTORY_STEPS, quiet_logs, simulate

FIRST_SEED = 1
HISTORIES = 120  # 18,120 steps (with the final quiesces): 11-13 s of CPU, 12-25 s on a shared 2-core machine


def test_seeded_histories_keep_every_invariant() -> None:
    with quiet_logs():
        summary = simulate(FIRST_SEED, HISTORIES, HISTORY_STEPS)
    assert summary.failure is None, summary.failure
    assert summary.histories == HISTORIES
    assert summary.steps >= HISTORIES * HISTORY_STEPS


def test_the_simulation_finds_a_write_id_shared_by_executions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant the simulation must kill: write ids derived from the request id alone, so a
    request id used again once its record is forgotten (another execution) is deduplicated by
    the ledger and its learn is lost (docs/architecture.md §5)."""

    correct = request_ids.identify_writes

    def shared(writes: list[storage.PatternWrite], session_id: str, request_id: str, fp: bytes, version: int) -> None:
        correct(writes, session_id, request_id, fp, version)
        if request_id:
            call = hashlib.sha256(request_id.encode()).hexdigest()[:24]
            for n, write in enumerate(writes):
                write.write_id = f"{session_id}:{call}:{n}"

    monkeypatch.setattr(request_ids, "identify_writes", shared)
    with quiet_logs():
        summary = simulate(FIRST_SEED, HISTORIES, HISTORY_STEPS, shrink_seconds=0)
    assert summary.failure is not None
    assert "[learn]" in summary.failure.splitlines()[0]


def test_the_simulation_finds_a_global_outbox_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant the simulation must kill: the due queue's key without the namespace, so that
    two deployments on one Redis share one queue — one's relay reads the other's marks and
    releases them, leaving that deployment's outboxes unmarked (docs/architecture.md §4)."""
    monkeypatch.setattr(Keys, "due", property(lambda self: "outbox:due"))
    with quiet_logs():
        summary = simulate(FIRST_SEED, HISTORIES, HISTORY_STEPS, shrink_seconds=0)
    assert summary.failure is not None
    assert "[deployment]" in summary.failure.splitlines()[0]


def test_the_simulation_finds_a_clear_that_wipes_again_when_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant the simulation must kill: ClearKnowledgeBase without the wipe's ledger id, as
    it was before the simulation found it (kb_admin.py): an attempt that wiped and then failed
    before its request id was recorded — or a retry running beside it — wipes the knowledge
    base a second time (the API: "the knowledge base is wiped once")."""
    monkeypatch.setattr(kb_admin, "_wipe_id", lambda *scope: "")
    with quiet_logs():
        summary = simulate(FIRST_SEED, HISTORIES, HISTORY_STEPS, shrink_seconds=0)
    assert summary.failure is not None
    assert "[request-id]" in summary.failure.splitlines()[0] and "wiped" in summary.failure.splitlines()[0]


def test_the_simulation_finds_an_import_batch_applied_again_when_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant the simulation must kill: an import's ledger ids made per stream instead of
    from (knowledge base, caller, import id, batch), so that a retried or resumed import
    applies its batches again (docs/formats.md: "never counts twice")."""
    streams = itertools.count()

    def per_stream(node: str, caller: Caller, import_id: str) -> str:
        return f"import:{node}:{caller.principal}:{import_id}:{next(streams)}"

    monkeypatch.setattr(kb_transfer, "_write_prefix", per_stream)
    with quiet_logs():
        summary = simulate(FIRST_SEED, HISTORIES, HISTORY_STEPS, shrink_seconds=0)
    assert summary.failure is not None
    assert "[import]" in summary.failure.splitlines()[0]
