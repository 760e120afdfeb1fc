"""The recorded scenarios, and the comparison rule of the conformance README as a function
that lists every difference (shared by the replay and the gRPC conformance tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


INTEGER_KEYS = frozenset({"frequency", "length", "time", "stm_length", "supporting_patterns"})


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Every place where ``actual`` does not match ``expected`` (extra keys in actual are fine)."""
    out: list[str] = []
    _diff(expected, actual, path, out, key="")
    return out


def _diff(expected: Any, actual: Any, path: str, out: list[str], key: str) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected an object, got {actual!r}")
            return
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}: missing")
            else:
                _diff(v, actual[k], f"{path}.{k}", out, key=k)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            out.append(f"{path}: expected {len(expected)} items, got {actual!r}"[:300])
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _diff(e, a, f"{path}[{i}]", out, key=key)
    elif expected is None or isinstance(expected, (str, bool)):
        if expected != actual or type(expected) is not type(actual):
            out.append(f"{path}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            out.append(f"{path}: expected a number, got {actual!r}")
        elif key in INTEGER_KEYS and not (isinstance(actual, int) and actual == expected):
            out.append(f"{path}: expected integer {expected!r}, got {actual!r}")
        elif abs(expected - actual) > 1e-9 * max(1.0, abs(expected), abs(actual)):
            out.append(f"{path}: expected {expected!r}, got {actual!r}")
    else:
        out.append(f"{path}: unexpected value {expected!r} in the recording")
