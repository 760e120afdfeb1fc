"""``python -m kato_server.probe [service]``: exit 0 when the local server's gRPC health says
SERVING for ``service`` ("" = the whole server; ``liveness``; ``kato.v1.KatoService``), 1
otherwise — a container HEALTHCHECK or compose healthcheck without a probe binary. The port is
KATO_PORT (50051); Kubernetes uses its native gRPC probes instead."""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    service = args[0] if args else ""
    address = f"127.0.0.1:{os.environ.get('KATO_PORT', '50051')}"
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address} {service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
