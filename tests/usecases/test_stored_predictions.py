"""GetPredictions answers from the predictions the session's last observation stored, while
they are current (architecture.md §3, "Predictions computed once") — and is then exactly what
computing them again gives.

A seeded random walk over everything predictions are a function of — observations (empty ones
too), sequences that learn, learns, clears, config updates, other sessions' learns, pattern
updates and deletes, wipes — through two processes of one deployment on the same sessions,
holding every GetPredictions answer to the plain computation on the session as stored and the
KB as it is; and counting that both answers (stored and computed) were served.
"""

from __future__ import annotations

import os
import random

import pytest
from google.protobuf import field_mask_pb2

from kato_grpc import encoding, names
from kato_grpc.access import ANYONE
from kato_grpc.engine import processor
from kato_grpc.engine.naming import pattern_name
from kato_grpc.telemetry import _NoTelemetry
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from tests.usecases.harness import KB, Kato, session_id, settings

SEEDS = range(int(os.environ.get("KATO_STORED_PREDICTION_SEEDS", "12")))
STEPS = 120
SYMBOLS = "abcdef"


class Served(_NoTelemetry):
    def __init__(self) -> None:
        self.sources: dict[str, int] = {"stored": 0, "computed": 0}

    def predictions_served(self, source: str) -> None:
        self.sources[source] += 1


async def plain(kato: Kato, name: str) -> svc.GetPredictionsResponse:
    """The reference: computed now, from the session as stored and the KB as it is."""
    state = (await kato.service.runner.read(session_id(name), ANYONE)).state
    kb = await kato.service.cache.view(state.node_id, await kato.session_store.kb_version(state.node_id))
    out = svc.GetPredictionsResponse()
    result = processor.predictions(state, kb)
    encoding.add_predictions(result, names.pattern_prefix(state.node_id), out.predictions, out.future_potentials)
    return out


def observation(rng: random.Random) -> pb.Observation:
    return pb.Observation(strings=rng.sample(SYMBOLS, rng.choice([0, 1, 1, 2, 3])))


