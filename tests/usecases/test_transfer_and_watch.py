"""ExportKnowledgeBase / ImportKnowledgeBase and WatchKnowledgeBase over the twins, in process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from google.protobuf import struct_pb2

from kato_grpc import names
from kato_grpc.access import ANYONE
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, collect, items, stream_context

KB_NAME = names.knowledge_base(KB)
COPY = "kb-copy"


async def _teach(kato: Kato) -> None:
    """Patterns with emotives, metadata and a frequency above one."""
    s = await kato.create()
    for strings, emotives in ((["a", "b"], {"joy": 0.5}), (["c"], {"joy": -1.0, "fear": 2.0})):
        observation = pb.Observation(strings=strings, emotives=emotives)
        observation.metadata["source"].CopyFrom(struct_pb2.Value(string_value="camera"))
        await kato.use.observing.observe(svc.ObserveRequest(name=s.name, observation=observation), ANYONE)
    await kato.learn(s.name)
    for _ in range(2):
        await kato.learned(s.name, ["c"], ["d"])


async def _export(kato: Kato, kb: str) -> list[svc.ExportKnowledgeBaseResponse]:
    request = svc.ExportKnowledgeBaseRequest(name=names.knowledge_base(kb), batch_size=2)
    return await collect(kato.use.ExportKnowledgeBase(request, stream_context()))


def _imports(
    exported: list[svc.ExportKnowledgeBaseResponse], kb: str, import_id: str
) -> list[svc.ImportKnowledgeBaseRequest]:
    return [
        svc.ImportKnowledgeBaseRequest(
            knowledge_base=names.knowledge_base(kb),
            import_id=import_id,
            batch=i,
            patterns=m.patterns,
            vectors=m.vectors,
        )
        for i, m in enumerate(exported[1:])
    ]


def _patterns(exported: list[svc.ExportKnowledgeBaseResponse], kb: str) -> list[svc.ExportedPattern]:
    """The exported patterns by name, named as if in ``kb``."""
    out = []
    for message in exported[1:]:
        for item in message.patterns:
            copy = svc.ExportedPattern()
            copy.CopyFrom(item)
            copy.pattern.name = names.pattern(kb, item.pattern.name.rsplit("/", 1)[1])
            out.append(copy)
    return sorted(out, key=lambda p: p.pattern.name)


async def _symbols(kato: Kato, kb: str) -> list[tuple[str, int, int, float, dict[str, float]]]:
    listed = await kato.use.stats.list_symbols(svc.ListSymbolsRequest(parent=names.knowledge_base(kb)), ANYONE)
    return [
        (s.symbol, s.frequency, s.pattern_member_frequency, s.probability, dict(s.affinity)) for s in listed.symbols
    ]


def test_an_exported_knowledge_base_imports_into_another_identically(kato: Kato) -> None:
    async def main() -> None:
        await _teach(kato)
        exported = await _export(kato, KB)
        header = exported[0].header
        assert (header.format_version, header.knowledge_base.pattern_count) == (1, 2)
        assert header.knowledge_base.total_pattern_frequencies == 3
        answer = await kato.use.ImportKnowledgeBase(items(_imports(exported, COPY, "i-1")), stream_context())
        assert (answer.batches, answer.applied_batches, answer.patterns) == (1, 1, 2)
        assert answer.knowledge_base.pattern_count == 2
        copied = await _export(kato, COPY)
        assert _patterns(copied, COPY) == _patterns(exported, COPY)
        assert any(p.affinity for p in _patterns(exported, COPY))  # the learns' affinity travels
        assert await _symbols(kato, COPY) == await _symbols(kato, KB)
        stats = [
            await kato.use.stats.get_knowledge_base(svc.GetKnowledgeBaseRequest(name=names.knowledge_base(kb)), ANYONE)
            for kb in (KB, COPY)
        ]
        counts = [(k.pattern_count, k.total_pattern_frequencies, k.symbol_count) for k in stats]
        assert counts[0] == counts[1] == (2, 3, 4)

    kato.run(main())


def test_a_batch_imported_twice_under_one_import_id_counts_once(kato: Kato) -> None:
    async def main() -> None:
        await _teach(kato)
        exported = await _export(kato, KB)
        transfer = kato.use.transfer

        async def send(import_id: str) -> svc.ImportKnowledgeBaseResponse:
            run = transfer.start_import(ANYONE)
            for request in _imports(exported, COPY, import_id):
                await run.add(request)
            return await run.finish()

        first = await send("i-1")
        version = kato.pattern_store.kb(COPY).version
        again = await send("i-1")
        assert (again.batches, again.applied_batches, again.patterns) == (1, 0, 0)
        assert again.knowledge_base.total_pattern_frequencies == first.knowledge_base.total_pattern_frequencies == 3
        assert kato.pattern_store.kb(COPY).version == version
        another = await send("i-2")  # another import id is another import: it counts
        assert (another.applied_batches, another.knowledge_base.total_pattern_frequencies) == (1, 6)

    kato.run(main())


Watch = AsyncGenerator[svc.WatchKnowledgeBaseResponse | None, None]


@contextlib.asynccontextmanager
async def _watching(kato: Kato, since: int) -> AsyncIterator[Watch]:
    """A watch of KB after ``since``, closed at the end (its feed's poll stops)."""
    watch = kato.use.watch.watch(svc.WatchKnowledgeBaseRequest(name=KB_NAME, since_version=since), ANYONE)
    try:
        yield cast(Watch, watch)
    finally:
        await cast(Watch, watch).aclose()


async def _events(
    watch: AsyncIterator[svc.WatchKnowledgeBaseResponse | None], count: int
) -> list[tuple[int, int, str]]:
    """The next ``count`` events of a watch as (kind, version, pattern)."""
    out: list[tuple[int, int, str]] = []
    while len(out) < count:
        response = await anext(watch)
        if response is not None:  # None: idle
            out += [(e.kind, e.version, e.pattern) for e in response.events]
    return out


def test_a_watch_gets_the_changes_after_its_version_in_order_a_wipe_included(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        ab = await kato.learned(s.name, ["a"], ["b"])  # 1
        assert await kato.learned(s.name, ["a"], ["b"]) == ab  # 2
        cd = await kato.learned(s.name, ["c"], ["d"])  # 3
        await kato.use.admin.delete_pattern(svc.DeletePatternRequest(name=cd), ANYONE)  # 4
        await kato.use.admin.clear_knowledge_base(svc.ClearKnowledgeBaseRequest(knowledge_base=KB_NAME), ANYONE)  # 5
        ef = await kato.learned(s.name, ["e"], ["f"])  # 6
        expected = [
            (svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED, 1, ab),
            (svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_RELEARNED, 2, ab),
            (svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED, 3, cd),
            (svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED, 4, cd),
            (svc.KNOWLEDGE_BASE_EVENT_KIND_CLEARED, 5, ""),
            (svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED, 6, ef),
        ]
        for since in (0, 3):
            async with _watching(kato, since) as watch:
                assert await _events(watch, 6 - since) == expected[since:]

    kato.run(main())


def test_a_watch_gets_a_change_committed_while_it_waits(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.learned(s.name, ["a"], ["b"])
        since = kato.pattern_store.kb(KB).version
        async with _watching(kato, since) as watch:
            waiting = asyncio.ensure_future(_events(watch, 1))
            try:
                learned = await kato.learned(s.name, ["c"], ["d"])
                assert await waiting == [(svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED, since + 1, learned)]
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)

    kato.run(main())
