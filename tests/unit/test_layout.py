"""The installed layout (docs/architecture.md §1): no module named ``server`` on anyone's import
path, the server under the project's name, and a client that installs with three dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata


def test_installing_the_project_puts_no_module_named_server_on_the_path(tmp_path: object) -> None:
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('server') is None, u.find_spec('kato_server') is not None, "
        "u.find_spec('kato_grpc.devstack') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_the_client_installs_with_grpc_and_protobuf_alone() -> None:
    requires = metadata.requires("kato-grpc") or []
    always = {re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r}
    assert always == {"protobuf", "grpcio", "googleapis-common-protos"}
    extras = set(metadata.metadata("kato-grpc").get_all("Provides-Extra") or [])
    assert {"server", "cli", "engine", "dev"} <= extras
