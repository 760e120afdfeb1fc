"""The outbox relay over the twins: what a call committed but could not apply lands once."""

from __future__ import annotations

from kato_grpc import names
from kato_grpc.access import ANYONE
from kato_grpc.errors import StoreUnavailable
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, expect, session_id


def test_an_outbox_left_by_a_call_cut_off_after_its_commit_is_applied_once_by_the_relay(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        sid = session_id(s.name)
        await kato.observe(s.name, "a")
        await kato.observe(s.name, "b")
        kato.applies.down = True
        await expect(kato.learn(s.name, request_id="learn-1"), StoreUnavailable)
        kato.applies.down = False
        outbox = kato.session_store.outbox(sid)
        assert outbox is not None
        pattern = names.pattern(KB, outbox.writes[0].name)
        relay = kato.service.relay
        assert await relay.run_once() == 0  # not due yet: its call may still apply it itself
        kato.clock.advance(kato.settings.outbox_relay_after_seconds)
        assert await relay.run_once() == 1
        assert kato.frequency(pattern) == 1
        assert kato.session_store.outbox(sid) is None
        assert await kato.session_store.kb_version(KB) == kato.pattern_store.kb(KB).version == 1
        assert await relay.run_once() == 0
        # Neither the session's next calls nor a retry of the cut-off one apply it again.
        retry = await kato.learn(s.name, request_id="learn-1")
        assert (retry.status, retry.pattern) == (svc.LEARN_STATUS_LEARNED, pattern)
        await kato.observe(s.name, "a", predictions=True)
        assert kato.frequency(pattern) == 1
        predictions = await kato.use.observing.get_predictions(sid, ANYONE)
        assert [(p.pattern, p.frequency) for p in predictions.predictions] == [(pattern, 1)]

    kato.run(main())


def test_the_relay_applies_nothing_a_call_applied_itself(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        pattern = await kato.learned(s.name, ["a"], ["b"])
        kato.clock.advance(kato.settings.outbox_relay_after_seconds)
        assert (await kato.service.relay.run_once(), await kato.session_store.due_outboxes(0, 10)) == (0, [])
        assert kato.frequency(pattern) == 1

    kato.run(main())
