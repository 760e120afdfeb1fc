"""The service end to end: round trip, errors with rich details, idempotency, isolation."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server
from tests.integration.support import create, details, eventually, observe
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]


def test_round_trip_create_observe_learn_predict(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    for s in ("hello", "world", "again"):
        observe(stub, sid, s)
    learned = stub.Learn(svc.LearnRequest(name=sid))
    assert learned.status == svc.LEARN_STATUS_LEARNED
    assert learned.pattern == names.pattern(node_id, pattern_name([["hello"], ["world"], ["again"]]))
    r = observe(stub, sid, "hello", return_predictions=True)
    assert [p.pattern for p in r.predictions] == [learned.pattern]  # one form of a pattern's name
    preds = stub.GetPredictions(svc.GetPredictionsRequest(name=sid))
    assert [[list(e.symbols) for e in p.future] for p in preds.predictions] == [[["world"], ["again"]]]
    pattern = stub.GetPattern(svc.GetPatternRequest(name=learned.pattern))
    assert (pattern.name, pattern.frequency, pattern.length) == (learned.pattern, 1, 3)
    listed = stub.ListPatterns(svc.ListPatternsRequest(parent=names.knowledge_base(node_id)))
    assert [p.name for p in listed.patterns] == [learned.pattern]
    percept = stub.GetPerceptData(svc.GetPerceptDataRequest(name=sid)).percept
    assert list(percept.strings) == ["hello"]
    cognition = stub.GetCognitionData(svc.GetCognitionDataRequest(name=sid))
    assert list(cognition.symbols) == ["hello"] and cognition.time == 4
    session = stub.GetSession(svc.GetSessionRequest(name=sid))
    assert (session.name, session.knowledge_base) == (sid, "knowledgeBases/" + node_id)
    assert (session.stm_length, session.time) == (1, 4)
    assert session.config.recall_threshold == pytest.approx(0.1)
    stub.DeleteSession(svc.DeleteSessionRequest(name=sid))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetSession(svc.GetSessionRequest(name=sid))
    assert details(info.value)[:2] == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


def test_pattern_admin_update_list_delete(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    learned = []
    for pair in (("a", "b"), ("c", "d"), ("e", "f")):
        observe(stub, sid, *pair)
        learned.append(stub.Learn(svc.LearnRequest(name=sid)).pattern)
    first = stub.ListPatterns(svc.ListPatternsRequest(parent=names.knowledge_base(node_id), page_size=2))
    second = stub.ListPatterns(
        svc.ListPatternsRequest(parent=names.knowledge_base(node_id), page_size=2, page_token=first.next_page_token)
    )
    assert sorted(learned) == [p.name for p in [*first.patterns, *second.patterns]]
    assert second.next_page_token == ""

    def update(pattern: pb.Pattern, *paths: str) -> pb.Pattern:
        mask = field_mask_pb2.FieldMask(paths=paths) if paths else None
        return stub.UpdatePattern(svc.UpdatePatternRequest(pattern=pattern, update_mask=mask))

    # Metadata are JSON values in and out (D-29): 3 and 3.0 are one value, "3" another.
    values = json_format.Parse('[3.0, "3", 3, true, {"z": [1, null]}]', struct_pb2.ListValue())
    meta = update(pb.Pattern(name=learned[0], metadata={"k": values}, frequency=5), "metadata")
    got: object = json_format.MessageToDict(meta.metadata["k"])
    assert got == ["3", 3.0, True, {"z": [1.0, None]}] and meta.frequency == 1  # only the mask's field
    # No mask (AIP-134): exactly the fields the request sets; emotives and metadata stay.
    emotive = pb.EmotiveRecord(values={"joy": 0.5})
    assert update(pb.Pattern(name=learned[0], emotives=[emotive])).metadata == meta.metadata
    updated = update(pb.Pattern(name=learned[0], frequency=7))
    assert (updated.frequency, list(updated.emotives), updated.metadata) == (7, [emotive], meta.metadata)
    # "*": every field, so the ones left empty are cleared.
    assert update(pb.Pattern(name=learned[0], frequency=7), "*").metadata == {}
    bad_updates: list[tuple[pb.Pattern, tuple[str, ...], str]] = [
        (pb.Pattern(name=learned[0]), (), "update_mask"),  # nothing set, no mask
        (pb.Pattern(name=learned[0], frequency=2), ("frequency", "name"), "update_mask"),
        (pb.Pattern(name=learned[0], metadata={"k": _with_nan()}), ("metadata",), "pattern.metadata.k[1]"),
    ]
    for pattern, paths, field in bad_updates:
        with pytest.raises(grpc.RpcError) as bad:
            update(pattern, *paths)
        assert details(bad.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    observe(stub, sid, "a", "b")
    assert stub.GetPredictions(svc.GetPredictionsRequest(name=sid)).predictions[0].frequency == 7
    stub.DeletePattern(svc.DeletePatternRequest(name=learned[0]))
    assert stub.GetPredictions(svc.GetPredictionsRequest(name=sid)).predictions == []
    with pytest.raises(grpc.RpcError) as info:
        stub.GetPattern(svc.GetPatternRequest(name=learned[0]))
    assert details(info.value)[:2] == (grpc.StatusCode.NOT_FOUND, "PATTERN_NOT_FOUND")


def test_repeated_request_id_returns_first_response_and_changes_nothing(
    stub: svc_grpc.KatoServiceStub, node_id: str
) -> None:
    sid = create(stub, node_id)
    first = observe(stub, sid, "a", request_id="req-1")
    again = observe(stub, sid, "a", request_id="req-1")
    assert again == first
    observe(stub, sid, "b")
    learn1 = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-1"))
    learn2 = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-1"))
    assert learn1 == learn2
    assert stub.GetPattern(svc.GetPatternRequest(name=learn1.pattern)).frequency == 1
    assert stub.GetSession(svc.GetSessionRequest(name=sid)).time == 2
    created = stub.CreateSession(
        svc.CreateSessionRequest(
            session=svc.Session(knowledge_base=names.knowledge_base(node_id)), request_id="create-" + node_id
        )
    )
    recreated = stub.CreateSession(
        svc.CreateSessionRequest(
            session=svc.Session(knowledge_base=names.knowledge_base(node_id)), request_id="create-" + node_id
        )
    )
    assert created.name == recreated.name


def _update(stub: svc_grpc.KatoServiceStub, session: svc.Session, *paths: str) -> svc.Session:
    mask = field_mask_pb2.FieldMask(paths=paths) if paths else None
    return stub.UpdateSession(svc.UpdateSessionRequest(session=session, update_mask=mask))


def test_update_session_changes_what_it_names_and_validates(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id, max_predictions=5)
    # No mask (AIP-134): the fields the request sets; the other config parameters stay.
    s = _update(stub, svc.Session(name=sid, config=pb.SessionConfig(recall_threshold=0.5)))
    assert (s.config.max_predictions, s.config.recall_threshold, s.ttl_seconds) == (5, 0.5, 3600)
    s = _update(stub, svc.Session(name=sid, ttl_seconds=120, metadata={"team": "a"}))
    assert (s.ttl_seconds, dict(s.metadata), s.config.max_predictions) == (120, {"team": "a"}, 5)
    assert 100 <= s.expire_time.seconds - s.create_time.seconds <= 140
    # One parameter by path: named but unset goes back to its default; "config" replaces it all.
    assert _update(stub, svc.Session(name=sid), "config.max_predictions").config.max_predictions == 100
    s = _update(stub, svc.Session(name=sid, config=pb.SessionConfig(persistence=7)), "config")
    assert (s.config.persistence, s.config.recall_threshold, dict(s.metadata)) == (7, 0.1, {"team": "a"})
    bad: list[tuple[svc.Session, tuple[str, ...], str]] = [
        (svc.Session(name=sid, config=pb.SessionConfig(rank_sort_algo=pb.RANK_SORT_ALGO_WEIGHTED_SNR)), (),
         "session.config.rank_sort_algo"),
        (svc.Session(name=sid, ttl_seconds=5), (), "session.ttl_seconds"),
        (svc.Session(name=sid), (), "update_mask"),  # nothing set, no mask
        (svc.Session(name=sid, knowledge_base="knowledgeBases/other"), ("knowledge_base",), "update_mask"),  # immutable
        (svc.Session(name="sessions/s-123", ttl_seconds=120), (), "session.name"),
        (svc.Session(name=sid.removeprefix("sessions/"), ttl_seconds=120), (), "session.name"),  # a bare id
    ]  # fmt: skip
    for session, paths, field in bad:
        with pytest.raises(grpc.RpcError) as info:
            _update(stub, session, *paths)
        assert details(info.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    after = stub.GetSession(svc.GetSessionRequest(name=sid))
    assert (after.config.persistence, after.ttl_seconds, after.knowledge_base) == (7, 120, "knowledgeBases/" + node_id)


def test_observe_sequence_and_stream(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid = create(stub, node_id)
    r = stub.ObserveSequence(
        svc.ObserveSequenceRequest(
            name=sid,
            observations=[pb.Observation(strings=[s, s + "2"]) for s in ("a", "b", "c")],
            learn_after_each=True,
        )
    )
    prefix = names.pattern_prefix(node_id)
    assert len(r.auto_learned_patterns) == 3 and all(n.startswith(prefix) for n in r.auto_learned_patterns)
    r = stub.ObserveSequence(
        svc.ObserveSequenceRequest(
            name=sid,
            observations=[pb.Observation(strings=[s]) for s in ("x", "y", "z")],
            learn_at_end=True,
        )
    )
    assert r.final_learned_pattern == names.pattern(node_id, pattern_name([["x"], ["y"], ["z"]]))
    assert r.final_stm_length == 0
    r = stub.ObserveSequence(
        svc.ObserveSequenceRequest(
            name=sid,
            observations=[pb.Observation(strings=[f"isolated{i}"]) for i in (1, 2, 3)],
            clear_stm_between=True,
        )
    )
    assert r.final_stm_length == 1
    stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
    requests = [
        svc.ObserveStreamRequest(name=sid, observation=pb.Observation(strings=[s]), return_predictions=True)
        for s in ("x", "y")
    ]
    responses = list(stub.ObserveStream(iter(requests)))
    assert [r.time for r in responses] == [1, 2]
    assert responses[1].predictions[0].future[0].symbols == ["z"]


def test_sessions_on_one_node_are_isolated_but_share_the_kb(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    left, right = create(stub, node_id), create(stub, node_id)
    alphabet = {left: [f"L{i}" for i in range(6)], right: [f"R{i}" for i in range(6)]}
    errors: list[str] = []

    def worker(sid: str) -> None:
        own = set(alphabet[sid])
        for round_ in range(5):
            for s in alphabet[sid]:
                r = observe(stub, sid, s, return_predictions=True)
                stm = stub.GetShortTermMemory(svc.GetShortTermMemoryRequest(name=sid))
                seen = {x for e in stm.events for x in e.symbols}
                seen |= set(stub.GetPerceptData(svc.GetPerceptDataRequest(name=sid)).percept.strings)
                seen |= {x for p in r.predictions for e in p.extras for x in e.symbols}
                seen |= {x for p in r.predictions for x in p.matches}
                if not seen <= own:
                    errors.append(f"{sid} saw {seen - own}")
            if round_ == 0:
                stub.Learn(svc.LearnRequest(name=sid))

    # Through futures, so that a worker's exception fails the test (a plain thread's would be
    # printed and lost, leaving ``errors`` empty).
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(worker, sid) for sid in (left, right)]:
            done.result()
    assert errors == []
    # Both see both learned patterns.
    for sid in (left, right):
        stub.ClearShortTermMemory(svc.ClearShortTermMemoryRequest(name=sid))
        observe(stub, sid, "L0")
        observe(stub, sid, "R0")
        futures = {p.future[0].symbols[0] for p in stub.GetPredictions(svc.GetPredictionsRequest(name=sid)).predictions}
        assert futures == {"L1", "R1"}


def test_observe_stream_batches_but_answers_like_unary_calls(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    sid, other = create(stub, node_id), create(stub, node_id)
    observe(stub, sid, "a")
    observe(stub, sid, "b")
    stub.Learn(svc.LearnRequest(name=sid))
    requests = [
        svc.ObserveStreamRequest(
            name=sid if i % 50 else other, observation=pb.Observation(strings=["a" if i % 2 else "b"])
        )
        for i in range(300)
    ]
    responses = list(stub.ObserveStream(iter(requests)))
    times = [r.time for r, q in zip(responses, requests, strict=True) if q.name == sid]
    assert times == list(range(3, len(times) + 3))  # two observes came before the stream
    assert stub.GetSession(svc.GetSessionRequest(name=other)).time == 6
    # An invalid observation mid-stream: everything before it is answered and kept, then the error.
    bad = [
        *requests[1:5],
        svc.ObserveStreamRequest(name=sid, observation=pb.Observation(emotives={"e": math.nan})),
        *requests[1:5],
    ]
    got: list[svc.ObserveStreamResponse] = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub.ObserveStream(iter(bad)):
            got.append(response)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.time for r in got] == [len(times) + 2 + i for i in range(1, 5)]
    assert stub.GetSession(svc.GetSessionRequest(name=sid)).time == len(times) + 6


def test_a_cancelled_call_leaves_the_session_whole(stores: Stores, log_dir: Path) -> None:
    # A sequence cancelled while the engine computes it commits nothing: no step of it, no
    # half of it. Each step predicts against three 300-event patterns with a growing STM (the
    # last step alone is the heavy GetPredictions of test_process_safety, seconds of work), so
    # the cancel lands mid-computation on any machine. Signals, not
    # sleeps: the call's KB lookup (the last step before the engine) says it computes, the
    # engine's stop counter that the cancel reached it.
    port = devstack.free_port()
    server = new_server(*stores, log_dir).start(KATO_METRICS_PORT=str(port))
    try:
        stub = server.stub()
        rnd = random.Random(7)
        node = "cancel-" + uuid.uuid4().hex
        learner = create(stub, node, process_predictions=False)
        for _ in range(3):
            stub.ObserveSequence(
                svc.ObserveSequenceRequest(name=learner, observations=_draws(rnd, 300), learn_at_end=True), timeout=120
            )
        sid = create(stub, node, recall_threshold=0.0)
        before = scrape(port)
        future = stub.ObserveSequence.future(
            svc.ObserveSequenceRequest(name=sid, observations=_draws(rnd, 1000)), timeout=3600
        )
        assert eventually(
            lambda: _sum(scrape(port), "kato_kb_cache_lookups_total") > _sum(before, "kato_kb_cache_lookups_total"), 60
        )
        assert future.cancel(), "the call was still running"
        stopped = "kato_engine_stopped_total"
        assert eventually(lambda: scrape(port).get(stopped, 0) == before.get(stopped, 0) + 1, 60), "stopped mid-way"
        session = stub.GetSession(svc.GetSessionRequest(name=sid))
        assert session.time == 0 and session.stm_length == 0  # nothing of the sequence was kept
        assert observe(stub, sid, "after").time == 1  # and the server answers on
    finally:
        server.stop()


def _draws(rnd: random.Random, n: int) -> list[pb.Observation]:
    """``n`` events of 10 symbols drawn from 20: every pattern of them is a candidate."""
    return [pb.Observation(strings=sorted(rnd.sample([f"s{i}" for i in range(20)], 10))) for _ in range(n)]


def _sum(metrics: dict[str, float], name: str) -> float:
    """A metric's value summed over its labels."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _with_nan() -> struct_pb2.ListValue:
    values = struct_pb2.ListValue()
    values.extend(["ok", float("nan")])
    return values


