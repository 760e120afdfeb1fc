"""What the CLI shows: rich tables people would rather look at than read, and plain JSON
(``--json``) for scripts. Tables are built from the API's messages, nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kato_grpc import names
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

METRICS = ("potential", "similarity", "evidence", "confidence")


def as_json(message: Message | Iterable[Message]) -> Any:
    """A message (or several) as JSON values: the API's JSON mapping, field names as in the proto."""
    if isinstance(message, Message):
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    return [as_json(m) for m in message]


def _events(events: Sequence[pb.Event], style: str = "", marked: frozenset[str] = frozenset()) -> Text:
    """Events as ``a b | c``: ``marked`` symbols bold green (they matched), the others in ``style``."""
    out = Text()
    for i, event in enumerate(events):
        if i:
            out.append(" | ", style="dim")
        for j, symbol in enumerate(event.symbols):
            if j:
                out.append(" ")
            out.append(symbol or "''", style="bold green" if symbol in marked else style)
    return out


def _layout(p: pb.Prediction) -> Text:
    """The pattern as ``past [present] future``: the present in brackets, its matched symbols
    green and the ones the STM lacks red, the past dim, the future cyan."""
    matched = frozenset(p.matches)
    out = Text()
    if p.past:
        out.append_text(_events(p.past, "dim"))
        out.append(" | ", style="dim")
    out.append("[", style="bold")
    out.append_text(_events(p.present, "red", matched))
    out.append("]", style="bold")
    if p.future:
        out.append(" | ", style="dim")
        out.append_text(_events(p.future, "cyan"))
    return out


def predictions(reply: svc.GetPredictionsResponse | svc.ObserveResponse, title: str = "", limit: int = 0) -> Table:
    """One row per prediction, the first ``limit`` (0: all; the caption says how many more):
    its pattern laid out past | [present] | future (matched symbols green, missing red), the
    STM's extras (yellow) and the main metrics."""
    shown = reply.predictions[:limit] if limit else reply.predictions
    more = len(reply.predictions) - len(shown)
    caption = f"{len(shown):,} of {len(reply.predictions):,} predictions: --limit 0 shows all" if more else None
    table = Table(title=title or None, caption=caption, header_style="bold")
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("pattern", style="magenta", no_wrap=True)
    table.add_column("freq", justify="right", no_wrap=True)
    table.add_column(escape("past | [present] | future"), ratio=1)
    table.add_column("extras", style="yellow")
    for metric in METRICS:
        table.add_column(metric, justify="right", no_wrap=True)
    for rank, p in enumerate(shown, 1):
        table.add_row(
            str(rank),
            names.pattern_id(p.pattern)[:8],
            str(p.frequency),
            _layout(p),
            _events([e for e in p.extras if e.symbols], "yellow"),
            *(f"{getattr(p, m):.3f}" for m in METRICS),
        )
    return table


def patterns(items: Iterable[pb.Pattern]) -> Table:
    table = Table(header_style="bold")
    for column in ("pattern", "frequency", "length", "events"):
        table.add_column(column, justify="right" if column in ("frequency", "length") else "left")
    for p in items:
        table.add_row(names.pattern_id(p.name), str(p.frequency), str(p.length), _events(p.events))
    return table


def knowledge_bases(items: Iterable[svc.KnowledgeBase]) -> Table:
    table = Table(header_style="bold")
    for column in ("knowledge base", "patterns", "total frequency", "version"):
        table.add_column(column, justify="left" if column == "knowledge base" else "right")
    for kb in items:
        node = names.parse_knowledge_base(kb.name) or kb.name
        table.add_row(node, f"{kb.pattern_count:,}", f"{kb.total_pattern_frequencies:,}", str(kb.version))
    return table


def symbols(items: Iterable[svc.Symbol]) -> Table:
    table = Table(header_style="bold")
    for column in ("symbol", "frequency", "patterns", "probability", "affinity"):
        table.add_column(column, justify="left" if column in ("symbol", "affinity") else "right")
    for s in items:
        affinity = ", ".join(f"{k}={v:g}" for k, v in sorted(s.affinity.items()))
        table.add_row(s.symbol, str(s.frequency), str(s.pattern_member_frequency), f"{s.probability:.4f}", affinity)
    return table


def fields(message: Message, title: str) -> Table:
    """A message's fields as a two-column table (sessions, knowledge bases)."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in as_json(message).items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    return table


_EVENT_STYLE = {
    svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED: ("learned", "green"),
    svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_RELEARNED: ("re-learned", "cyan"),
    svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_UPDATED: ("updated", "yellow"),
    svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED: ("deleted", "red"),
    svc.KNOWLEDGE_BASE_EVENT_KIND_CLEARED: ("cleared", "bold red"),
}


def event(e: svc.KnowledgeBaseEvent, pattern: pb.Pattern | None = None) -> Text:
    """``v42 re-learned 7f9d5c2a freq 3  clouds | wind | rain``: one line per change, with the
    pattern's frequency and events as read after it (``pattern``; None for a learned,
    re-learned or updated pattern: it was deleted since). Frequency first: it is the events
    that a narrow line cuts short."""
    kind, style = _EVENT_STYLE.get(e.kind, ("?", ""))
    out = Text(f"v{e.version} ", style="dim")
    out.append(f"{kind:<10}", style=style)
    if e.pattern:
        out.append(" " + names.pattern_id(e.pattern)[:8], style="magenta")
    if pattern is not None:
        out.append(f" freq {pattern.frequency}  ")
        out.append_text(_events(pattern.events))
    elif e.pattern and e.kind != svc.KNOWLEDGE_BASE_EVENT_KIND_PATTERN_DELETED:
        out.append(" (deleted since)", style="dim")
    return out
