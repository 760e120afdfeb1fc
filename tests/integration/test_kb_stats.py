"""Knowledge-base and symbol statistics (GetKnowledgeBase, GetSymbol, ListSymbols), checked
against the engine's own statistics and the original KATO's symbol-affinity cases."""

from __future__ import annotations

import random

import pytest

from kato_grpc import names
from kato_grpc.client import InvalidArgument, KatoClient, NotFound
from kato_grpc.replay import Replayer
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server.devserver import ServerProcess


def _learn(kato: KatoClient, node: str, *observations: tuple[str, dict[str, float]]) -> None:
    """One learn on a fresh session (so its emotive accumulator starts empty)."""
    session = kato.create_session(node)
    for symbol, emotives in observations:
        kato.observe(session.name, [symbol], emotives=emotives)
    kato.learn(session.name)


def _affinity(kato: KatoClient, node: str, symbol: str) -> dict[str, float]:
    return dict(kato.get_symbol(node, symbol).affinity)


# The six cases of the original KATO's test_symbol_affinity, through GetSymbol.
def test_affinity_is_the_learn_average_of_emotives(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("A", {"joy": 0.8}), ("B", {"joy": 0.4}))
        assert _affinity(kato, node_id, "A") == _affinity(kato, node_id, "B") == {"joy": pytest.approx(0.6)}


def test_affinity_accumulates_across_patterns(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("A", {"joy": 1.0}), ("B", {"joy": 1.0}))
        _learn(kato, node_id, ("B", {"joy": 2.0}), ("C", {"joy": 2.0}))
        assert [_affinity(kato, node_id, s)["joy"] for s in "ABC"] == [1.0, 3.0, 2.0]


def test_affinity_keeps_every_emotive(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("X", {"joy": 0.8, "fear": 0.2}), ("Y", {"joy": 0.4, "fear": 0.6}))
        for s in "XY":
            assert _affinity(kato, node_id, s) == {"joy": pytest.approx(0.6), "fear": pytest.approx(0.4)}


def test_no_emotives_no_affinity(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("P", {}), ("Q", {}))
        assert _affinity(kato, node_id, "P") == _affinity(kato, node_id, "Q") == {}


def test_relearning_accumulates_affinity(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("A", {"joy": 1.0}), ("B", {"joy": 1.0}))
        _learn(kato, node_id, ("A", {"joy": 2.0}), ("B", {"joy": 2.0}))
        assert _affinity(kato, node_id, "A") == _affinity(kato, node_id, "B") == {"joy": 3.0}
        assert kato.get_symbol(node_id, "A").frequency == 2


def test_affinity_takes_new_emotives_of_later_learns(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address) as kato:
        _learn(kato, node_id, ("D", {"utility": 30, "energy": -5}), ("E", {"utility": 30, "energy": -5}))
        _learn(kato, node_id, ("D", {"utility": -5, "happy": 12}), ("F", {"utility": -5, "happy": 12}))
        assert _affinity(kato, node_id, "D") == {"utility": 25.0, "energy": -5.0, "happy": 12.0}
        assert _affinity(kato, node_id, "E") == {"utility": 30.0, "energy": -5.0}
        assert _affinity(kato, node_id, "F") == {"utility": -5.0, "happy": 12.0}


def test_statistics_equal_the_engines_own(server: ServerProcess, node_id: str) -> None:
    """Random learns through the service and through the pure replay: every symbol's
    statistics and the KB totals agree exactly; pages cover every symbol once, in order."""
    rnd = random.Random(7)
    alphabet = ["a", "b", "a/b", "é", "x y", "%41", "", "z"]
    replay = Replayer(pb.SessionConfig())
    with KatoClient(server.address) as kato:
        session = kato.create_session(node_id)
        for _ in range(25):
            for _ in range(rnd.randint(2, 4)):
                event = rnd.sample(alphabet, rnd.randint(1, 3))
                emotives = {"joy": rnd.choice([0.5, -1.0, 2.25])} if rnd.random() < 0.7 else {}
                kato.observe(session.name, event, emotives=emotives)
                replay.run({"op": "observe", "strings": event, "emotives": emotives})
            kato.learn(session.name)
            replay.run({"op": "learn"})
        kb = kato.get_knowledge_base(node_id)
        totals = replay.kb.totals()
        assert (kb.name, kb.pattern_count, kb.total_pattern_frequencies, kb.symbol_count) == (
            names.knowledge_base(node_id),
            totals.total_unique_patterns,
            totals.total_pattern_frequencies,
            totals.vocabulary_size,
        )
        assert kb.cache.cached and 0 < kb.cache.cached_version <= kb.version  # observes loaded it
        again = kato.get_knowledge_base(node_id)
        assert (again.version, again.cache.cached_version) == (kb.version, kb.version)
        listed = list(kato.symbols(node_id, page_size=3))
        assert [s.symbol for s in listed] == sorted(s for s in alphabet if replay.kb.symbol(s) is not None)
        for s in listed:
            stats = replay.kb.symbol(s.symbol)
            assert stats is not None and s.name == names.symbol(node_id, s.symbol)
            assert (s.frequency, s.pattern_member_frequency, dict(s.affinity)) == (
                stats.frequency,
                stats.pattern_member_frequency,
                dict(stats.affinity),
            )
            assert s.probability == stats.pattern_member_frequency / totals.total_unique_patterns
            assert kato.get_symbol(node_id, s.symbol) == s


def test_unknown_and_malformed_symbols(server: ServerProcess, node_id: str) -> None:
    with KatoClient(server.address, retries=0) as kato:
        with pytest.raises(NotFound) as missing:
            kato.get_symbol(node_id, "never-learned")
        assert missing.value.reason == "SYMBOL_NOT_FOUND"
        for bad in ("knowledgeBases/x/symbols/%41", "knowledgeBases/x/symbols/%ff", "knowledgeBases/x/a"):
            with pytest.raises(InvalidArgument) as info:
                kato.call("GetSymbol", svc.GetSymbolRequest(name=bad), svc.Symbol)
            assert info.value.reason == "MALFORMED_ID"
