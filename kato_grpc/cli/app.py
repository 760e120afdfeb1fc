"""``kato``: the command line of kato-grpc (typer + rich). ``kato --help`` lists it all.

Every command talks to a server through ``kato_grpc.client`` (``--target``, ``--token``,
``--tls``, or ``KATO_TARGET``, ``KATO_TOKEN``, ``KATO_TLS``, ``KATO_CA_FILE``); ``serve`` and
``replay`` run the server and the scenario replay themselves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event
from typing import Annotated, NoReturn

import typer

from kato_grpc.cli import views
from kato_grpc.cli.admin import kb_app, patterns_app, sessions_app, symbols_app
from kato_grpc.cli.common import (
    ONE_LINE,
    ConfigOption,
    Json,
    Kb,
    Target,
    client,
    config_values,
    console,
    errors,
    print_json,
    progress_bar,
)
from kato_grpc.cli.train import Corpus, Interrupted, train
from kato_grpc.client import KatoClient, KatoError, NotFound
from kato_grpc.client.channel import DEFAULT_TARGET
from kato_grpc.errors import InvalidFile
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

app = typer.Typer(help="KATO: learn sequences, read predictions, manage knowledge bases.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(patterns_app, name="patterns")
app.add_typer(symbols_app, name="symbols")
app.add_typer(sessions_app, name="sessions")


@app.callback()
def main_options(
    ctx: typer.Context,
    target: Annotated[str, typer.Option(envvar="KATO_TARGET", help="host:port of the server.")] = DEFAULT_TARGET,
    token: Annotated[str | None, typer.Option(envvar="KATO_TOKEN", help="Bearer token.")] = None,
    tls: Annotated[bool, typer.Option(envvar="KATO_TLS", help="Use TLS (system roots or --ca-file).")] = False,
    ca_file: Annotated[Path | None, typer.Option(envvar="KATO_CA_FILE", help="PEM roots to trust (TLS).")] = None,
    timeout: Annotated[float, typer.Option(help="Each call's budget, its retries included, seconds.")] = 60.0,
) -> None:
    ctx.obj = Target(target, token, tls or ca_file is not None, ca_file, timeout)


# --- training and predicting -------------------------------------------------------------

TABLE_PREDICTIONS = 10  # a screenful: the server returns up to max_predictions (100 by default)
PredictionLimit = Annotated[
    int | None,
    typer.Option(
        min=0, help=f"Show the first N predictions (0: all; default {TABLE_PREDICTIONS} in the table, all with --json)."
    ),
]


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
    stop = Event()
    try:
        with client(ctx) as kato, progress_bar("patterns") as bar, _stop_on_interrupt(stop):
            task = bar.add_task("sequences", total=total, rate=0.0)
            learned = 0

            def progress(sequences: int, patterns: int) -> None:
                nonlocal learned
                learned += patterns
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, advance=sequences, rate=learned / elapsed)

            result = train(
                kato,
                kb,
                source,
                batch=batch,
                parallel=parallel,
                resume=resume,
                config=config_values(config),
                progress=progress,
                stop=stop,
            )
    except Interrupted as interrupted:  # the second Ctrl-C
        errors.print(
            "kato: interrupted again: stopped without waiting for the batches being sent (each commits "
            "whole or not at all); " + _resume_hint(kb, interrupted.result.resumable),
            style="red",
            **ONE_LINE,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # at once: a normal exit would join the workers, which wait on their calls
    if result.stopped:
        done = result.sequences + result.skipped
        errors.print(
            f"kato: interrupted: this run committed {result.sequences:,} sequences ({result.learned:,} patterns "
            f"learned, {result.new:,} new)"
            + (f", after the {result.skipped:,} committed before" if result.skipped else "")
            + f": {done:,} of {total:,}; "
            + _resume_hint(kb, result.resumable, total - done),
            style="red",
            **ONE_LINE,
        )
        raise typer.Exit(130)
    rate = result.learned / result.seconds if result.seconds else 0.0
    console.print(
        f"[bold]{result.learned:,}[/] patterns learned from {result.sequences:,} sequences "
        f"([green]{result.new:,} new[/], {result.relearned:,} re-learned) in {result.seconds:.1f} s "
        f"({rate:,.0f} patterns/s)"
        + (f"; {result.skipped:,} sequences were committed before" if result.skipped else "")
    )


@contextmanager
def _stop_on_interrupt(stop: Event) -> Iterator[None]:
    """Within it, the first Ctrl-C sets ``stop`` (each worker finishes the batch it is sending,
    so what is committed is known and said) and a second raises KeyboardInterrupt."""
    interrupts, telling = 0, False

    def interrupted(_signal: int, _frame: object) -> None:
        nonlocal interrupts, telling
        interrupts += 1
        if interrupts > 1:
            if telling:  # raised below once the line is out: not from inside the console's print
                return
            raise KeyboardInterrupt
        stop.set()
        telling = True
        errors.print(
            "kato: stopping after the batches being sent (Ctrl-C again to stop at once)", style="yellow", **ONE_LINE
        )
        telling = False
        if interrupts > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_hint(kb: str, resumable: bool | None, rest: int | None = None) -> str:
    """What to run to learn the rest of an interrupted run's corpus."""
    if resumable is None:
        return "nothing was sent: run the same command again"
    if not resumable:  # its sessions are new ones, which --resume does not look for
        return f"this run cannot be resumed: the corpus had been trained into {kb} before, and --resume finds that run"
    return "run the same command with --resume to learn " + (f"the other {rest:,}" if rest is not None else "the rest")


