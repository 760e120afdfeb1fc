"""``kato kb``, ``kato patterns``, ``kato symbols``, ``kato sessions``: the knowledge bases and
sessions of a server."""

from __future__ import annotations

import heapq
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from kato_grpc.cli import transfer, views
from kato_grpc.cli.common import ConfigOption, Json, Kb, client, config_values, console, errors, progress_bar, show
from kato_grpc.client import KatoError

kb_app = typer.Typer(help="Knowledge bases: list, statistics, export, import, clear.", no_args_is_help=True)
patterns_app = typer.Typer(help="The patterns of a knowledge base.", no_args_is_help=True)
symbols_app = typer.Typer(help="The symbols of a knowledge base, with their statistics.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions: create, show, delete.", no_args_is_help=True)


# --- knowledge bases ---------------------------------------------------------------------


@kb_app.command("ls")
def kb_ls(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: Json = False,
) -> None:
    """The knowledge bases you may use (ever written to), in id order."""
    with client(ctx) as kato:
        items = list(islice(kato.knowledge_bases(page_size=min(limit, 1000)), limit))
    show(as_json, items, lambda: views.knowledge_bases(items))


@kb_app.command("stats")
def kb_stats(ctx: typer.Context, kb: Kb, as_json: Json = False) -> None:
    """Patterns, symbols, totals and version of a knowledge base."""
    with client(ctx) as kato:
        stats = kato.get_knowledge_base(kb)
    show(as_json, stats, lambda: views.fields(stats, stats.name))


@kb_app.command("export")
def kb_export(
    ctx: typer.Context,
    kb: Kb,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The file (default: standard output).")] = None,
    batch: Annotated[int, typer.Option(help="Patterns per message.")] = 500,
) -> None:
    """Write a knowledge base to a JSON Lines file (docs/formats.md)."""
    with client(ctx) as kato:
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
    with client(ctx) as kato, progress_bar("patterns") as bar, _applied(ctx, kb, bar, file) as done:
        reply = transfer.import_file(kato, kb, file, import_id or transfer.file_import_id(file), batch)
        done()
    console.print(
        f"{reply.patterns:,} patterns imported in {reply.applied_batches:,} of {reply.batches:,} batches; "
        f"{reply.knowledge_base.name} now holds {reply.knowledge_base.pattern_count:,} patterns"
    )
    if reply.batches and not reply.applied_batches:
        errors.print("[yellow]nothing applied: this import id was applied before (use --import-id to add it again)")


@contextmanager
def _applied(ctx: typer.Context, kb: str, bar: Progress, file: Path) -> Iterator[Callable[[], None]]:
    """A bar of the file's patterns the server has applied; yields what fills it when the
    import is done. The import's one reply comes at its end, and the transport takes the file
    long before the server has applied it, so the bar counts the knowledge base's changes (one
    a pattern applied; anyone else's meanwhile too, up to the total), watched from just before
    the import: a first batch applied before the watch starts is counted when the bar fills."""
    if bar.disable:  # not a terminal: no bar, and no watch
        yield lambda: None
        return
    total = transfer.pattern_records(file)
    task = bar.add_task("patterns", total=total, rate=0.0)
    watcher = client(ctx)

    def follow() -> None:
        seen = 0
        try:
            for part in watcher.watch_knowledge_base(kb):
                seen = min(seen + sum(1 for e in part.events if e.pattern), total)
                bar.update(task, completed=seen, rate=seen / (bar.tasks[task].elapsed or 1e-9))
        except (KatoError, ValueError):  # closed at the end, or refused: the bar fills when the import ends
            return

    threading.Thread(target=follow, daemon=True).start()
    try:
        yield lambda: bar.update(task, completed=total)
    finally:
        watcher.close()


@kb_app.command("clear")
def kb_clear(
    ctx: typer.Context, kb: Kb, yes: Annotated[bool, typer.Option("--yes", help="Really wipe it.")] = False
) -> None:
    """Wipe a knowledge base (every pattern, statistic and vector)."""
    if not yes:
        raise typer.BadParameter("wiping a knowledge base cannot be undone: add --yes", param_hint="--yes")
    with client(ctx) as kato:
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
    with client(ctx) as kato:
        items = list(islice(kato.patterns(kb, page_size=min(limit, 1000)), limit))
    show(as_json, items, lambda: views.patterns(items))


@patterns_app.command("show")
def patternsshow(ctx: typer.Context, name: str, as_json: Json = False) -> None:
    """One pattern, by name ("knowledgeBases/{kb}/patterns/{sha1}")."""
    with client(ctx) as kato:
        pattern = kato.get_pattern(name)
    show(as_json, pattern, lambda: views.patterns([pattern]))


@patterns_app.command("rm")
def patterns_rm(ctx: typer.Context, name: str) -> None:
    """Delete a pattern."""
    with client(ctx) as kato:
        kato.delete_pattern(name)
    console.print(f"deleted {name}")


class SymbolOrder(StrEnum):
    name = "name"
    frequency = "frequency"


@symbols_app.command("ls")
def symbols_ls(
    ctx: typer.Context,
    kb: Kb,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    sort: Annotated[
        SymbolOrder,
        typer.Option(
            help="name: code-point order; frequency: the most frequent first (ties by name), "
            "which reads every symbol of the knowledge base."
        ),
    ] = SymbolOrder.name,
    as_json: Json = False,
) -> None:
    """The symbols of a knowledge base with frequency, pattern-member frequency and affinity."""
    with client(ctx) as kato:
        if sort is SymbolOrder.frequency:  # the server lists symbols by name only: read them all, keep the top
            items = heapq.nsmallest(limit, kato.symbols(kb), key=lambda s: (-s.frequency, s.symbol))
        else:
            items = list(islice(kato.symbols(kb, page_size=min(limit, 1000)), limit))
    show(as_json, items, lambda: views.symbols(items))


@symbols_app.command("show")
def symbolsshow(ctx: typer.Context, kb: Kb, symbol: str, as_json: Json = False) -> None:
    """One symbol's statistics."""
    with client(ctx) as kato:
        item = kato.get_symbol(kb, symbol)
    show(as_json, item, lambda: views.symbols([item]))


@sessions_app.command("create")
def sessions_create(
    ctx: typer.Context,
    kb: Kb,
    config: ConfigOption = None,
    ttl: Annotated[int, typer.Option(help="Sliding TTL, seconds (0: the server's default).")] = 0,
    as_json: Json = False,
) -> None:
    """Open a session; prints its name."""
    with client(ctx) as kato:
        session = kato.create_session(kb, config=config_values(config) or None, ttl_seconds=ttl)
    show(as_json, session, lambda: views.fields(session, session.name))


@sessions_app.command("show")
def sessionsshow(ctx: typer.Context, session: str, as_json: Json = False) -> None:
    """A session: its config, TTL, STM length."""
    with client(ctx) as kato:
        item = kato.get_session(session)
    show(as_json, item, lambda: views.fields(item, item.name))


@sessions_app.command("rm")
def sessions_rm(ctx: typer.Context, session: str) -> None:
    """Delete a session."""
    with client(ctx) as kato:
        kato.delete_session(session)
    console.print(f"deleted {session}")
