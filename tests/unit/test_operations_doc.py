"""docs/operations.md lists every setting the server reads."""

from __future__ import annotations

from pathlib import Path

from kato_grpc.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [f"KATO_{name.upper()}" for name in Settings.model_fields if f"`KATO_{name.upper()}`" not in text]
    assert not missing, f"not in docs/operations.md: {missing}"
