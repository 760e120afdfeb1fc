"""Structured logging (structlog): one line per event, request ids bound per call. Lines
that libraries write through the standard ``logging`` module — grpc's, asyncio's, the
OpenTelemetry exporter's — are rendered by the same processors (``logger`` names the source).

Lines are flushed as they are written (stdout is line-buffered even when it is a file or a
pipe), so a log read while the server runs — or after it was killed — is complete. No value
is logged longer than ``MAX_VALUE_CHARS``: an error that quotes a whole document must not
write megabytes per failing call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

MAX_VALUE_CHARS = 4000


def _truncate(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            event[key] = f"{value[:MAX_VALUE_CHARS]}… [{len(value) - MAX_VALUE_CHARS} more characters]"
    return event


class _ToStructlog(logging.Handler):
    """A standard-library record, written as a structlog line (same format, same stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger().log(
                record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info or None
            )
        except Exception:
            self.handleError(record)


def configure(level: str = "INFO", json: bool = False) -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    logging.basicConfig(handlers=[_ToStructlog()], level=getattr(logging, level.upper(), logging.INFO), force=True)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _truncate,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        cache_logger_on_first_use=True,
    )
