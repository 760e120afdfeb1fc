# kato-grpc developer commands. Everything runs from a local virtualenv that `make venv`
# creates from the pinned pyproject.toml; nothing outside the checkout is needed but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NODE_STAMP := node_modules/.installed

.PHONY: venv test lint typecheck proto client api-baseline bench bench-1m run fuzz load soak simulate clean

venv: $(STAMP)

# Quiet pip, but never a silent wait: a fresh install takes one to two minutes.
$(STAMP): pyproject.toml
	@echo "make: creating $(VENV) and installing the pinned dependencies (1-2 minutes on a fresh machine)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@echo "make: $(VENV) is ready"
	touch $(STAMP)

# Four workers on two cores: the integration tests wait on the servers they start (each
# worker starts its own stores), so the cores stay busy (~98 % on this machine; three left
# ~8 % idle); worksteal evens out the long files. The Go client test
# needs Debian's Go packages (.ci/run installs them); without a Go toolchain pytest's summary
# lists it as SKIPPED with the reason.
# The project's modules are compiled first: each test process and every server, CLI and replay
# process the suite starts would otherwise compile them again where PYTHONDONTWRITEBYTECODE is
# set (~0.3 CPU-s a process; the .pyc files are git-ignored and checked against their source).
test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m compileall -q -j 0 kato_grpc server tests bench scripts
	$(BIN)/python -m pytest -q -n 4 --dist worksteal

lint: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	npx --no-install buf format --diff --exit-code proto
	npx --no-install buf lint
	npx --no-install buf breaking proto --against api/kato-v1.binpb
	@if command -v gofmt >/dev/null; then \
	  test -z "$$(gofmt -l tests/go)" || { gofmt -l tests/go; echo "make lint: run gofmt -w tests/go"; exit 1; }; \
	else echo "make lint: no gofmt on this machine: tests/go was not format-checked"; fi

# Node tools, pinned by package-lock.json: buf (and the cross-language client test).
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The API contract's baseline, which `make lint` checks breaking changes against. Rewrite it
# only for a deliberate, reviewed change of the public API (the storage protos are exempt).
api-baseline: $(NODE_STAMP)
	npx --no-install buf build proto -o api/kato-v1.binpb

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py
	$(BIN)/python scripts/gen_api_docs.py
	$(MAKE) client

# kato_grpc/client/sync.py, the blocking client, translated from aio.py (docs/architecture.md §1).
client: $(STAMP)
	$(BIN)/python scripts/gen_sync_client.py

# Rewrites the sections of BENCHMARKS.md it measures (engine-only predictions up to 1M patterns, the
# service suite, the tools, observability overhead, Redis Cluster, cost per call; ~40 min) and
# keeps the others (soak, fuzz, load).
bench: $(STAMP)
	$(BIN)/python -m bench.engine --sizes 1000 10000 100000 1000000 --write BENCHMARKS.md
	$(BIN)/python -m bench.service --sizes 1000 10000 100000 --write BENCHMARKS.md
	$(BIN)/python -m bench.tools --write BENCHMARKS.md
	$(BIN)/python -m bench.bounds --write BENCHMARKS.md
	$(BIN)/python -m bench.overhead --rounds 5 --write BENCHMARKS.md
	$(BIN)/python -m bench.cluster --rounds 5 --write BENCHMARKS.md
	$(BIN)/python -m bench.costs --write BENCHMARKS.md
	$(BIN)/python -m bench.learn_ack --write BENCHMARKS.md
	$(BIN)/python -m bench.coldstart --write BENCHMARKS.md
	$(BIN)/python -m bench.throughput --write BENCHMARKS.md
	$(BIN)/python -m bench.refresh --write BENCHMARKS.md
	$(BIN)/python -m bench.heavy_call --write BENCHMARKS.md
	$(BIN)/python -m bench.watchers --write BENCHMARKS.md
	$(BIN)/python -m bench.harness --write BENCHMARKS.md

# 1M patterns trained through the API, then GetPredictions and the cold start (~30 min; run
# once, its section of BENCHMARKS.md kept by make bench).
bench-1m: $(STAMP)
	$(BIN)/python -m bench.million --write BENCHMARKS.md

# Serves on 127.0.0.1:50051. Without KATO_REDIS_URL / KATO_MONGODB_URI it starts local
# Redis- and MongoDB-compatible servers (data in .data/) and stops them on Ctrl-C.
run: $(STAMP)
	@echo "make: starting the local stores and kato on 127.0.0.1:$${KATO_PORT:-50051} (Ctrl-C stops all)"
	$(BIN)/python -m kato_server

# 10,000 generated requests (and garbage bytes) against a live server (issue 5).
fuzz: $(STAMP)
	KATO_FUZZ_REQUESTS=10000 $(BIN)/python -m pytest -q -s tests/integration/test_fuzz.py

# 10,000 observes from 64 clients on 8 shared sessions over 2 server processes (issue 5).
load: $(STAMP)
	KATO_LOAD_CALLS=10000 $(BIN)/python -m pytest -q -s tests/integration/test_resilience.py -k 'lose_and_double and 64'

# 10 minutes of mixed load on 2 workers; writes RSS growth after warm-up into BENCHMARKS.md.
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10 --write BENCHMARKS.md

# The simulation of the exactly-once learn path (docs/architecture.md §10): STEPS
# steps in all, in histories of LENGTH steps seeded SEED, SEED+1, ...; stops at the first
# failure and prints its seed and its shrunk history. `make test` runs 120 histories of 150
# steps from seed 1.
SEED ?= 1
STEPS ?= 300000
LENGTH ?= 150
simulate: $(STAMP)
	PYTHONPATH=.:server $(BIN)/python -m tests.simulation --seed $(SEED) --steps $(STEPS) --length $(LENGTH)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
