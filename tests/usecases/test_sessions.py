"""Sessions — create, get, update, delete, expiry — over the twins, in process."""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from kato_grpc import names
from kato_grpc.access import ANYONE, Caller
from kato_grpc.errors import Aborted, AlreadyExists, NotFound, StoreUnavailable
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, expect, session_id


def _create(request_id: str, **metadata: str) -> svc.CreateSessionRequest:
    session = svc.Session(knowledge_base=names.knowledge_base(KB), metadata=metadata)
    return svc.CreateSessionRequest(session=session, request_id=request_id)


def test_create_with_a_request_id_makes_one_session_per_id_body_and_caller(kato: Kato) -> None:
    async def main() -> None:
        create = kato.use.sessions.create_session
        first = await create(_create("c-1", team="a"), ANYONE)
        retry = await create(_create("c-1", team="a"), ANYONE)
        assert (retry.name, retry.etag, dict(retry.metadata)) == (first.name, "1", {"team": "a"})
        await expect(create(_create("c-1", team="b"), ANYONE), AlreadyExists)
        someone_else = await create(_create("c-1", team="a"), Caller(principal="another token"))
        assert someone_else.name != first.name  # request ids are scoped by caller
        await kato.use.sessions.delete_session(svc.DeleteSessionRequest(name=first.name), ANYONE)
        after_delete = await create(_create("c-1", team="a"), ANYONE)
        assert after_delete.name not in (first.name, someone_else.name)  # the id may create anew

    kato.run(main())


def test_get_shows_the_session_as_its_calls_left_it(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create(ttl_seconds=600)
        assert (s.knowledge_base, s.ttl_seconds, s.etag, s.stm_length) == ("knowledgeBases/kb1", 600, "1", 0)
        await kato.observe(s.name, "a")
        await kato.observe(s.name, "b")
        got = await kato.use.sessions.get_session(session_id(s.name), ANYONE)
        assert (got.name, got.etag, got.stm_length, got.time) == (s.name, "3", 2, 2)
        assert got.create_time == s.create_time
        await expect(kato.use.sessions.get_session("s-" + "0" * 32, ANYONE), NotFound)

    kato.run(main())


def test_update_changes_the_masked_fields_of_the_version_its_etag_names(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create(ttl_seconds=600, metadata={"team": "a"})
        change = svc.Session(name=s.name, ttl_seconds=900, metadata={"team": "b"}, etag=s.etag)
        request = svc.UpdateSessionRequest(session=change, update_mask=field_mask_pb2.FieldMask(paths=["ttl_seconds"]))
        updated = await kato.use.sessions.update_session(request, ANYONE)
        assert (updated.ttl_seconds, dict(updated.metadata), updated.etag) == (900, {"team": "a"}, "2")
        stale = await expect(kato.use.sessions.update_session(request, ANYONE), Aborted)
        assert isinstance(stale, Aborted) and stale.reason == "ETAG_MISMATCH"
        request.session.etag = updated.etag
        request.update_mask.paths[:] = ["metadata"]
        again = await kato.use.sessions.update_session(request, ANYONE)
        assert (again.ttl_seconds, dict(again.metadata), again.etag) == (900, {"team": "b"}, "3")
        got = await kato.use.sessions.get_session(session_id(s.name), ANYONE)
        assert (got.ttl_seconds, dict(got.metadata)) == (900, {"team": "b"})

    kato.run(main())


def test_delete_removes_the_session_only_at_its_etag(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.observe(s.name, "a")
        delete = kato.use.sessions.delete_session
        await expect(delete(svc.DeleteSessionRequest(name=s.name, etag=s.etag), ANYONE), Aborted)
        assert (await kato.use.sessions.get_session(session_id(s.name), ANYONE)).stm_length == 1
        await delete(svc.DeleteSessionRequest(name=s.name, etag="2"), ANYONE)
        await expect(kato.use.sessions.get_session(session_id(s.name), ANYONE), NotFound)
        await expect(delete(svc.DeleteSessionRequest(name=s.name), ANYONE), NotFound)
        await expect(kato.observe(s.name, "b"), NotFound)

    kato.run(main())


def test_a_session_expires_its_ttl_after_its_last_call(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create(ttl_seconds=60)
        for _ in range(3):  # each call slides the TTL, a read too
            kato.clock.advance(59)
            assert (await kato.use.sessions.get_session(session_id(s.name), ANYONE)).name == s.name
        kato.clock.advance(60.001)
        await expect(kato.use.sessions.get_session(session_id(s.name), ANYONE), NotFound)
        await expect(kato.observe(s.name, "a"), NotFound)

    kato.run(main())


def test_an_expired_session_s_outbox_survives_it_and_the_relay_applies_it(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create(ttl_seconds=60)
        sid = session_id(s.name)
        await kato.observe(s.name, "a")
        await kato.observe(s.name, "b")
        kato.applies.down = True  # the learn commits; its apply fails
        await expect(kato.learn(s.name), StoreUnavailable)
        kato.applies.down = False
        outbox = kato.session_store.outbox(sid)
        assert outbox is not None
        pattern = names.pattern(KB, outbox.writes[0].name)
        kato.clock.advance(61)
        await expect(kato.use.sessions.get_session(sid, ANYONE), NotFound)
        assert kato.session_store.outbox(sid) == outbox  # no TTL: it outlives its session
        assert await kato.service.relay.run_once() == 1
        assert kato.frequency(pattern) == 1
        assert await kato.session_store.kb_version(KB) == kato.pattern_store.kb(KB).version  # published
        assert (kato.session_store.outbox(sid), await kato.service.relay.run_once()) == (None, 0)

    kato.run(main())
