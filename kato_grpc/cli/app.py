"""``kato``: the command line of kato-grpc (typer + rich). ``kato --help`` lists it all.

Every command talks to a server through ``kato_grpc.client`` (``--target``, ``--token``,
``--tls``, or ``KATO_TARGET``, ``KATO_TOKEN``, ``KATO_TLS``, ``KATO_CA_FILE``); ``serve`` and
``replay`` run the server and the scenario replay themselves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kato_grpc.cli import transfer, views
from kato_grpc.cli.train import Corpus, train
from kato_grpc.client import KatoClient, KatoError
from kato_grpc.client.channel import DEFAULT_TARGET

app = typer.Typer(help="KATO: learn sequences, read predictions, manage knowledge bases.", no_args_is_help=True)
kb_app = typer.Typer(help="Knowledge bases: statistics, export, import, clear.", no_args_is_help=True)
patterns_app = typer.Typer(help="The patterns of a knowledge base.", no_args_is_help=True)
symbols_app = typer.Typer(help="The symbols of a knowledge base, with their statistics.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions: create, show, delete.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(patterns_app, name="patterns")
app.add_typer(symbols_app, name="symbols")
app.add_typer(sessions_app, name="sessions")
console = Console()
errors = Console(stderr=True)

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


@app.callback()
def main_options(
    ctx: typer.Context,
    target: Annotated[str, typer.Option(envvar="KATO_TARGET", help="host:port of the server.")] = DEFAULT_TARGET,
    token: Annotated[str | None, typer.Option(envvar="KATO_TOKEN", help="Bearer token.")] = None,
    tls: Annotated[bool, typer.Option(envvar="KATO_TLS", help="Use TLS (system roots or --ca-file).")] = False,
    ca_file: Annotated[Path | None, typer.Option(envvar="KATO_CA_FILE", help="PEM roots to trust (TLS).")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline of each call, seconds.")] = 60.0,
) -> None:
    ctx.obj = Target(target, token, tls or ca_file is not None, ca_file, timeout)


def _client(ctx: typer.Context) -> KatoClient:
    target: Target = ctx.obj
    return target.client()


def _config(pairs: list[str] | None) -> dict[str, Any]:
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


def _print(data: Any) -> None:
    console.print_json(json.dumps(data, ensure_ascii=False))


def _show(as_json: bool, messages: Message | list[Any], table: Callable[[], Any]) -> None:
    """``--json``: the messages in the API's JSON mapping; otherwise ``table()``."""
    if as_json:
        _print(views.as_json(messages))
    else:
        console.print(table())


# --- training and predicting -------------------------------------------------------------


@app.command("train")
def train_command(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Corpus files (.txt, .jsonl, .csv).", exists=True)],
    kb: Annotated[str, typer.Option("--kb", help="The knowledge base to learn into.")],
    fmt: Annotated[str | None, typer.Option("--format", help="text, jsonl or csv (default: by extension).")] = None,
    events: Annotated[
        str,
        typer.Option(
            help="Text files: 'token' (a line is a sequence, a token an event) or 'line' "
            "(a block of lines is a sequence, a line an event)."
        ),
    ] = "token",
    batch: Annotated[int, typer.Option(help="Sequences per ObserveSequence call.")] = 200,
    parallel: Annotated[int, typer.Option(help="Sessions working side by side.")] = 2,
    resume: Annotated[bool, typer.Option(help="Skip what an earlier run of this corpus committed.")] = False,
    config: ConfigOption = None,
) -> None:
    """Learn every sequence of FILES as a pattern (ObserveSequence, learn at each sequence's end)."""
    if fmt not in (None, "text", "jsonl", "csv") or events not in ("token", "line"):
        raise typer.BadParameter("--format is text, jsonl or csv; --events is token or line")
    source = Corpus(files, fmt, events)  # type: ignore[arg-type]
    total = sum(1 for _ in source.sequences())
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} patterns/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with _client(ctx) as kato, Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("sequences", total=total, rate=0.0)
        learned = 0

        def progress(sequences: int, patterns: int) -> None:
            nonlocal learned
            learned += patterns
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(task, advance=sequences, rate=learned / elapsed)

        result = train(
            kato, kb, source, batch=batch, parallel=parallel, resume=resume, config=_config(config), progress=progress
        )
    rate = result.learned / result.seconds if result.seconds else 0.0
    console.print(
        f"[bold]{result.learned:,}[/] patterns learned from {result.sequences:,} sequences "
        f"([green]{result.new:,} new[/], {result.relearned:,} re-learned) in {result.seconds:.1f} s "
        f"({rate:,.0f} patterns/s)"
        + (f"; {result.skipped:,} sequences were committed before" if result.skipped else "")
    )


