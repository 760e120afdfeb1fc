"""Store calls, observed: each of a store's coroutine methods is timed into
``kato_store_duration_seconds{store, operation}`` and, with traces on, runs in a child span of
the call's (``redis load``, ``mongodb apply_many``, ...). Without metrics and traces the store
is used as it is: nothing is wrapped, nothing costs.

The proxy stands for the store's own type (the shell is written against the real stores);
a method is wrapped on its first use and kept. Async generators (export pages) pass through.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from opentelemetry.trace import SpanKind, Tracer

from kato_server.metrics import Metrics

T = TypeVar("T")


def observed(store: T, system: str, metrics: Metrics | None, tracer: Tracer | None) -> T:
    """``store`` with its calls measured and traced; ``store`` itself when both are off."""
    if metrics is None and tracer is None:
        return store
    return cast(T, _Observed(store, system, metrics, tracer))


class _Observed:
    def __init__(self, store: object, system: str, metrics: Metrics | None, tracer: Tracer | None) -> None:
        self._store, self._system, self._metrics, self._tracer = store, system, metrics, tracer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        wrapped = self._wrap(name, attribute)
        setattr(self, name, wrapped)  # later lookups find it without __getattr__
        return wrapped

    def _wrap(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        histogram = self._metrics.store_latency.labels(self._system, name) if self._metrics else None
        tracer, span_name, attributes = self._tracer, f"{self._system} {name}", {"db.system": self._system}

        async def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                if tracer is None:
                    return await method(*args, **kwargs)
                with tracer.start_as_current_span(span_name, kind=SpanKind.CLIENT, attributes=attributes):
                    return await method(*args, **kwargs)
            finally:
                if histogram is not None:
                    histogram.observe(time.perf_counter() - started)

        return call
