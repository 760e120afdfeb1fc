"""A KB that is only written — learned with predictions off, imported, a pattern deleted —
gets its snapshot after its quiet period from the process that wrote it, which caches none
of it for that (issue 23; architecture.md §4). The quiet period is 0 here: the snapshotter's
work runs as soon as the writes are done, with no timer (``_quiesced``)."""

from __future__ import annotations

import asyncio

from kato_grpc import names
from kato_grpc.access import ANYONE
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, collect, items, settings, stream_context

COPY = "kb-copy"


async def _quiesced() -> None:
    """Until every other task of the loop has ended (the snapshotter's, writing)."""
    me = asyncio.current_task()
    async with asyncio.timeout(60):  # bounds a hang only
        while any(t is not me and not t.done() for t in asyncio.all_tasks()):
            await asyncio.sleep(0)


def test_a_kb_only_written_gets_its_snapshot_and_is_not_kept_cached() -> None:
    kato = Kato(settings(kb_snapshot_min_patterns=3, kb_snapshot_quiet_seconds=0))

    async def main() -> None:
        cache, store = kato.service.cache, kato.pattern_store
        # Bulk training as `kato train` does it: predictions off, a pattern per sequence.
        session = await kato.create(config=pb.SessionConfig(process_predictions=False))
        observations = [pb.Observation(strings=[s]) for s in "abcdef"]
        request = svc.ObserveSequenceRequest(name=session.name, observations=observations, learn_after=[1, 3, 5])
        learned = await kato.use.observing.observe_sequence(request, ANYONE)
        assert len(learned.auto_learned_patterns) == 3
        await _quiesced()
        assert list(store.kb(KB).snapshots) == [store.kb(KB).version]
        assert cache.cached_version(KB) is None and cache.total_bytes == 0

        # An import (an export read from the store: it caches nothing either).
        export = svc.ExportKnowledgeBaseRequest(name=names.knowledge_base(KB))
        exported = [
            p for part in await collect(kato.use.ExportKnowledgeBase(export, stream_context())) for p in part.patterns
        ]
        for item in exported:
            item.pattern.name = names.pattern(COPY, item.pattern.name.rsplit("/", 1)[1])
        request_import = svc.ImportKnowledgeBaseRequest(
            knowledge_base=names.knowledge_base(COPY), import_id="i-1", patterns=exported
        )
        await kato.use.ImportKnowledgeBase(items([request_import]), stream_context())
        await _quiesced()
        assert list(store.kb(COPY).snapshots) == [store.kb(COPY).version]
        assert cache.cached_version(COPY) is None

        # A delete is a write too: the next snapshot follows it.
        await kato.use.admin.delete_pattern(svc.DeletePatternRequest(name=learned.auto_learned_patterns[0]), ANYONE)
        await _quiesced()
        assert list(store.kb(KB).snapshots) == [store.kb(KB).version]
        assert store.kb(KB).events[-1].kind == "deleted"
        assert cache.cached_version(KB) is None

    try:
        kato.run(main())
    finally:
        kato.close()
