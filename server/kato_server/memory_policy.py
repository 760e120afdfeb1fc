"""Process-wide memory policy, run by the KB cache after a large refresh (100k+ patterns
loaded at once). Each part can be switched off (``KATO_GC_FREEZE``, ``KATO_MALLOC_TRIM``).

- **gc.freeze**: moves every object alive now — mostly the cached pattern records, which live
  as long as the process — out of the cyclic garbage collector's reach. A full collection over
  millions of them was a p99 spike of hundreds of milliseconds (docs/performance.md).
- **GC paused while a snapshot decodes**: building a large KB's records allocates millions of
  objects, and the cyclic GC walking them as they are built took 40 % of a 100k-pattern decode
  (docs/performance.md, "Cold start"). None of them can form a cycle; collections resume after.
- **malloc_trim**: hands the heap freed by the refresh (decoded documents, the replayed symbol
  log) back to the OS, so RSS is the cache and not the refresh's high-water mark (glibc only).
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")
_paused = 0  # decodes running with the GC paused (they may overlap, on engine threads)
_lock = threading.Lock()


def without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run with the cyclic GC paused process-wide; it resumes when the last one ends
    (if it was on before the first)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        global _paused  # noqa: PLW0603 - one process-wide pause count
        with _lock:
            if _paused == 0 and not gc.isenabled():
                return fn(*args, **kwargs)  # off already (a test, an embedder): leave it so
            _paused += 1
            gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _paused -= 1
                if _paused == 0:
                    gc.enable()

    return run


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return cast(Callable[[int], int], ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def after_eviction(*, trim: bool) -> Callable[[], None] | None:
    """After the KB cache evicted a KB: its memory back to the OS (a budget bounds RSS)."""
    trimmer = _malloc_trim() if trim else None
    if trimmer is None:
        return None

    def apply() -> None:
        trimmer(0)

    return apply


def after_large_refresh(*, freeze: bool, trim: bool) -> Callable[[], None] | None:
    """The hook for ``KbCache``, or None when both parts are off."""
    trimmer = _malloc_trim() if trim else None
    if not freeze and trimmer is None:
        return None

    def apply() -> None:
        if freeze:
            gc.freeze()
        if trimmer is not None:
            trimmer(0)

    return apply
