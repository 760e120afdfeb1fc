# syntax=docker/dockerfile:1
# kato-grpc production image: two stages, runs as an unprivileged user, needs its stores:
#   docker build -t kato-grpc:0.1.0 .
#   docker run -e KATO_REDIS_URL=redis://… -e KATO_MONGODB_URI=mongodb://…/?replicaSet=rs0 kato-grpc:0.1.0
# Without the two URLs the server exits at once with one line saying so (exit 2); the local
# development stores are not in this image. Not built in CI (no container engine there):
# tests/integration/test_deploy.py checks this file's structure — docs/operations.md says what
# was and was not run.

# --- build: a virtualenv with the pinned dependencies, then the package -------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kato
ENV PATH=/opt/kato/bin:$PATH
WORKDIR /src
# Dependencies come from pyproject.toml alone, in their own layer: a code change reuses it.
COPY pyproject.toml README.md ./
RUN mkdir -p kato_grpc server/kato_server \
    && touch kato_grpc/__init__.py server/kato_server/__init__.py \
    && pip install '.[server]' \
    && pip uninstall --yes kato-grpc
COPY kato_grpc ./kato_grpc
COPY server ./server
RUN pip install --no-deps . && python -m compileall -q /opt/kato

# --- runtime: the virtualenv only, no compiler, no sources, no root ------------------------
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kato
COPY --from=build /opt/kato /opt/kato
ENV PATH=/opt/kato/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KATO_HOST=0.0.0.0 \
    KATO_PORT=50051 \
    KATO_METRICS_PORT=9100 \
    KATO_LOG_JSON=true
USER 10001
EXPOSE 50051 9100
# Probes: gRPC health on 50051 — "liveness" for liveness, "kato.v1.KatoService" for
# readiness; without Kubernetes: `python -m kato_server.probe [service]` (exit 0 when SERVING).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "kato_server.probe", "liveness"]
ENTRYPOINT ["kato-server"]
