"""The README's grpcurl round trip works as written (against a test server's port)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kato_grpc.devserver import ROOT, ServerProcess


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- grpcurl-example[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert match, "the README lost its grpcurl example"
    return match.group(1)


def test_readme_grpcurl_round_trip(server: ServerProcess) -> None:
    grpcurl_dir = Path(sys.executable).parent
    script = readme_block().replace("localhost:50051", server.address)
    script = script.replace(".venv/bin/grpcurl", str(grpcurl_dir / "grpcurl"))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "kato.v1.KatoService" in out and "grpc.reflection.v1alpha.ServerReflection" in out
    assert '"LEARN_STATUS_LEARNED"' in out
    assert re.search(r'"future": \[\s*\{\s*"symbols": \[\s*"world"', out)
    assert '"SERVING"' in out