def test_a_stale_etag_is_aborted_and_changes_nothing(stub: svc_grpc.KatoServiceStub, node_id: str) -> None:
    # AIP-154: a conditional change names the etag it read; a stale one is ABORTED.
    session = stub.CreateSession(
        svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node_id)))
    )
    sid, first = session.name, session.etag
    config = pb.SessionConfig(max_predictions=3)
    second = _update(stub, svc.Session(name=sid, config=config, etag=first))
    assert second.etag != first and second.config.max_predictions == 3
    stale_calls: list[Callable[[], object]] = [
        lambda: _update(stub, svc.Session(name=sid, config=pb.SessionConfig(max_predictions=9), etag=first)),
        lambda: _update(stub, svc.Session(name=sid, ttl_seconds=120, etag=first)),
        lambda: stub.DeleteSession(svc.DeleteSessionRequest(name=sid, etag=first)),
    ]
    for call in stale_calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert details(info.value)[:2] == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    now = stub.GetSession(svc.GetSessionRequest(name=sid))
    assert (now.etag, now.config.max_predictions, now.ttl_seconds) == (second.etag, 3, session.ttl_seconds)
    extended = _update(stub, svc.Session(name=sid, ttl_seconds=120, etag=now.etag))
    stub.DeleteSession(svc.DeleteSessionRequest(name=sid, etag=extended.etag))
    with pytest.raises(grpc.RpcError) as gone:
        stub.GetSession(svc.GetSessionRequest(name=sid))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
