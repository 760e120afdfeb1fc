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
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

from kato_grpc.cli import corpus
from kato_grpc.client import KatoClient
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

    @property
    def relearned(self) -> int:
        return self.learned - self.new


Progress = Callable[[int, int], None]  # (sequences, patterns learned) just done


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
) -> Result:
    started = time.monotonic()
    before = kato.get_knowledge_base(kb).pattern_count
    settings = {**TRAINING_CONFIG, **(config or {})}
    run = source.digest(parallel)
    if not resume and _session(kato, kb, settings, run, 0).time:
        run = uuid.uuid4().hex[:24]  # this corpus was trained before: train it again, in new sessions
    result, lock = Result(), Lock()

    def report(sequences: int, learned: int, skipped: int) -> None:
        with lock:
            result.sequences += sequences
            result.learned += learned
            result.skipped += skipped
        if progress is not None:
            progress(sequences + skipped, learned)

    def work(worker: int) -> None:
        session = _session(kato, kb, settings, run, worker)
        _worker(kato, session.name, session.time, _share(source, worker, parallel), batch, run, worker, report)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(work, range(parallel)))  # list(): a worker's error is raised here
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
) -> None:
    pending: list[tuple[int, corpus.Sequence]] = []
    size = 0
    for index, seq in sequences:
        if committed >= len(seq.observations):  # an earlier run of these sessions sent it
            committed -= len(seq.observations)
            report(0, 0, 1)
            continue
        if pending and (len(pending) == batch or size + len(seq.observations) > MAX_BATCH_OBSERVATIONS):
            _send(kato, session, pending, f"train-{run}-{worker}-{pending[0][0]}", report)
            pending, size = [], 0
        pending.append((index, seq))
        size += len(seq.observations)
    if pending:
        _send(kato, session, pending, f"train-{run}-{worker}-{pending[0][0]}", report)


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
    reply = kato.observe_sequence(session, observations, learn_after=ends, request_id=request_id)
    report(len(batch), sum(1 for name in reply.auto_learned_patterns if name), 0)
