"""WatchKnowledgeBase: every committed change of a knowledge base, whichever process made it,
in version order; from a given version; a watcher that falls behind is told to resync."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from kato_grpc import names
from kato_grpc.client import InvalidArgument, KatoClient
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.integration.support import eventually
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
Event = tuple[str, int, str]  # (kind, version, pattern id)
KIND = {v: k.removeprefix("KNOWLEDGE_BASE_EVENT_KIND_") for k, v in svc.KnowledgeBaseEventKind.items()}


def _learn(kato: KatoClient, kb: str, *words: str) -> str:
    session = kato.create_session(kb)
    for word in words:
        kato.observe(session.name, [word])
    return kato.learn(session.name).pattern


def _events(parts: list[svc.WatchKnowledgeBaseResponse]) -> list[Event]:
    return [
        (KIND[e.kind], e.version, names.pattern_id(e.pattern) if e.pattern else "") for p in parts for e in p.events
    ]


def _collect(
    kato: KatoClient, kb: str, since: int | None, until: int, out: list[svc.WatchKnowledgeBaseResponse]
) -> None:
    for part in kato.watch_knowledge_base(kb, since_version=since):
        out.append(part)
        if part.events and part.events[-1].version >= until:
            return


def test_a_watcher_sees_every_process_changes_in_order(two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_servers
    kb = "watched-" + uuid.uuid4().hex
    with KatoClient(a.address) as watcher, KatoClient(b.address) as writer:
        start = watcher.get_knowledge_base(kb).version
        seen: list[svc.WatchKnowledgeBaseResponse] = []
        # Changes through process b, watched through process a (a learn, a re-learn of it, an
        # update, a delete, a wipe): expected versions start + 1 .. start + 6.
        # From the version read before (however late the stream opens: no race with the writes).
        thread = threading.Thread(target=_collect, args=(watcher, kb, start, start + 6, seen), daemon=True)
        thread.start()
        first = _learn(writer, kb, "a", "b")
        _learn(writer, kb, "a", "b")
        second = _learn(writer, kb, "c", "d")
        writer.update_pattern(pb.Pattern(name=first, frequency=9))
        writer.delete_pattern(second)
        writer.clear_knowledge_base(knowledge_base=kb)
        thread.join(60)
        assert not thread.is_alive(), "the watcher saw the last change"
        ab, cd = pattern_name([["a"], ["b"]]), pattern_name([["c"], ["d"]])
        assert _events(seen) == [
            ("PATTERN_LEARNED", start + 1, ab),
            ("PATTERN_RELEARNED", start + 2, ab),
            ("PATTERN_LEARNED", start + 3, cd),
            ("PATTERN_UPDATED", start + 4, ab),
            ("PATTERN_DELETED", start + 5, cd),
            ("CLEARED", start + 6, ""),
        ]
        assert all(e.pattern.startswith(names.pattern_prefix(kb)) for p in seen for e in p.events if e.pattern)


def test_a_watch_from_a_version_replays_what_followed(server: ServerProcess) -> None:
    kb = "replayed-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        start = kato.get_knowledge_base(kb).version
        learned = [names.pattern_id(_learn(kato, kb, f"x{i}", f"y{i}")) for i in range(4)]
        seen: list[svc.WatchKnowledgeBaseResponse] = []
        _collect(kato, kb, start + 1, start + 4, seen)
        assert _events(seen) == [("PATTERN_LEARNED", start + 2 + i, learned[1 + i]) for i in range(3)]
        with pytest.raises(InvalidArgument):
            next(iter(kato.watch_knowledge_base(kb, since_version=-1)))


def test_a_watcher_too_far_behind_is_told_to_resync(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8]).start(KATO_WATCH_MAX_LAG="3")
    kb = "lagging-" + uuid.uuid4().hex
    try:
        with KatoClient(server.address) as kato:
            for i in range(6):
                _learn(kato, kb, f"p{i}", f"q{i}")
            current = kato.get_knowledge_base(kb).version
            parts = kato.watch_knowledge_base(kb, since_version=0)
            assert next(iter(parts)).resync_from_version == current
            last = _learn(kato, kb, "after", "resync")
            follow = next(iter(parts))
            assert _events([follow]) == [("PATTERN_LEARNED", current + 1, names.pattern_id(last))]
    finally:
        server.stop()


def test_watchers_of_a_kb_in_one_process_share_its_reads(stores: Stores, log_dir: Path) -> None:
    """Issue 21: 320 watchers each polling and reading the log made every learn 3.8x slower.
    Forty watchers here read the log as often as one does: once per change."""
    port = devstack.free_port()
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8]).start(KATO_METRICS_PORT=str(port))
    kb = "shared-" + uuid.uuid4().hex
    reads = 'kato_store_duration_seconds_count{operation="events_since",store="mongodb"}'
    try:
        with KatoClient(server.address) as kato:
            start = kato.get_knowledge_base(kb).version
            seen = [list[svc.WatchKnowledgeBaseResponse]() for _ in range(40)]
            threads = [
                threading.Thread(target=_collect, args=(kato, kb, start, start + 5, out), daemon=True) for out in seen
            ]
            for thread in threads:
                thread.start()
            assert eventually(lambda: scrape(port).get("kato_rpc_in_flight", 0) >= 40), "every watch is open"
            before = scrape(port).get(reads, 0.0)
            learned = [names.pattern_id(_learn(kato, kb, f"w{i}", f"x{i}")) for i in range(5)]
            for thread in threads:
                thread.join(60)
                assert not thread.is_alive(), "every watcher saw the last change"
            for out in seen:
                assert [e[2] for e in _events(out)] == learned  # each watcher, every change
            assert scrape(port).get(reads, 0.0) - before <= 10  # not 40 watchers × 5 changes
    finally:
        server.stop()
