"""Two processes of one deployment on the same stores (architecture.md §3, "One round trip"):
a session each process committed last is cached there, and whatever the other process does
meanwhile — learn, wipe the KB, commit, delete — the next call here answers as if it had
loaded the session. The KB caches' clock is the test's and never moves here, so a cache
refreshes only when a published version tells it to (D-8's once-a-second check never helps)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from google.protobuf import field_mask_pb2

from kato_grpc import names
from kato_grpc.access import ANYONE
from kato_grpc.errors import Aborted, NotFound
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, expect, session_id


@pytest.fixture
def other(kato: Kato) -> Iterator[Kato]:
    process = Kato(sharing=kato)
    yield process
    process.close()


def both(here: Kato, there: Kato, test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await test()
        await there.service.runner.applier.drain(float("inf"))

    here.run(main())


async def _clear_stm(kato: Kato, name: str) -> None:
    await kato.use.observing.clear_stm(svc.ClearShortTermMemoryRequest(name=name), ANYONE)


def test_a_learn_answered_in_another_process_is_in_the_next_observe_here(kato: Kato, other: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        assert len((await kato.observe(s.name, "b", predictions=True)).predictions) == 0  # KB cached here, empty
        await _clear_stm(kato, s.name)
        teacher = await other.create()
        pattern = await other.learned(teacher.name, ["a"], ["b"], ["c"])  # answered: applied and published
        seen = await kato.observe(s.name, "b", predictions=True)
        assert [p.pattern for p in seen.predictions] == [pattern]

    both(kato, other, main)


def test_a_kb_wiped_in_another_process_is_not_predicted_from_here(kato: Kato, other: Kato) -> None:
    async def main() -> None:
        teacher = await kato.create()
        pattern = await kato.learned(teacher.name, ["a"], ["b"], ["c"])
        s = await kato.create()
        assert [p.pattern for p in (await kato.observe(s.name, "b", predictions=True)).predictions] == [pattern]
        await _clear_stm(kato, s.name)
        wipe = svc.ClearKnowledgeBaseRequest(knowledge_base=names.knowledge_base(KB))
        await other.use.admin.clear_knowledge_base(wipe, ANYONE)
        assert len((await kato.observe(s.name, "b", predictions=True)).predictions) == 0

    both(kato, other, main)


def test_a_session_changed_in_another_process_is_changed_here(kato: Kato, other: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.observe(s.name, "a")  # cached here at version 2
        await other.observe(s.name, "b")  # version 3
        etag = await other.etag(s.name)
        assert etag == "3"
        change = svc.Session(name=s.name, ttl_seconds=900, etag=etag)
        request = svc.UpdateSessionRequest(session=change, update_mask=field_mask_pb2.FieldMask(paths=["ttl_seconds"]))
        updated = await kato.use.sessions.update_session(request, ANYONE)  # the etag of 3, not of the copy here
        assert (updated.ttl_seconds, updated.etag, updated.stm_length) == (900, "4", 2)
        stale = await expect(other.use.sessions.update_session(request, ANYONE), Aborted)
        assert isinstance(stale, Aborted) and stale.reason == "ETAG_MISMATCH"
        observed = await kato.observe(s.name, "c")
        assert observed.stm_length == 3  # on top of the other process's "b"

    both(kato, other, main)


def test_a_session_deleted_in_another_process_or_expired_is_gone_here(kato: Kato, other: Kato) -> None:
    async def main() -> None:
        deleted, lapsed = await kato.create(), await kato.create(ttl_seconds=60)
        await kato.observe(deleted.name, "a")
        await kato.observe(lapsed.name, "a")  # both cached here
        await other.use.sessions.delete_session(svc.DeleteSessionRequest(name=deleted.name), ANYONE)
        await expect(kato.observe(deleted.name, "b"), NotFound)
        kato.clock.advance(61)
        await expect(kato.observe(lapsed.name, "b"), NotFound)
        for s in (deleted, lapsed):  # nothing brought back
            await expect(other.use.sessions.get_session(session_id(s.name), ANYONE), NotFound)

    both(kato, other, main)
