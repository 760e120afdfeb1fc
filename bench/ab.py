"""Servers that differ in one thing, measured in turn (A/B/C/A/B/C/...) so the machine's noise
falls on all of them alike: each round runs the service latency suite (``bench.service``)
against each server and keeps its p50s."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2_grpc

from bench.service import latency_suite
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server.devserver import ServerProcess

Rounds = dict[str, dict[str, list[float]]]  # server -> figure (health, observe, learn) -> p50 per round


async def _p50s(address: str, calls: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        result = await latency_suite(svc_grpc.KatoServiceStub(channel), health_pb2_grpc.HealthStub(channel), calls)
    return {figure: float(values[0]) for figure, values in result.items()}


def alternate(servers: Mapping[str, ServerProcess], rounds: int, calls: int) -> Rounds:
    out: Rounds = {}
    for _ in range(rounds):
        for name, server in servers.items():
            for figure, p50 in asyncio.run(_p50s(server.address, calls)).items():
                out.setdefault(name, {}).setdefault(figure, []).append(p50)
    return out


def table(results: Rounds, figure: str, base: str) -> list[str]:
    """A markdown table of one figure's p50 per round, median and change against ``base``."""
    reference = statistics.median(results[base][figure])
    rows = []
    for name, figures in results.items():
        values = figures[figure]
        median = statistics.median(values)
        rows.append(
            f"| {name} | {' / '.join(f'{v:.3f}' for v in values)} | {median:.3f} "
            f"| {100 * (median - reference) / reference:+.1f} % |"
        )
    return [f"| server | {figure} p50 per round (ms) | median (ms) | vs {base} |", "|---|---|---:|---:|", *rows]
