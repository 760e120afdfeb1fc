# Production image sketch for kato-grpc. NOT exercised by CI (no container engine runs
# there); the service itself is tested with `make test`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kato_grpc ./kato_grpc
COPY server ./server
RUN pip install --no-cache-dir .
ENV KATO_HOST=0.0.0.0 KATO_PORT=50051 KATO_LOG_JSON=true
EXPOSE 50051
# Kubernetes: use gRPC probes on grpc.health.v1.Health (port 50051).
CMD ["python", "-m", "server"]