@app.command()
def predict(
    ctx: typer.Context,
    kb: Kb,
    events: Annotated[list[str], typer.Argument(help="Events to observe, in order; symbols space-separated.")],
    config: ConfigOption = None,
    as_json: Json = False,
) -> None:
    """Observe EVENTS on a fresh session and show what the knowledge base predicts."""
    with _client(ctx) as kato:
        session = kato.create_session(kb, config=_config(config) or None, ttl_seconds=60)
        try:
            for event in events:
                kato.observe(session.name, event.split())
            reply = kato.get_predictions(session.name)
        finally:
            kato.delete_session(session.name)
    _show(as_json, reply, lambda: views.predictions(reply, title=f"after {' | '.join(events)}"))


@app.command()
def predictions(ctx: typer.Context, session: str, as_json: Json = False) -> None:
    """The predictions of SESSION ("sessions/s-…") now."""
    with _client(ctx) as kato:
        reply = kato.get_predictions(session)
    _show(as_json, reply, lambda: views.predictions(reply, title=session))


# --- knowledge bases ---------------------------------------------------------------------


@kb_app.command("stats")
def kb_stats(ctx: typer.Context, kb: Kb, as_json: Json = False) -> None:
    """Patterns, symbols, totals and version of a knowledge base."""
    with _client(ctx) as kato:
        stats = kato.get_knowledge_base(kb)
    _show(as_json, stats, lambda: views.fields(stats, stats.name))


@kb_app.command("export")
def kb_export(
    ctx: typer.Context,
    kb: Kb,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The file (default: standard output).")] = None,
    batch: Annotated[int, typer.Option(help="Patterns per message.")] = 500,
) -> None:
    """Write a knowledge base to a JSON Lines file (docs/formats.md)."""
    with _client(ctx) as kato:
        if output is None:
            transfer.export(kato, kb, sys.stdout, batch)
            return
        with output.open("w", encoding="utf-8") as out:
            patterns, vectors = transfer.export(kato, kb, out, batch)
    errors.print(f"exported {patterns:,} patterns and {vectors:,} vectors to {output}")