@app.command()
def predict(
    ctx: typer.Context,
    kb: Kb,
    events: Annotated[list[str], typer.Argument(help="Events to observe, in order; symbols space-separated.")],
    config: ConfigOption = None,
    limit: PredictionLimit = None,
    as_json: Json = False,
) -> None:
    """Observe EVENTS on a fresh session and show what the knowledge base predicts."""
    with client(ctx) as kato:
        session = kato.create_session(kb, config=config_values(config) or None, ttl_seconds=60)
        try:
            for event in events:
                kato.observe(session.name, event.split())
            reply = kato.get_predictions(session.name)
        finally:
            kato.delete_session(session.name)
    _show_predictions(reply, f"after {' | '.join(events)}", limit, as_json)


@app.command()
def predictions(ctx: typer.Context, session: str, limit: PredictionLimit = None, as_json: Json = False) -> None:
    """The predictions of SESSION ("sessions/s-…") now."""
    with client(ctx) as kato:
        reply = kato.get_predictions(session)
    _show_predictions(reply, session, limit, as_json)


def _show_predictions(reply: svc.GetPredictionsResponse, title: str, limit: int | None, as_json: bool) -> None:
    """A screenful in the table by default; JSON is for scripts, which get every prediction
    unless they ask for fewer."""
    if not as_json:
        console.print(views.predictions(reply, title, TABLE_PREDICTIONS if limit is None else limit))
        return
    if limit:
        reply = svc.GetPredictionsResponse(
            predictions=reply.predictions[:limit], future_potentials=reply.future_potentials
        )
    print_json(views.as_json(reply))


@app.command()
def watch(
    ctx: typer.Context,
    kb: Kb,
    since: Annotated[int | None, typer.Option(help="Start after this KB version (default: now).")] = None,
    as_json: Json = False,
) -> None:
    """Print a knowledge base's changes as they commit (any server process's), until Ctrl-C:
    a line each, with the pattern's frequency and events as read then (--json: the stream's
    events as they are, names only, read nothing)."""
    with client(ctx) as kato:
        try:
            for part in kato.watch_knowledge_base(kb, since_version=since):
                if as_json:
                    print(json.dumps(views.as_json(part), ensure_ascii=False), flush=True)
                    continue
                if part.resync_from_version:
                    console.print(f"[yellow]fell behind: resynced at version {part.resync_from_version}")
                for event in part.events:
                    # One line a change, however narrow the terminal: the events are cut short.
                    console.print(views.event(event, _changed(kato, event)), no_wrap=True, overflow="ellipsis")
        except KeyboardInterrupt:
            return


def _changed(kato: KatoClient, event: svc.KnowledgeBaseEvent) -> pb.Pattern | None:
    """The pattern a change was about, as it is now (None: deleted, or no pattern)."""
    if not event.pattern or event.kind == svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED:
        return None
    try:
        return kato.get_pattern(event.pattern)
    except NotFound:
        return None


# --- running things here -----------------------------------------------------------------


@app.command()
def serve() -> None:
    """Run the server as `make run` does (configured by KATO_* variables; see README)."""
    from kato_server.__main__ import main as serve_main  # noqa: PLC0415 - the server's dependencies, only here

    raise typer.Exit(serve_main())


@app.command()
def replay(scenario: Annotated[Path, typer.Argument(exists=True, help="A scenario file (JSON).")]) -> None:
    """Replay a recorded scenario through the pure engine and print its results (kato-replay)."""
    from kato_grpc.replay import main as replay_main  # noqa: PLC0415 - the engine's dependencies, only here

    raise typer.Exit(replay_main([str(scenario)]))


def main() -> None:
    """The console script: a failure is one line on stderr, never a traceback — a bad file's
    ``kato: <file>:<line>: <field>: <what>``, or the status the server answered (its code,
    reason, fields and request id) — and exit status 1."""
    try:
        app()
    except KatoError as exc:
        fail(exc)
    except OSError as exc:  # a file that cannot be opened or read (a directory, no permission)
        fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


def fail(error: KatoError | str) -> NoReturn:
    """Print ``error`` as one line on stderr (with what its notes add) and exit 1."""
    if isinstance(error, InvalidFile):
        text = error.message
    elif isinstance(error, KatoError):
        fields = ", ".join(v.field for v in error.violations)
        text = f"{error.code} {error.reason}: {error.message}" + (f" ({fields})" if fields else "")
    else:
        text = error
    if isinstance(error, KatoError):
        text = "; ".join([text, *getattr(error, "__notes__", ())])
        text += f" [request {error.request_id}]" if error.request_id else ""
    errors.print(f"kato: {text}", style="red", **ONE_LINE)
    sys.exit(1)
