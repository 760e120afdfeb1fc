"""``kato train``: sequences from files learned into a knowledge base, in batches.

Each of ``parallel`` workers has its own session and takes every ``parallel``-th sequence;
it sends its sequences in ObserveSequence calls of up to ``batch`` sequences, each learned
as its own pattern (``learn_after`` at the end of every sequence). Predictions are off for
training sessions (nothing reads them) and auto-learn too.

Resuming: a run's sessions are named by a digest of the corpus (files, format, workers), so
``--resume`` finds them again (without it, a corpus trained before is trained again, in new
sessions); a batch commits whole or not at all, so a session's ``time``
(observations committed) says exactly where its worker stopped. Request ids carry the batch's
first sequence number, so a batch retried after a lost answer is applied once.

Stopping: the first batch that fails (the server refuses it, or the file changed under the
run) stops every worker before its next batch; the error says how many sequences this run
had committed, and a refusal names the file, line and event the server refused. The caller's
``stop`` (Ctrl-C in ``kato train``) stops the workers the same way: each finishes the batch
it is sending, whose reply says it committed, so ``Result`` counts exactly what is learned.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Event, Lock

from kato_grpc.cli import corpus
from kato_grpc.client import KatoClient
from kato_grpc.errors import InvalidFile, KatoError
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc

TRAINING_CONFIG = {"process_predictions": False, "max_pattern_length": 0}
MAX_BATCH_OBSERVATIONS = 5000  # well under the server's KATO_MAX_SEQUENCE_OBSERVATIONS (10,000)
SESSION_TTL = 86400  # the longest a session may live: a paused run can be resumed within a day


@dataclass
class Corpus:
    files: Sequence[Path]
    fmt: corpus.Format | None = None  # None: from each file's extension
    text_events: corpus.TextEvents = "token"

    def sequences(self) -> Iterator[corpus.Sequence]:
        for path in self.files:
            yield from corpus.read(path, self.fmt or corpus.detect(path), self.text_events)

    def digest(self, parallel: int) -> str:
        h = hashlib.sha256(f"{self.fmt}|{self.text_events}|{parallel}".encode())
        for path in self.files:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:24]


@dataclass
class Result:
    sequences: int = 0  # sent in this run
    skipped: int = 0  # committed by an earlier run (--resume)
    learned: int = 0  # learns that made or reinforced a pattern
    new: int = 0  # patterns the knowledge base did not have
    seconds: float = 0.0
    stopped: bool = False  # ``stop`` was set before every worker had sent its share
    # Whether --resume finds this run: its sessions are the corpus's own (None: nothing was
    # sent yet, the run was not chosen).
    resumable: bool | None = None

    @property
    def relearned(self) -> int:
        return self.learned - self.new


Progress = Callable[[int, int], None]  # (sequences, patterns learned) just done


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (a second Ctrl-C) that did not wait for the workers: ``result`` is
    what they had reported committed; the batches they were sending may commit too."""

    def __init__(self, result: Result) -> None:
        super().__init__()
        self.result = result


def train(
    kato: KatoClient,
    kb: str,
    source: Corpus,
    *,
    batch: int = 200,
    parallel: int = 2,
    resume: bool = False,
    config: dict[str, object] | None = None,
    progress: Progress | None = None,
    stop: Event | None = None,
) -> Result:
    result = Result()
    try:
        return _train(kato, kb, source, batch, parallel, resume, config, progress, stop or Event(), result)
    except KeyboardInterrupt:
        raise Interrupted(result) from None