@kb_app.command("import")
def kb_import(
    ctx: typer.Context,
    kb: Kb,
    file: Annotated[Path, typer.Argument(exists=True, help="A file written by `kato kb export`.")],
    import_id: Annotated[
        str | None,
        typer.Option(
            help="Names this import (default: the file's digest, so importing the same "
            "file again applies nothing; give another id to add it again)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(help="Patterns per message.")] = 500,
) -> None:
    """Add a file's patterns to a knowledge base, as if learned there (resumable)."""
    with _client(ctx) as kato:
        reply = transfer.import_file(kato, kb, file, import_id or transfer.file_import_id(file), batch)
    console.print(
        f"{reply.patterns:,} patterns imported in {reply.applied_batches:,} of {reply.batches:,} batches; "
        f"{reply.knowledge_base.name} now holds {reply.knowledge_base.pattern_count:,} patterns"
    )
    if reply.batches and not reply.applied_batches:
        errors.print("[yellow]nothing applied: this import id was applied before (use --import-id to add it again)")


@kb_app.command("clear")
def kb_clear(
    ctx: typer.Context, kb: Kb, yes: Annotated[bool, typer.Option("--yes", help="Really wipe it.")] = False
) -> None:
    """Wipe a knowledge base (every pattern, statistic and vector)."""
    if not yes:
        raise typer.BadParameter("wiping a knowledge base cannot be undone: add --yes", param_hint="--yes")
    with _client(ctx) as kato:
        kato.clear_knowledge_base(knowledge_base=kb)
    console.print(f"cleared {kb}")


# --- patterns, symbols, sessions ---------------------------------------------------------


@patterns_app.command("ls")
def patterns_ls(
    ctx: typer.Context,
    kb: Kb,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: Json = False,
) -> None:
    """The patterns of a knowledge base, in name order."""
    with _client(ctx) as kato:
        items = list(islice(kato.patterns(kb, page_size=min(limit, 1000)), limit))
    _show(as_json, items, lambda: views.patterns(items))


@patterns_app.command("show")
def patterns_show(ctx: typer.Context, name: str, as_json: Json = False) -> None:
    """One pattern, by name ("knowledgeBases/{kb}/patterns/{sha1}")."""
    with _client(ctx) as kato:
        pattern = kato.get_pattern(name)
    _show(as_json, pattern, lambda: views.patterns([pattern]))


@patterns_app.command("rm")
def patterns_rm(ctx: typer.Context, name: str) -> None:
    """Delete a pattern."""
    with _client(ctx) as kato:
        kato.delete_pattern(name)
    console.print(f"deleted {name}")


@symbols_app.command("ls")
def symbols_ls(
    ctx: typer.Context,
    kb: Kb,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: Json = False,
) -> None:
    """The symbols of a knowledge base with frequency, pattern-member frequency and affinity."""
    with _client(ctx) as kato:
        items = list(islice(kato.symbols(kb, page_size=min(limit, 1000)), limit))
    _show(as_json, items, lambda: views.symbols(items))


@symbols_app.command("show")
def symbols_show(ctx: typer.Context, kb: Kb, symbol: str, as_json: Json = False) -> None:
    """One symbol's statistics."""
    with _client(ctx) as kato:
        item = kato.get_symbol(kb, symbol)
    _show(as_json, item, lambda: views.symbols([item]))


@sessions_app.command("create")
def sessions_create(
    ctx: typer.Context,
    kb: Kb,
    config: ConfigOption = None,
    ttl: Annotated[int, typer.Option(help="Sliding TTL, seconds (0: the server's default).")] = 0,
    as_json: Json = False,
) -> None:
    """Open a session; prints its name."""
    with _client(ctx) as kato:
        session = kato.create_session(kb, config=_config(config) or None, ttl_seconds=ttl)
    _show(as_json, session, lambda: views.fields(session, session.name))


@sessions_app.command("show")
def sessions_show(ctx: typer.Context, session: str, as_json: Json = False) -> None:
    """A session: its config, TTL, STM length."""
    with _client(ctx) as kato:
        item = kato.get_session(session)
    _show(as_json, item, lambda: views.fields(item, item.name))


@sessions_app.command("rm")
def sessions_rm(ctx: typer.Context, session: str) -> None:
    """Delete a session."""
    with _client(ctx) as kato:
        kato.delete_session(session)
    console.print(f"deleted {session}")


@app.command()
def watch(
    ctx: typer.Context,
    kb: Kb,
    since: Annotated[int | None, typer.Option(help="Start after this KB version (default: now).")] = None,
    as_json: Json = False,
) -> None:
    """Print a knowledge base's changes as they commit (any server process's), until Ctrl-C."""
    with _client(ctx) as kato:
        try:
            for part in kato.watch_knowledge_base(kb, since_version=since):
                if as_json:
                    print(json.dumps(views.as_json(part), ensure_ascii=False), flush=True)
                    continue
                if part.resync_from_version:
                    console.print(f"[yellow]fell behind: resynced at version {part.resync_from_version}")
                for event in part.events:
                    console.print(views.event(event))
        except KeyboardInterrupt:
            return


# --- running things here -----------------------------------------------------------------


@app.command()
def serve() -> None:
    """Run the server as `make run` does (configured by KATO_* variables; see README)."""
    from server.__main__ import main as serve_main  # noqa: PLC0415 - the server's dependencies, only here

    raise typer.Exit(serve_main())


@app.command()
def replay(scenario: Annotated[Path, typer.Argument(exists=True, help="A scenario file (JSON).")]) -> None:
    """Replay a recorded scenario through the pure engine and print its results (kato-replay)."""
    from kato_grpc.replay import main as replay_main  # noqa: PLC0415 - the engine's dependencies, only here

    raise typer.Exit(replay_main([str(scenario)]))


def main() -> None:
    """The console script: failures of the API print their code, reason and fields, not a traceback."""
    try:
        app()
    except KatoError as exc:
        fields = ", ".join(v.field for v in exc.violations)
        errors.print(f"[red]{exc.code}[/] {exc.reason}: {exc.message}" + (f" ({fields})" if fields else ""))
        sys.exit(1)
