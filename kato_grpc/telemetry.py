"""What the shell reports as it works (CAS conflicts, session and KB cache lookups, outbox
applies, sessions): a Protocol the runner, the KB cache and the use cases are given, so they know no
metrics library. ``NO_TELEMETRY`` ignores everything (metrics off, tests, the replay);
``server/kato_server/metrics.py`` counts them for Prometheus."""

from __future__ import annotations

from typing import Protocol


class Telemetry(Protocol):
    def cas_conflict(self) -> None:
        """A compare-and-set lost to another change of the session (the call retries)."""

    def cas_exhausted(self) -> None:
        """A call gave up after KATO_CAS_RETRIES conflicts (ABORTED)."""

    def session_cache(self, result: str) -> None:
        """A session-changing call and this process's copy of its session: ``hit`` (committed
        in one round trip), ``stale`` (the store answered with the session as it is: the call
        went on from there) or ``miss`` (no usable copy — none, or the session's calls lately
        alternated with another process's: the call loaded the session)."""

    def outbox_applied(self, writes: int, refused: int) -> None:
        """An outbox's writes reached the pattern store (``refused`` became dead letters)."""

    def kb_lookup(self, kb_id: str, result: str, patterns: int, estimated_bytes: int) -> None:
        """A KB cache lookup: ``hit``, ``refresh`` (changes merged) or ``load`` (not cached),
        and the KB's size after it."""

    def kb_evicted(self, kb_id: str) -> None: ...

    def kb_loaded(self, kb_id: str, source: str, seconds: float) -> None:
        """The cache read a KB whole (a lookup's ``load``, or a reload after a wipe, delete,
        update or compaction): ``source`` ``snapshot`` (its snapshot and the documents after
        it) or ``documents`` (no usable snapshot); ``seconds`` the reads and the merge."""

    def kb_snapshot(self, kb_id: str, result: str, seconds: float) -> None:
        """A KB snapshot this process set out to write: ``written``, ``skipped`` (one at least
        as new was stored already), ``deferred`` (another process holds the KB's claim: looked
        at again later) or ``failed``; ``seconds`` from start to end."""

    def engine_stopped(self) -> None:
        """A computation on an engine thread stopped at one of its checks because its call gave
        up (its deadline, the client gone, shutdown) — instead of running on to its end."""

    def predictions_served(self, source: str) -> None:
        """A GetPredictions answered from the predictions the session keeps (``stored``: its
        STM, config and KB version unchanged since they were computed) or ``computed``."""

    def session_created(self) -> None: ...

    def session_deleted(self) -> None: ...


class _NoTelemetry:
    def cas_conflict(self) -> None:
        return None

    def cas_exhausted(self) -> None:
        return None

    def session_cache(self, result: str) -> None:
        return None

    def outbox_applied(self, writes: int, refused: int) -> None:
        return None

    def kb_lookup(self, kb_id: str, result: str, patterns: int, estimated_bytes: int) -> None:
        return None

    def kb_evicted(self, kb_id: str) -> None:
        return None

    def kb_loaded(self, kb_id: str, source: str, seconds: float) -> None:
        return None

    def kb_snapshot(self, kb_id: str, result: str, seconds: float) -> None:
        return None

    def engine_stopped(self) -> None:
        return None

    def predictions_served(self, source: str) -> None:
        return None

    def session_created(self) -> None:
        return None

    def session_deleted(self) -> None:
        return None


NO_TELEMETRY: Telemetry = _NoTelemetry()
