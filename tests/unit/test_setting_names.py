"""Every ``KATO_*`` name the documentation gives a user is one the code reads: a server setting
(``kato_grpc.settings.Settings``) or an environment variable of the CLI's options. A doc that
names a setting that does not exist sends its reader to configure nothing (issue 24, item 8:
``KATO_MAX_SEQUENCE_OBSERVATIONS`` for ``KATO_MAX_OBSERVATIONS_PER_SEQUENCE``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from kato_grpc.cli.app import app
from kato_grpc.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "proto").rglob("*.proto"))]
NAME = re.compile(r"\bKATO_[A-Z0-9_]*[A-Z0-9]\b(_\*)?")


def _settings() -> set[str]:
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    return {prefix + name.upper() for name in Settings.model_fields}


def _cli_variables() -> set[str]:
    found: set[str] = set()

    def walk(command: Any) -> None:  # a click Command (typer's own copy of click)
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            found.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def test_the_sets_the_check_relies_on_are_read() -> None:
    assert "KATO_PORT" in _settings() and "KATO_MAX_OBSERVATIONS_PER_SEQUENCE" in _settings()
    assert {"KATO_TARGET", "KATO_TOKEN"} <= _cli_variables()


def test_every_documented_kato_name_is_read_by_the_code() -> None:
    known = _settings() | _cli_variables()
    unknown = []
    for path in DOCUMENTS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in NAME.finditer(line):
                name = match.group(0)
                # A family (KATO_TLS_*): some setting must start with it.
                family = name.endswith("_*")
                if not (any(k.startswith(name[:-1]) for k in known) if family else name in known):
                    unknown.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert unknown == []