def config(rng: random.Random) -> pb.SessionConfig:
    return pb.SessionConfig(
        recall_threshold=rng.choice([0.0, 0.1, 0.6]),
        max_predictions=rng.choice([1, 3, 100]),
        sort_symbols=rng.choice([True, False]),
        max_pattern_length=rng.choice([0, 0, 4]),
        process_predictions=rng.choice([True, True, True, False]),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_get_predictions_is_the_plain_computation_whichever_answer_it_serves(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    if seed % 2:  # odd seeds keep every stored copy compressed (only large ones are, by default)
        monkeypatch.setattr(encoding, "COMPRESSED_PREDICTIONS_BYTES", 0)
    a = Kato()
    b = Kato(sharing=a)
    spies = [Served(), Served()]
    for process, spy in zip((a, b), spies, strict=True):
        process.service.runner.telemetry = spy  # the use cases report through the runner's
    teacher_name = ""

    async def step(sessions: list[str]) -> None:
        nonlocal teacher_name
        process = rng.choice((a, b))
        name = rng.choice(sessions)
        observing = process.use.observing
        kind = rng.choices(
            ["observe", "sequence", "learn", "clear", "config", "teach", "update", "delete", "wipe", "predict"],
            weights=[30, 6, 6, 4, 4, 8, 2, 2, 1, 30],
        )[0]
        if kind == "observe":
            request = svc.ObserveRequest(name=name, observation=observation(rng), return_predictions=rng.random() < 0.5)
            await observing.observe(request, ANYONE)
        elif kind == "sequence":
            seq = [observation(rng) for _ in range(rng.randint(1, 3))]
            sequence = svc.ObserveSequenceRequest(name=name, observations=seq, learn_at_end=rng.random() < 0.3)
            await observing.observe_sequence(sequence, ANYONE)
        elif kind == "learn":
            if (await observing.get_stm(session_id(name), ANYONE)).events:
                await observing.learn(svc.LearnRequest(name=name), ANYONE)
        elif kind == "clear":
            await observing.clear_stm(svc.ClearShortTermMemoryRequest(name=name), ANYONE)
        elif kind == "config":
            update = svc.UpdateSessionRequest(
                session=svc.Session(name=name, config=config(rng)),
                update_mask=field_mask_pb2.FieldMask(paths=["config"]),
            )
            await process.use.sessions.update_session(update, ANYONE)
        elif kind == "teach":  # another session's learn moves the KB's version
            events = [rng.sample(SYMBOLS, rng.randint(1, 2)) for _ in range(rng.randint(2, 4))]
            await process.learned(teacher_name, *events)
        elif kind in ("update", "delete"):
            listed = await process.use.admin.list_patterns(
                svc.ListPatternsRequest(parent=names.knowledge_base(KB), page_size=50), ANYONE
            )
            if listed.patterns:
                target = rng.choice(listed.patterns).name
                if kind == "delete":
                    await process.use.admin.delete_pattern(svc.DeletePatternRequest(name=target), ANYONE)
                else:
                    pattern = pb.Pattern(name=target, frequency=rng.randint(1, 9))
                    mask = field_mask_pb2.FieldMask(paths=["frequency"])
                    await process.use.admin.update_pattern(
                        svc.UpdatePatternRequest(pattern=pattern, update_mask=mask), ANYONE
                    )
        elif kind == "wipe":
            clear = svc.ClearKnowledgeBaseRequest(knowledge_base=names.knowledge_base(KB))
            await process.use.admin.clear_knowledge_base(clear, ANYONE)
        else:
            answer = await observing.get_predictions(session_id(name), ANYONE)
            assert answer == await plain(process, name)

    async def main() -> None:
        nonlocal teacher_name
        teacher_name = (await a.create()).name
        sessions = [(await a.create()).name, (await b.create()).name]
        for _ in range(STEPS):
            await step(sessions)
        for name in sessions:  # and once more at the end, on each
            for process in (a, b):
                assert await process.use.observing.get_predictions(session_id(name), ANYONE) == await plain(
                    process, name
                )

    try:
        a.run(main())
    finally:
        a.close()
        b.close()
    served = {source: sum(s.sources[source] for s in spies) for source in ("stored", "computed")}
    assert served["stored"] > 0 and served["computed"] > 0, served


def test_predictions_cut_to_fit_the_session_are_computed_again_whole() -> None:
    """A session keeps only the best-ranked predictions that fit its byte limit (D-17): those
    are not GetPredictions' answer, so it computes them, all of them."""
    kato = Kato(settings(max_session_bytes=64 * 1024))  # the lowest limit there is
    spy = Served()
    kato.service.runner.telemetry = spy

    def long(i: int) -> str:  # 800 random hex digits: they do not compress away
        return random.Random(i).randbytes(400).hex()

    async def main() -> None:
        teacher = await kato.create()
        for i in range(100):  # max_predictions' default
            await kato.learned(teacher.name, ["x", f"p{i}{long(3 * i)}"], [long(3 * i + 1)], [long(3 * i + 2)])
        s = await kato.create()
        observed = await kato.observe(s.name, "x", predictions=True)
        assert len(observed.predictions) == 100
        state = (await kato.service.runner.read(session_id(s.name), ANYONE)).state
        kept = encoding.stored_predictions(state).predictions
        assert 0 < len(kept) < 100 and not state.HasField("predictions_basis")
        assert list(kept) == list(observed.predictions[: len(kept)])  # the best ranked
        answer = await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert list(answer.predictions) == list(observed.predictions)
        assert spy.sources == {"stored": 0, "computed": 1}
        # A small answer fits: stored whole, served as stored.
        await kato.use.observing.clear_stm(svc.ClearShortTermMemoryRequest(name=s.name), ANYONE)
        small = await kato.observe(s.name, f"p3{long(9)}", predictions=True)
        assert len(small.predictions) == 1
        assert list((await kato.use.observing.get_predictions(session_id(s.name), ANYONE)).predictions) == list(
            small.predictions
        )
        assert spy.sources == {"stored": 1, "computed": 1}

    try:
        kato.run(main())
    finally:
        kato.close()


def test_a_process_that_does_not_cache_the_kb_serves_stored_predictions_without_loading_it() -> None:
    """It asks MongoDB for the KB's version instead of loading the KB (one read, not the KB);
    once the KB moved on, it reads the KB to compute."""
    a = Kato()
    b = Kato(sharing=a)
    spy = Served()
    b.service.runner.telemetry = spy

    async def main() -> None:
        teacher = await a.create()
        await a.learned(teacher.name, ["a"], ["b"], ["c"])
        s = await a.create()
        seen = await a.observe(s.name, "a", predictions=True)
        assert b.service.cache.cached_version(KB) is None
        answer = await b.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert list(answer.predictions) == list(seen.predictions) and len(seen.predictions) == 1
        assert spy.sources == {"stored": 1, "computed": 0}
        assert b.service.cache.cached_version(KB) is None  # answered without loading the KB
        await a.learned(teacher.name, ["a"], ["d"])
        again = await b.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert spy.sources == {"stored": 1, "computed": 1} and len(again.predictions) == 2
        assert b.service.cache.cached_version(KB) is not None
        assert again == await plain(b, s.name)

    try:
        a.run(main())
    finally:
        a.close()
        b.close()


def test_a_read_that_applies_its_sessions_learn_predicts_from_what_that_made() -> None:
    """Read-your-writes on the read path: GetPredictions applies the session's pending learn
    (answered at commit, its apply failed) first, and the KB version it then answers at is at
    least the one that apply made — not the one its load read, which a recent cache would take
    as current."""
    kato = Kato(settings(learn_ack="committed"))

    async def main() -> None:
        teacher, s = await kato.create(), await kato.create()
        await kato.learned(teacher.name, ["p"], ["q"])
        await kato.observe(s.name, "x")
        await kato.use.observing.get_predictions(session_id(s.name), ANYONE)  # the KB cached, checked now
        kato.applies.down = True  # the learn below is committed, its apply fails: the outbox stays
        sequence = [pb.Observation(strings=[t]) for t in ("x", "y", "x")]
        await kato.use.observing.observe_sequence(
            svc.ObserveSequenceRequest(name=s.name, observations=sequence, learn_after=[1]), ANYONE
        )
        kato.applies.down = False
        answer = await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        learned = names.pattern_prefix(KB) + pattern_name([["x"], ["x"], ["y"]])  # the STM held an x before
        assert [p.pattern for p in answer.predictions] == [learned]
        assert answer == await plain(kato, s.name)

    try:
        kato.run(main())
    finally:
        kato.close()


def test_stored_predictions_ask_mongodb_for_the_kb_version_once_a_check_period() -> None:
    """Served as stored, GetPredictions reads MongoDB's version of a cached KB as a view
    would: once per check period, not once per call."""
    kato = Kato()
    store = kato.pattern_store
    reads = 0
    version = store.kb_version

    async def counted(kb_id: str) -> int:
        nonlocal reads
        reads += 1
        return await version(kb_id)

    async def main() -> None:
        teacher, s = await kato.create(), await kato.create()
        await kato.learned(teacher.name, ["a"], ["b"])
        await kato.observe(s.name, "a")
        store.kb_version = counted  # type: ignore[method-assign]
        kato.clock.advance(60)  # past the check period: the next look asks MongoDB
        for _ in range(3):
            await kato.use.observing.get_predictions(session_id(s.name), ANYONE)
        assert reads == 1

    try:
        kato.run(main())
    finally:
        kato.close()
