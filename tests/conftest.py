"""The whole suite's set-up."""

from __future__ import annotations

import os

# pytest-xdist's workers start with COLUMNS=80, which rich's consoles (kato_grpc/cli/common.py,
# made when the CLI is imported) would keep for good: the CLI tests give each invocation its
# own width, as a terminal does.
os.environ.pop("COLUMNS", None)
