"""buf keeps the API's contract: lint clean, and a breaking change against the baseline fails."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from kato_server.devserver import ROOT

BUF = ROOT / "node_modules" / ".bin" / "buf"


def _buf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_the_api_is_lint_clean_and_unbroken_against_its_baseline() -> None:
    assert _buf(ROOT, "lint").returncode == 0
    assert _buf(ROOT, "breaking", "proto", "--against", "api/kato-v1.binpb").returncode == 0


def test_a_breaking_change_fails_and_a_storage_change_does_not(tmp_path: Path) -> None:
    for part in ("proto", "third_party", "api"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    internal = tmp_path / "proto/kato/internal/v1/session.proto"
    internal.write_text(_changed(internal.read_text(), "int64 version = 11", "int64 version = 99"))
    assert _buf(tmp_path, "breaking", "proto", "--against", "api/kato-v1.binpb").returncode == 0
    service = tmp_path / "proto/kato/v1/kato_service.proto"
    service.write_text(_changed(service.read_text(), "string etag = 8 ", "string etag = 18 "))
    broken = _buf(tmp_path, "breaking", "proto", "--against", "api/kato-v1.binpb")
    assert broken.returncode != 0 and "etag" in broken.stdout + broken.stderr


def test_the_api_reference_is_generated_from_the_protos_as_they_are() -> None:
    # docs/api.md is `make proto`'s output: a proto comment changed without regenerating fails.
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    rendered: str = generator.render()
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == rendered
    for rpc in ("CreateSession", "ObserveStream", "ClearKnowledgeBase"):
        assert f"### {rpc}\n" in rendered


def _changed(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old  # the edit must happen, or the test proves nothing
    return text.replace(old, new)