def _train(
    kato: KatoClient,
    kb: str,
    source: Corpus,
    batch: int,
    parallel: int,
    resume: bool,
    config: dict[str, object] | None,
    progress: Progress | None,
    stop: Event,
    result: Result,
) -> Result:
    started = time.monotonic()
    before = kato.get_knowledge_base(kb).pattern_count
    settings = {**TRAINING_CONFIG, **(config or {})}
    run = source.digest(parallel)
    fresh = not resume and _session(kato, kb, settings, run, 0).time
    if fresh:
        run = uuid.uuid4().hex[:24]  # this corpus was trained before: train it again, in new sessions
    result.resumable = not fresh
    lock, failures, finished = Lock(), list[BaseException](), list[bool]()

    def report(sequences: int, learned: int, skipped: int) -> None:
        with lock:
            result.sequences += sequences
            result.learned += learned
            result.skipped += skipped
        if progress is not None:
            progress(sequences + skipped, learned)

    def work(worker: int) -> None:
        try:
            session = _session(kato, kb, settings, run, worker)
            shares = _share(source, worker, parallel)
            done = _worker(kato, session.name, session.time, shares, batch, run, worker, report, stop)
            with lock:
                finished.append(done)
        except BaseException as exc:
            with lock:
                failures.append(exc)
            stop.set()

    with ThreadPoolExecutor(parallel) as pool:
        pool.map(work, range(parallel))
    if failures:  # the first to fail; the others stopped before their next batch
        committed = f"this run committed {result.sequences:,} sequences before it stopped"
        failures[0].add_note(committed if result.sequences else "this run committed nothing")
        raise failures[0]
    result.stopped = not all(finished)
    result.new = kato.get_knowledge_base(kb).pattern_count - before
    result.seconds = time.monotonic() - started
    return result


def _session(kato: KatoClient, kb: str, config: dict[str, object], run: str, worker: int) -> svc.Session:
    """A worker's session; the same one for the same run (its request id names it)."""
    return kato.create_session(kb, config=config, ttl_seconds=SESSION_TTL, request_id=f"train-{run}-{worker}")


def _share(source: Corpus, worker: int, parallel: int) -> Iterator[tuple[int, corpus.Sequence]]:
    for i, seq in enumerate(source.sequences()):
        if i % parallel == worker:
            yield i, seq


def _worker(
    kato: KatoClient,
    session: str,
    committed: int,
    sequences: Iterator[tuple[int, corpus.Sequence]],
    batch: int,
    run: str,
    worker: int,
    report: Callable[[int, int, int], None],
    stop: Event,
) -> bool:
    """Send this worker's share; False if ``stop`` ended it before the whole share was sent."""
    pending: list[tuple[int, corpus.Sequence]] = []
    size = 0
    for index, seq in sequences:
        if committed >= len(seq.observations):  # an earlier run of these sessions sent it
            committed -= len(seq.observations)
            report(0, 0, 1)
            continue
        if pending and (len(pending) == batch or size + len(seq.observations) > MAX_BATCH_OBSERVATIONS):
            if stop.is_set():
                return False
            _send(kato, session, pending, f"train-{run}-{worker}-{pending[0][0]}", report)
            pending, size = [], 0
        pending.append((index, seq))
        size += len(seq.observations)
    if pending:
        if stop.is_set():
            return False
        _send(kato, session, pending, f"train-{run}-{worker}-{pending[0][0]}", report)
    return True


def _send(
    kato: KatoClient,
    session: str,
    batch: list[tuple[int, corpus.Sequence]],
    request_id: str,
    report: Callable[[int, int, int], None],
) -> None:
    observations: list[pb.Observation] = []
    ends: list[int] = []
    for _, seq in batch:
        observations += seq.observations
        ends.append(len(observations) - 1)
    try:
        reply = kato.observe_sequence(session, observations, learn_after=ends, request_id=request_id)
    except KatoError as exc:
        raise _in_file(exc, [seq for _, seq in batch]) from exc
    report(len(batch), sum(1 for name in reply.auto_learned_patterns if name), 0)


_OBSERVATION = re.compile(r"observations\[(\d+)\](.*)")


def _in_file(error: KatoError, batch: list[corpus.Sequence]) -> KatoError:
    """A refusal naming one of the batch's observations, as the file's line and event that
    observation came from (the server's code, reason and words kept); else ``error``."""
    for violation in error.violations:
        found = _OBSERVATION.fullmatch(violation.field)
        if found is None:
            continue
        index = int(found.group(1))
        for seq in batch:
            if index < len(seq.observations) and seq.path is not None:
                where = InvalidFile(
                    seq.path,
                    seq.line_of(index),
                    f"events[{index}]{found.group(2)}",
                    f"{error.code} {error.reason}: {violation.description}",
                )
                where.request_id = error.request_id
                return where
            index -= len(seq.observations)
    return error
