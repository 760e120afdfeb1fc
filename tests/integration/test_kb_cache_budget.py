"""Bounded KB caches (issue 14): with KATO_KB_CACHE_MAX_MB a process evicts least-recently-used
knowledge bases whole and loads them again on demand. Over 50 KBs under a small budget its
memory stays within the budget plus its baseline, and every prediction is the one a process
without a budget gives."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kato_grpc.client import KatoClient
from kato_grpc.client import requests as build
from kato_grpc.settings import Settings
from kato_grpc.stores.index import KnowledgeIndex
from kato_grpc.v1 import engine_pb2 as pb
from kato_server import devstack
from kato_server.app import SERVICE_NAME, KatoServer
from kato_server.devserver import new_server
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
KBS, PATTERNS, EVENTS, BUDGET_MB = 50, 100, 20, 4
# What RSS may move beyond the budget: allocator slack and the heap of one KB being loaded.
SLACK_MB = 12


def _sequences(seed: int) -> list[list[list[str]]]:
    rng = random.Random(seed)
    alphabet = [f"w{seed}-{i}" for i in range(200)]
    return [[sorted(rng.sample(alphabet, 2)) for _ in range(EVENTS)] for _ in range(PATTERNS)]


def _queries(kato: KatoClient, kbs: list[str], rounds: int) -> list[bytes]:
    """Two events of each KB's first pattern, then its predictions — KB after KB, ``rounds``
    times (each round past the budget evicts and reloads). KB ``i`` learned ``_sequences(i)``."""
    out = []
    for _ in range(rounds):
        for i, kb in enumerate(kbs):
            session = kato.create_session(kb)
            first = _sequences(i)[0]
            kato.observe_sequence(session.name, [pb.Observation(strings=e) for e in first[:2]])
            out.append(kato.get_predictions(session.name).SerializeToString(deterministic=True))
            kato.delete_session(session.name)
    return out


def test_a_cache_budget_bounds_memory_and_changes_no_prediction(stores: Stores, log_dir: Path) -> None:
    database = "kato_budget_" + uuid.uuid4().hex[:8]
    metrics_port = devstack.free_port()
    bounded = new_server(*stores, log_dir, database, redis_db=3).start(
        KATO_KB_CACHE_MAX_MB=str(BUDGET_MB), KATO_METRICS_PORT=str(metrics_port)
    )
    unbounded = new_server(*stores, log_dir, database, redis_db=3).start()
    try:
        kbs = [f"budget-{uuid.uuid4().hex[:8]}-{i}" for i in range(KBS)]
        with KatoClient(bounded.address, retries=0) as kato, KatoClient(unbounded.address, retries=0) as full:
            for client in (kato, full):  # each process's baseline: everything loaded but KBs
                _queries(client, ["warm-" + uuid.uuid4().hex], 1)
            baseline, unbounded_baseline = bounded.rss_mb(), unbounded.rss_mb()
            for i, kb in enumerate(kbs):  # imported, not learned: the KBs are what is tested, not learning
                patterns = [pb.Pattern(events=[pb.Event(symbols=e) for e in s], frequency=1) for s in _sequences(i)]
                kato.import_knowledge_base(build.import_requests(kb, "budget", patterns))
            answers = _queries(kato, kbs, 2)
            grown = bounded.rss_mb() - baseline
            expected = _queries(full, kbs, 1)
            unbounded_grown = unbounded.rss_mb() - unbounded_baseline
        m = scrape(metrics_port)
    finally:
        bounded.stop()
        unbounded.stop()
    assert answers == expected * 2  # every prediction, before and after its KB was evicted
    assert all(b"patterns/" in a for a in answers)  # they predict something
    assert m["kato_kb_cache_evictions_total"] >= KBS  # each round evicted (almost) every KB
    cached = sum(v for k, v in m.items() if k.startswith("kato_kb_cache_estimated_bytes{"))
    assert cached <= BUDGET_MB * 1024 * 1024
    print(f"RSS growth: bounded {grown:.1f} MB (budget {BUDGET_MB}), unbounded {unbounded_grown:.1f} MB")
    assert grown <= BUDGET_MB + SLACK_MB
    assert unbounded_grown > grown + 10  # the budget is what made the difference


def test_preloaded_knowledge_bases_are_cached_before_serving(stores: Stores, log_dir: Path) -> None:
    database = "kato_preload_" + uuid.uuid4().hex[:8]
    kb = "preload-" + uuid.uuid4().hex
    writer = new_server(*stores, log_dir, database).start()
    try:
        with KatoClient(writer.address, retries=0) as kato:
            session = kato.create_session(kb)
            observations = [pb.Observation(strings=e) for s in _sequences(1)[:20] for e in s]
            kato.observe_sequence(session.name, observations, learn_after=[EVENTS * (k + 1) - 1 for k in range(20)])
    finally:
        writer.stop()
    warm = new_server(*stores, log_dir, database).start(KATO_PRELOAD_NODES=json.dumps([kb]))
    cold = new_server(*stores, log_dir, database).start()
    try:
        with KatoClient(warm.address, retries=0) as w, KatoClient(cold.address, retries=0) as c:
            preloaded = w.get_knowledge_base(kb)
            assert preloaded.cache.cached and preloaded.cache.cached_version == preloaded.version
            assert preloaded.pattern_count == 20
            assert not c.get_knowledge_base(kb).cache.cached  # the check can fail: without it, not cached
    finally:
        warm.stop()
        cold.stop()


def test_readiness_waits_for_the_preloaded_knowledge_bases(stores: Stores) -> None:
    # A process must not take traffic (health "" or kato.v1.KatoService SERVING) while its
    # preloaded KBs are loading; liveness says SERVING as soon as it listens.
    async def run() -> None:
        redis_url, mongodb_uri = devstack.redis_url(stores[0]), devstack.mongodb_uri(stores[1])
        database = "kato_ready_" + uuid.uuid4().hex[:8]
        settings = Settings(port=0, mongodb_database=database, preload_nodes=["slow"])
        server = KatoServer(settings, redis_url, mongodb_uri)
        release, preloading = asyncio.Event(), asyncio.Event()
        view = server.cache.view

        async def slow(kb_id: str, published: int | None = None) -> KnowledgeIndex:
            preloading.set()
            await release.wait()
            return await view(kb_id, published)

        server.cache.view = slow  # type: ignore[method-assign]
        starting = asyncio.create_task(server.start())
        try:
            # The preload has begun: the server listens and has set what it sets before loading.
            async with asyncio.timeout(60):  # bounds a hang only
                await preloading.wait()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)

                async def status(service: str) -> int:
                    try:
                        return int((await health.Check(health_pb2.HealthCheckRequest(service=service))).status)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.NOT_FOUND  # not set yet
                        return -1

                assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
                assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
                assert await status(SERVICE_NAME) != health_pb2.HealthCheckResponse.SERVING
                release.set()
                await starting
                assert await status("") == await status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        finally:
            release.set()
            await starting
            await server.stop()

    asyncio.run(run())
