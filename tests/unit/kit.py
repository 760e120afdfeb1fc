"""Small helpers to drive the pure engine in tests (one session on an in-memory KB)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kato_grpc.replay import Replayer, config_from_json


def session(**config: Any) -> Replayer:
    return Replayer(config_from_json(config))


def observe(r: Replayer, *events: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    return [r.run({"op": "observe", "strings": list(e), **extra}) for e in events]


def learn(r: Replayer, *events: Sequence[str]) -> dict[str, Any]:
    observe(r, *events)
    return r.run({"op": "learn"})


def predictions(r: Replayer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = r.run({"op": "predictions"})["predictions"]
    return out


def future_potentials(r: Replayer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = r.run({"op": "predictions"})["future_potentials"]
    return out


def set_config(r: Replayer, **config: Any) -> None:
    r.update_config(config_from_json(config))


def clear_stm(r: Replayer) -> None:
    r.run({"op": "clear_stm"})
