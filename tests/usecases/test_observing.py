"""Observe, Learn, ObserveSequence and ObserveStream over the twins, in process."""

from __future__ import annotations

from typing import Any

from kato_grpc import names
from kato_grpc.access import ANYONE
from kato_grpc.errors import AlreadyExists, StoreUnavailable
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server.observing import INLINE_WORK
from tests.usecases.harness import KB, AbortedCall, Context, Kato, collect, expect, items, session_id, stream_context


def test_observe_answers_with_the_stm_and_predicts_from_what_was_learned(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        first = await kato.observe(s.name, "b", predictions=True)
        assert (first.stm_length, first.time, len(first.predictions)) == (1, 1, 0)  # nothing learned yet
        await kato.use.observing.clear_stm(svc.ClearShortTermMemoryRequest(name=s.name), ANYONE)
        teacher = await kato.create()
        pattern = await kato.learned(teacher.name, ["a"], ["b"], ["c"])
        assert pattern.startswith(names.pattern_prefix(KB))
        seen = await kato.observe(s.name, "b", predictions=True)
        assert seen.stm_length == 1
        assert [p.pattern for p in seen.predictions] == [pattern]
        assert [list(e.symbols) for e in seen.predictions[0].future] == [["c"]]
        # The session keeps the call's predictions (GetPredictions computes the same).
        again = await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert list(again.predictions) == list(seen.predictions)
        without = await kato.observe(s.name, "b")
        assert len(without.predictions) == 0  # not asked for

    kato.run(main())


def test_an_observe_retried_with_its_request_id_gets_the_same_answer_and_changes_nothing(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        first = await kato.observe(s.name, "a", request_id="r-1")
        retry = await kato.observe(s.name, "a", request_id="r-1")
        assert retry == first  # the server-made unique_id included: the recorded answer
        session = await kato.use.sessions.get_session(session_id(s.name), ANYONE)
        assert (session.stm_length, session.etag) == (1, "2")  # created at 1, one commit
        error = await expect(kato.observe(s.name, "b", request_id="r-1"), AlreadyExists)
        assert "different Observe" in str(error)
        error = await expect(kato.learn(s.name, request_id="r-1"), AlreadyExists)  # another method
        assert (await kato.use.sessions.get_session(session_id(s.name), ANYONE)).stm_length == 1

    kato.run(main())


def test_a_learn_retried_with_its_request_id_is_learned_once(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.observe(s.name, "a")
        await kato.observe(s.name, "b")
        first = await kato.learn(s.name, request_id="learn-1")
        assert first.status == svc.LEARN_STATUS_LEARNED
        assert await kato.learn(s.name, request_id="learn-1") == first
        assert kato.frequency(first.pattern) == 1
        # Learned again by another call, it counts again: frequency counts learns.
        other = await kato.create()
        assert await kato.learned(other.name, ["a"], ["b"]) == first.pattern
        assert kato.frequency(first.pattern) == 2
        # And predictions come from it.
        await kato.observe(s.name, "a")
        predictions = await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert [(p.pattern, p.frequency) for p in predictions.predictions] == [(first.pattern, 2)]

    kato.run(main())


def test_a_learn_cut_off_after_its_commit_and_retried_is_learned_once(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.observe(s.name, "a")
        await kato.observe(s.name, "b")
        kato.applies.down = True
        await expect(kato.learn(s.name, request_id="learn-1"), StoreUnavailable)
        kato.applies.down = False
        outbox = kato.session_store.outbox(session_id(s.name))
        assert outbox is not None and len(outbox.writes) == 1  # committed, not applied
        pattern = names.pattern(KB, outbox.writes[0].name)
        assert kato.frequency(pattern) == 0
        retry = await kato.learn(s.name, request_id="learn-1")  # applies the outbox, answers the record
        assert (retry.status, retry.pattern) == (svc.LEARN_STATUS_LEARNED, pattern)
        assert kato.frequency(pattern) == 1
        assert kato.session_store.outbox(session_id(s.name)) is None
        await kato.learn(s.name, request_id="learn-1")
        assert kato.frequency(pattern) == 1

    kato.run(main())


def _observations(*events: str) -> list[pb.Observation]:
    return [pb.Observation(strings=[e]) for e in events]


def test_observe_sequence_learns_after_the_given_observations(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        request = svc.ObserveSequenceRequest(
            name=s.name, observations=_observations("a", "b", "c", "d"), learn_after=[1, 3]
        )
        out = await kato.use.observing.observe_sequence(request, ANYONE)
        assert [r.stm_length for r in out.results] == [1, 2, 1, 2]
        ab, cd = out.auto_learned_patterns
        assert (kato.frequency(ab), kato.frequency(cd), out.final_stm_length) == (1, 1, 0)
        assert not out.HasField("final_learned_pattern")
        other = await kato.create()
        assert await kato.learned(other.name, ["a"], ["b"]) == ab  # the same pattern as Learn makes
        assert await kato.learned(other.name, ["c"], ["d"]) == cd

    kato.run(main())


def test_observe_sequence_learns_at_the_end(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        await kato.observe(s.name, "x")
        request = svc.ObserveSequenceRequest(name=s.name, observations=_observations("y", "z"), learn_at_end=True)
        out = await kato.use.observing.observe_sequence(request, ANYONE)
        assert (out.initial_stm_length, [r.stm_length for r in out.results], out.final_stm_length) == (1, [2, 3], 0)
        assert list(out.auto_learned_patterns) == [out.final_learned_pattern]
        record = kato.pattern_store.kb(KB).pattern(out.final_learned_pattern.rsplit("/", 1)[1])
        assert record is not None
        assert (record.frequency, [list(e) for e in record.events]) == (1, [["x"], ["y"], ["z"]])
        empty = await kato.use.observing.observe_sequence(
            svc.ObserveSequenceRequest(name=s.name, learn_at_end=True), ANYONE
        )
        assert not empty.HasField("final_learned_pattern")  # nothing in the STM to learn

    kato.run(main())


def _stream(session: str, *events: str) -> list[svc.ObserveRequest]:
    return [
        svc.ObserveRequest(name=session, observation=pb.Observation(strings=[e], unique_id=f"u{i}"))
        for i, e in enumerate(events)
    ]


def test_observations_waiting_together_in_a_stream_commit_as_one_with_observe_s_answers(kato: Kato) -> None:
    async def main() -> None:
        streamed = await kato.create()
        answers = await collect(kato.use.ObserveStream(items(_stream(streamed.name, *"abcde")), stream_context()))
        one_by_one = await kato.create()
        expected = [await kato.use.observing.observe(r, ANYONE) for r in _stream(one_by_one.name, *"abcde")]
        assert answers == expected
        assert [a.stm_length for a in answers] == [1, 2, 3, 4, 5]
        assert await kato.etag(streamed.name) == "2"  # one commit for the five
        assert await kato.etag(one_by_one.name) == "6"

    kato.run(main())


def test_a_stream_serves_a_request_id_alone_and_an_invalid_message_after_the_ones_before_it(kato: Kato) -> None:
    async def main() -> None:
        s = await kato.create()
        messages = _stream(s.name, "a", "b", "c", "d")
        messages[1].request_id = "r-1"  # served on its own: its record belongs to it alone
        messages.append(svc.ObserveRequest(name="sessions/not a session", observation=pb.Observation(strings=["e"])))
        context = Context()
        answers: list[svc.ObserveResponse] = []
        try:
            async for answer in kato.use.ObserveStream(items(messages), context):  # type: ignore[arg-type]
                answers.append(answer)
        except AbortedCall:
            pass
        assert [a.stm_length for a in answers] == [1, 2, 3, 4]
        assert context.status is not None and context.status.code.name == "INVALID_ARGUMENT"
        assert await kato.etag(s.name) == "4"  # [a], [b], [c, d]: three commits

    kato.run(main())


def test_small_predictions_run_on_the_event_loop_and_larger_ones_on_an_engine_thread(kato: Kato) -> None:
    """A prediction whose alignments are bounded by INLINE_WORK costs less than a thread
    hand-off: it runs inline; a larger one — a bigger KB or a longer STM — on a thread."""
    engine = kato.service.engine
    threaded: list[bool] = []
    run = engine.run

    async def spy(work: Any, reads: Any = (), *, inline: bool = False) -> Any:
        threaded.append(not inline)
        return await run(work, reads, inline=inline)

    engine.run = spy  # type: ignore[method-assign]

    async def main() -> None:
        teacher = await kato.create()
        await kato.learned(teacher.name, ["a"], ["b"], ["c"])  # 3 stored symbols
        s = await kato.create()
        await kato.observe(s.name, "a")
        await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert threaded[-2:] == [False, False]
        # An STM of INLINE_WORK / 3 symbols: the bound passes the limit.
        many = [f"x{i}" for i in range(INLINE_WORK // 3)]
        await kato.observe(s.name, *many)
        assert threaded[-1] is True
        await kato.use.observing.clear_stm(svc.ClearShortTermMemoryRequest(name=s.name), ANYONE)
        events = [[f"k{i}-{j}" for j in range(1000)] for i in range(INLINE_WORK // 1000 + 1)]
        await kato.learned(teacher.name, *events, ["z"])  # a KB of more symbols than INLINE_WORK
        await kato.observe(s.name, "a")
        assert threaded[-1] is True

    kato.run(main())
