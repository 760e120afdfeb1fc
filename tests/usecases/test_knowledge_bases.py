"""Patterns (get, list, update, delete), KB administration and statistics over the twins."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from google.protobuf import field_mask_pb2

from kato_grpc import names
from kato_grpc.access import ANYONE, Caller
from kato_grpc.errors import NotFound, PermissionDenied, StoreUnavailable
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, expect, session_id

KB_NAME = names.knowledge_base(KB)


async def _learn_three(kato: Kato) -> list[str]:
    s = await kato.create()
    return [await kato.learned(s.name, [x], [y]) for x, y in (("a", "b"), ("b", "c"), ("c", "d"))]


def test_get_pattern_returns_it_as_learned(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        name = await kato.learned(s.name, ["a", "b"], ["c"])
        pattern = await kato.use.admin.get_pattern(svc.GetPatternRequest(name=name), ANYONE)
        assert (pattern.name, pattern.length, pattern.frequency) == (name, 3, 1)
        assert [list(e.symbols) for e in pattern.events] == [["a", "b"], ["c"]]
        missing = names.pattern(KB, "0" * 40)
        await expect(kato.use.admin.get_pattern(svc.GetPatternRequest(name=missing), ANYONE), NotFound)

    kato.run(main())


def test_list_patterns_pages_through_them_in_name_order(kato: Kato) -> None:
    async def main() -> None:
        learned = await _learn_three(kato)
        first = await kato.use.admin.list_patterns(svc.ListPatternsRequest(parent=KB_NAME, page_size=2), ANYONE)
        assert len(first.patterns) == 2 and first.next_page_token
        rest = await kato.use.admin.list_patterns(
            svc.ListPatternsRequest(parent=KB_NAME, page_size=2, page_token=first.next_page_token), ANYONE
        )
        assert (len(rest.patterns), rest.next_page_token) == (1, "")
        assert [p.name for p in [*first.patterns, *rest.patterns]] == sorted(learned)
        other = await kato.use.admin.list_patterns(svc.ListPatternsRequest(parent="knowledgeBases/kb2"), ANYONE)
        assert list(other.patterns) == []  # nothing crosses a KB

    kato.run(main())


def test_update_pattern_sets_the_masked_fields(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        name = await kato.learned(s.name, ["a"], ["b"])
        request = svc.UpdatePatternRequest(
            pattern=pb.Pattern(name=name, frequency=7, emotives=[pb.EmotiveRecord(values={"joy": 1.0})]),
            update_mask=field_mask_pb2.FieldMask(paths=["frequency"]),
        )
        updated = await kato.use.admin.update_pattern(request, ANYONE)
        assert (updated.frequency, list(updated.emotives)) == (7, [])  # emotives not in the mask
        assert kato.frequency(name) == 7
        # Published as a delete's is: caches refresh at once, not at their next MongoDB check.
        assert await kato.session_store.kb_version(KB) == kato.pattern_store.kb(KB).version
        got = await kato.use.admin.get_pattern(svc.GetPatternRequest(name=name), ANYONE)
        assert got == updated
        request.pattern.name = names.pattern(KB, "0" * 40)
        await expect(kato.use.admin.update_pattern(request, ANYONE), NotFound)

    kato.run(main())


def test_delete_pattern_removes_it_and_publishes_the_kb_s_version(kato: Kato) -> None:
    async def main() -> None:
        ab, bc, cd = await _learn_three(kato)
        await kato.use.admin.delete_pattern(svc.DeletePatternRequest(name=bc), ANYONE)
        assert await kato.session_store.kb_version(KB) == kato.pattern_store.kb(KB).version == 4
        await expect(kato.use.admin.get_pattern(svc.GetPatternRequest(name=bc), ANYONE), NotFound)
        await expect(kato.use.admin.delete_pattern(svc.DeletePatternRequest(name=bc), ANYONE), NotFound)
        listed = await kato.use.admin.list_patterns(svc.ListPatternsRequest(parent=KB_NAME), ANYONE)
        assert [p.name for p in listed.patterns] == sorted([ab, cd])

    kato.run(main())


def test_clearing_a_knowledge_base_wipes_it_once_per_request_id(kato: Kato) -> None:
    async def main() -> None:
        await _learn_three(kato)
        other = await kato.create("kb2")
        kept = await kato.learned(other.name, ["a"], ["b"])
        clear = svc.ClearKnowledgeBaseRequest(knowledge_base=KB_NAME, request_id="wipe-1")
        await kato.use.admin.clear_knowledge_base(clear, ANYONE)
        assert kato.pattern_store.kb(KB).pattern_count() == 0
        assert await kato.session_store.kb_version(KB) == kato.pattern_store.kb(KB).version == 4
        s = await kato.create()
        after = await kato.learned(s.name, ["x"], ["y"])
        await kato.use.admin.clear_knowledge_base(clear, ANYONE)  # a retry: no second wipe
        assert kato.frequency(after) == 1
        assert kato.frequency(kept) == 1  # another KB is untouched

    kato.run(main())


@contextlib.contextmanager
def publishing_fails(kato: Kato) -> Iterator[None]:
    """Redis stops answering KB-version publishes: a wipe takes effect in MongoDB, then the
    call fails before it records its request id."""

    async def down(kb_id: str, version: int) -> None:
        raise StoreUnavailable("Redis does not answer (test)")

    kato.session_store.publish_kb_version = down  # type: ignore[method-assign]
    try:
        yield
    finally:
        del kato.session_store.publish_kb_version


def test_a_clear_retried_after_it_failed_past_its_wipe_wipes_once(kato: Kato) -> None:
    """The API: a request id makes ClearKnowledgeBase safe to retry, "the knowledge base is
    wiped once". A first attempt that wiped, then failed before recording its id, is retried:
    what was learned (and read back) in between must stay. Found by the simulation (two
    attempts of one request id running at once each wiped; its mutant test keeps it found)."""

    async def main() -> None:
        s = await kato.create()
        await kato.learned(s.name, ["a"], ["b"])
        for n, clear in enumerate(
            (
                svc.ClearKnowledgeBaseRequest(knowledge_base=KB_NAME, request_id="wipe-1"),
                svc.ClearKnowledgeBaseRequest(session=s.name, request_id="wipe-2"),
            )
        ):
            with publishing_fails(kato):
                await expect(kato.use.admin.clear_knowledge_base(clear, ANYONE), StoreUnavailable)
            assert kato.pattern_store.kb(KB).pattern_count() == 0  # the first attempt wiped
            learner = await kato.create()
            after = await kato.learned(learner.name, ["x"], [str(n)])
            await kato.use.admin.clear_knowledge_base(clear, ANYONE)  # the retry: answered, no second wipe
            assert kato.frequency(after) == 1, clear
            await kato.use.admin.clear_knowledge_base(clear, ANYONE)  # and again: still none
            assert kato.frequency(after) == 1, clear

    kato.run(main())


def test_clearing_a_session_s_knowledge_base_clears_its_stm_too(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        learned = await kato.learned(s.name, ["a"], ["b"])
        await kato.observe(s.name, "a")
        await kato.use.admin.clear_knowledge_base(svc.ClearKnowledgeBaseRequest(session=s.name), ANYONE)
        assert kato.frequency(learned) == 0
        got = await kato.use.sessions.get_session(session_id(s.name), ANYONE)
        assert (got.stm_length, got.etag) == (0, "6")
        predictions = await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert list(predictions.predictions) == []

    kato.run(main())


def test_list_knowledge_bases_shows_a_caller_the_written_ones_it_may_use(kato: Kato) -> None:
    async def main() -> None:
        await _learn_three(kato)
        other = await kato.create("kb2")
        await kato.learned(other.name, ["x"], ["y"])
        await kato.create("kb3")  # a session, nothing written: no KB yet
        stats = kato.use.stats

        async def listed(caller: Caller, page_size: int = 0) -> list[tuple[str, int, int]]:
            out, token = [], ""
            while True:
                page = await stats.list_knowledge_bases(
                    svc.ListKnowledgeBasesRequest(page_size=page_size, page_token=token), caller
                )
                out += [(k.name, k.pattern_count, k.total_pattern_frequencies) for k in page.knowledge_bases]
                if not (token := page.next_page_token):
                    return out

        everything = [(KB_NAME, 3, 3), ("knowledgeBases/kb2", 1, 1)]
        assert await listed(ANYONE) == await listed(ANYONE, page_size=1) == everything
        assert await listed(Caller(frozenset({"kb2", "kb3"}), principal="t")) == everything[1:]
        assert await listed(Caller(frozenset({"*"}), principal="ops")) == everything

    kato.run(main())


def test_a_caller_without_the_node_touches_nothing_of_it(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        learned = await kato.learned(s.name, ["a"], ["b"])
        await kato.observe(s.name, "a")
        tenant = Caller(frozenset({"kb2"}), principal="tenant two")
        admin = kato.use.admin
        refused = [
            admin.clear_knowledge_base(svc.ClearKnowledgeBaseRequest(knowledge_base=KB_NAME), tenant),
            admin.clear_knowledge_base(svc.ClearKnowledgeBaseRequest(session=s.name), tenant),
            admin.get_pattern(svc.GetPatternRequest(name=learned), tenant),
            admin.list_patterns(svc.ListPatternsRequest(parent=KB_NAME), tenant),
            admin.delete_pattern(svc.DeletePatternRequest(name=learned), tenant),
            kato.use.stats.get_knowledge_base(svc.GetKnowledgeBaseRequest(name=KB_NAME), tenant),
            kato.observe(s.name, "b", caller=tenant),
            kato.learn(s.name, caller=tenant),
            kato.use.sessions.get_session(session_id(s.name), tenant),
            kato.create(caller=tenant),
        ]
        for call in refused:
            await expect(call, PermissionDenied)
        assert kato.frequency(learned) == 1
        got = await kato.use.sessions.get_session(session_id(s.name), ANYONE)
        assert (got.stm_length, got.etag) == (1, "5")
        assert (await kato.create("kb2", caller=tenant)).knowledge_base == "knowledgeBases/kb2"

    kato.run(main())


def test_statistics_count_what_the_knowledge_base_holds(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.learned(s.name, ["a"], ["b"])
        await kato.learned(s.name, ["b"], ["c"])
        await kato.learned(s.name, ["a"], ["b"])
        stats = kato.use.stats
        kb = await stats.get_knowledge_base(svc.GetKnowledgeBaseRequest(name=KB_NAME), ANYONE)
        assert (kb.pattern_count, kb.total_pattern_frequencies, kb.symbol_count) == (2, 3, 3)
        assert kb.version == kato.pattern_store.kb(KB).version == 3
        b = await stats.get_symbol(svc.GetSymbolRequest(name=names.symbol(KB, "b")), ANYONE)
        a = await stats.get_symbol(svc.GetSymbolRequest(name=names.symbol(KB, "a")), ANYONE)
        assert (b.pattern_member_frequency, b.probability) == (2, 1.0)
        assert (a.pattern_member_frequency, a.probability) == (1, 0.5)
        await expect(stats.get_symbol(svc.GetSymbolRequest(name=names.symbol(KB, "z")), ANYONE), NotFound)
        page = await stats.list_symbols(svc.ListSymbolsRequest(parent=KB_NAME, page_size=2), ANYONE)
        rest = await stats.list_symbols(
            svc.ListSymbolsRequest(parent=KB_NAME, page_size=2, page_token=page.next_page_token), ANYONE
        )
        assert [x.symbol for x in [*page.symbols, *rest.symbols]] == ["a", "b", "c"]
        assert rest.next_page_token == ""

    kato.run(main())
