"""What observing the service costs (issue 13): Observe p50 on servers that differ in one
thing each — nothing on (log level WARNING), metrics (KATO_METRICS_PORT), traces (OTLP over
gRPC to a collector in this process that accepts and drops them, every call sampled), the
access log (KATO_LOG_LEVEL=INFO, JSON lines to a file) — measured in turn (A/B/C/D/A/...) to
spread the machine's noise.

    python -m bench.overhead [--rounds 3] [--calls 2000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.ab import Rounds, alternate, table
from bench.report import emit
from kato_server import devstack
from kato_server.devserver import new_server


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that counts the spans it is sent and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> object:  # noqa: N802
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def variants(collector_port: int) -> dict[str, dict[str, str]]:
    return {
        "off": {},
        "metrics": {"KATO_METRICS_PORT": str(devstack.free_port())},
        "traces": {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        },
        "access log": {"KATO_LOG_LEVEL": "INFO", "KATO_LOG_JSON": "true"},
    }


def run(rounds: int, calls: int) -> tuple[Rounds, int]:
    collector = _Collector()
    sink = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, sink)  # type: ignore[no-untyped-call]
    sink_port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    with devstack.scratch_stores() as (redis, mongo, tmp):
        # Each server its own Redis database too: two servers sharing one would see each
        # other's published KB versions and refresh their caches on every call.
        servers = {
            name: new_server(redis, mongo, tmp, f"bench_{i}", redis_db=i + 1, quick=False).start(**env)
            for i, (name, env) in enumerate(variants(sink_port).items())
        }
        try:
            out = alternate(servers, rounds, calls)
        finally:
            for server in servers.values():
                server.stop()
            sink.stop(1)
    return out, collector.spans


def report(r: Rounds, spans: int, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "## Observability overhead (issue 13)",
            "",
            f"- command: `{command}`",
            f"- date: {when}; machine: {platform.machine()}, 2 cores; one server process each, same stores",
            "- each server differs from `off` in one thing: metrics on, traces exported (OTLP/gRPC to a"
            f" local sink; {spans:,} spans received), or the access log written (INFO, JSON)",
            "- target: Observe p50 with metrics on within 5 % of off",
            "",
            *table(r, "observe", "off"),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args(argv)
    results, spans = run(args.rounds, args.calls)
    command = "python -m bench.overhead " + " ".join(sys.argv[1:] if argv is None else argv)
    emit(report(results, spans, command), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
