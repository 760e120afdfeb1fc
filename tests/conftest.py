"""The whole suite's set-up."""

from __future__ import annotations

import os

# pytest-xdist's workers start with COLUMNS=80, which rich's consoles (kato_grpc/cli/common.py,
# made when the CLI is imported) would keep for good: the CLI tests give each invocation its
# own width, as a terminal does.
os.environ.pop("COLUMNS", None)

# Server processes are forked from a fork server that has imported kato_server once
# (kato_server/devserver.py, docs/architecture.md §8): ~1 CPU-s less per server start, and the
# suite starts over a hundred. Inherited by the benchmarks' smoke runs; DEVSERVER_FORK=0 in the
# environment starts each server as a fresh `python -m kato_server` instead.
os.environ.setdefault("DEVSERVER_FORK", "1")
