"""What the `kato` commands share: where the server is, the console, the progress bar and the
table-or-JSON output (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kato_grpc.cli import views
from kato_grpc.client import KatoClient

console = Console()
errors = Console(stderr=True)
# How `errors` prints a message: one line however long (a script reads it whole), as written.
ONE_LINE: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}

Json = Annotated[bool, typer.Option("--json", help="Print JSON (the API's JSON mapping) instead of a table.")]
Kb = Annotated[str, typer.Argument(help="The knowledge base: its node id (demo) or name (knowledgeBases/demo).")]
ConfigOption = Annotated[
    list[str] | None, typer.Option("--config", "-c", help="A session parameter, name=value (repeatable).")
]


@dataclass
class Target:
    target: str
    token: str | None
    tls: bool
    ca_file: Path | None
    timeout: float

    def client(self) -> KatoClient:
        certificates = self.ca_file.read_bytes() if self.ca_file else None
        return KatoClient(
            self.target, token=self.token, tls=self.tls, root_certificates=certificates, timeout=self.timeout
        )


def client(ctx: typer.Context) -> KatoClient:
    target: Target = ctx.obj
    return target.client()


def config_values(pairs: list[str] | None) -> dict[str, Any]:
    """``name=value`` pairs: values read as JSON when they are (0.3, true, "x"), else as text."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not name=value", param_hint="--config")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def progress_bar(rate: str) -> Progress:
    """A bar for a long command, its tasks' ``rate`` field shown as ``{rate}/s``. Drawn on
    stderr, and only when stderr is a terminal: stdout keeps the summary, and a log or a pipe
    gets no bar."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} " + rate + "/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=errors, disable=not errors.is_terminal)


def print_json(data: Any) -> None:
    """Plain indented JSON, written as is: rich's highlighter took seconds on the ~400 KB of
    100 predictions, and a script reading it gains nothing from colour."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def show(as_json: bool, messages: Message | list[Any], table: Callable[[], Any]) -> None:
    """``--json``: the messages in the API's JSON mapping; otherwise ``table()``."""
    if as_json:
        print_json(views.as_json(messages))
    else:
        console.print(table())
