"""The Python client (kato_grpc.client) against the live server: typed calls, the error tree."""

from __future__ import annotations

import asyncio

import pytest

from kato_grpc import names
from kato_grpc.client import AsyncKatoClient, InvalidArgument, KatoClient, NotFound, observation
from kato_grpc.engine.naming import pattern_name
from kato_server.devserver import ServerProcess


def test_the_client_runs_the_round_trip(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        session = kato.create_session(node_id, config={"recall_threshold": 0.1, "stm_mode": "STM_MODE_CLEAR"})
        assert session.knowledge_base == names.knowledge_base(node_id) and session.config.recall_threshold == 0.1
        for word in ("hello", "world", "again"):
            kato.observe(session.name, [word], metadata={"n": 3})
        learned = kato.learn(session.name)
        assert learned.pattern == names.pattern(node_id, pattern_name([["hello"], ["world"], ["again"]]))
        r = kato.observe(session.name, ["hello"], return_predictions=True)
        assert [p.pattern for p in r.predictions] == [learned.pattern]
        assert [list(e.symbols) for e in kato.get_short_term_memory(session.name)] == [["hello"]]
        assert kato.get_pattern(learned.pattern).metadata["n"].values[0].number_value == 3
        assert [p.name for p in kato.patterns(node_id, page_size=1)] == [learned.pattern]
        seq = kato.observe_sequence(session.name, [observation(["x"]), observation(["y"])], learn_at_end=True)
        assert seq.final_learned_pattern.startswith(names.pattern_prefix(node_id))
        kato.delete_pattern(seq.final_learned_pattern)
        kato.delete_session(session.name)
        with pytest.raises(NotFound) as gone:
            kato.get_session(session.name)
        assert gone.value.reason == "SESSION_NOT_FOUND" and gone.value.code == "NOT_FOUND"


def test_failures_raise_the_error_tree_with_reason_and_fields(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address, retries=0) as kato:
        session = kato.create_session(node_id)
        with pytest.raises(InvalidArgument) as bad:
            kato.observe(session.name, ["x" * 5000])
        assert bad.value.reason == "SYMBOL_TOO_LONG"
        assert [v.field for v in bad.value.violations] == ["observation.strings[0]"]
        with pytest.raises(InvalidArgument) as malformed:
            kato.get_session("s-" + "0" * 32)  # a bare id is not a name
        assert (malformed.value.reason, [v.field for v in malformed.value.violations]) == ("MALFORMED_ID", ["name"])


def test_the_async_client_does_the_same(server: ServerProcess, node_id: str) -> None:
    async def run() -> list[str]:
        async with AsyncKatoClient(server.address) as kato:
            session = await kato.create_session(names.knowledge_base(node_id))
            for word in ("a", "b"):
                await kato.observe(session.name, [word])
            learned = await kato.learn(session.name)
            streamed = [r.time async for r in kato.observe_stream([])]
            assert streamed == []
            with pytest.raises(NotFound):
                await kato.get_pattern(names.pattern(node_id, "0" * 40))
            return [p.name async for p in kato.patterns(node_id)] + [learned.pattern]

    listed, learned = asyncio.run(run())
    assert listed == learned == names.pattern(node_id, pattern_name([["a"], ["b"]]))
