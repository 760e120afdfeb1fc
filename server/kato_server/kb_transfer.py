"""Moving a knowledge base: ExportKnowledgeBase streams it out, ImportKnowledgeBase streams
patterns in (docs/formats.md). Both stream: memory stays at one batch, whatever the KB's size.

An import's batch becomes PatternWrites (``engine/importing.py``) applied together under one
ledger id derived from the knowledge base, the caller, the import id and the batch number, so
each batch is applied once — a retried or resumed import never counts twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence

from kato_grpc import encoding, names
from kato_grpc.access import Caller
from kato_grpc.engine import importing
from kato_grpc.errors import CounterLimit, FailedPrecondition, FieldViolation, InvalidArgument, KatoError
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_grpc.stores.protocols import KbTransferStore, KbVersionBoard
from kato_grpc.stores.snapshotter import KbWritten
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import validation

FORMAT_VERSION = 1
DEFAULT_BATCH = 500
MAX_BATCH = 1000


class KbTransfer:
    def __init__(
        self,
        settings: Settings,
        versions: KbVersionBoard,
        patterns: KbTransferStore,
        written: KbWritten | None = None,
    ) -> None:
        """``written`` hears the version each applied import batch made (the snapshotter: an
        imported KB gets its snapshot once the import is quiet, though nobody read it)."""
        self.settings = settings
        self.versions = versions
        self.patterns = patterns
        self.written = written

    async def export(
        self, req: svc.ExportKnowledgeBaseRequest, caller: Caller
    ) -> AsyncIterator[svc.ExportKnowledgeBaseResponse]:
        node = validation.node_id(req.name, "name")
        if not 0 <= req.batch_size <= MAX_BATCH:
            raise InvalidArgument.for_field("batch_size", f"must be between 0 and {MAX_BATCH}")
        size = req.batch_size or DEFAULT_BATCH
        caller.authorize(node)
        kb = await self.stored(node)
        yield svc.ExportKnowledgeBaseResponse(header=svc.ExportHeader(format_version=FORMAT_VERSION, knowledge_base=kb))
        # Pipelined: the store reads the next batch while a thread builds this one's messages
        # (each alone kept one of the two sides idle half the time).
        batches = self.patterns.pattern_rows(node, size)
        pending = asyncio.ensure_future(anext(batches, None))
        try:
            while (docs := await pending) is not None:
                pending = asyncio.ensure_future(anext(batches, None))
                for message in await asyncio.to_thread(
                    _exported, self.patterns, docs, node, self.settings.max_message_bytes
                ):
                    yield message
        finally:
            pending.cancel()
        async for vectors in self.patterns.vector_batches(node, size):
            yield svc.ExportKnowledgeBaseResponse(vectors=[svc.NamedVector(name=n, values=v) for n, v in vectors])

    async def stored(self, node: str) -> svc.KnowledgeBase:
        """A KB's counts as MongoDB has them: a transfer never loads a KB into this process's
        cache (a large one takes seconds; GetKnowledgeBase has the symbol count)."""
        version, totals, vectors = await self.patterns.kb_summary(node)
        return svc.KnowledgeBase(
            name=names.knowledge_base(node),
            version=version,
            pattern_count=totals.total_unique_patterns,
            total_pattern_frequencies=totals.total_pattern_frequencies,
            vector_count=vectors,
        )

    def start_import(self, caller: Caller) -> Import:
        return Import(self, caller)

    def writes(self, req: svc.ImportKnowledgeBaseRequest) -> list[storage.PatternWrite]:
        """A batch's PatternWrites, each pattern checked like a learned one."""
        writes = []
        for i, item in enumerate(req.patterns):
            field = f"patterns[{i}]"
            validation.check_imported_pattern(item, self.settings, field)
            writes.append(importing.pattern_write(item.pattern, dict(item.affinity), f"{field}.pattern"))
        if req.vectors:
            validation.check_imported_vectors(req.vectors, self.settings)
            writes.append(importing.vector_write([(v.name, v.values) for v in req.vectors]))
        return writes


class Import:
    """One ImportKnowledgeBase stream: ``add`` each message, then ``finish``."""

    def __init__(self, transfer: KbTransfer, caller: Caller) -> None:
        self.transfer = transfer
        self.caller = caller
        self.out = svc.ImportKnowledgeBaseResponse()
        self.node, self.prefix, self.last = "", "", -1

    async def add(self, req: svc.ImportKnowledgeBaseRequest) -> None:
        """Apply one batch. A refusal names it (ErrorInfo metadata ``batch``): the batches
        before it are applied, it and the rest of the stream are not, so a client can say
        what the import did and resume it."""
        try:
            await self._add(req)
        except KatoError as exc:
            exc.metadata.setdefault("batch", str(req.batch))
            raise

    async def _add(self, req: svc.ImportKnowledgeBaseRequest) -> None:
        if not self.node:
            self.node = validation.node_id(req.knowledge_base, "knowledge_base")
            self.caller.authorize(self.node)
            self.prefix = _write_prefix(self.node, self.caller, validation.import_id(req.import_id))
        elif req.knowledge_base and req.knowledge_base != names.knowledge_base(self.node):
            raise InvalidArgument.for_field("knowledge_base", "changed within the import")
        if req.batch <= self.last:
            raise InvalidArgument.for_field("batch", f"must increase within a stream (after {self.last})")
        self.last = req.batch
        writes = self.transfer.writes(req)
        try:
            applied = await self.transfer.patterns.apply_batch(self.node, f"{self.prefix}:{req.batch}", writes)
        except CounterLimit as exc:  # name the pattern of the batch that crossed the bound
            field = f"patterns[{exc.position}].pattern.frequency"
            raise FailedPrecondition(
                f"{field}: {exc.message}",
                reason=exc.reason,
                violations=(FieldViolation(field, exc.message),),
                metadata=exc.metadata,
            ) from exc
        if applied.count:
            await self.transfer.versions.publish_kb_version(self.node, applied.version)
            if self.transfer.written is not None:
                self.transfer.written(self.node, applied.version)
            self.out.applied_batches += 1
            self.out.patterns += len(req.patterns)
        self.out.batches += 1

    async def finish(self) -> svc.ImportKnowledgeBaseResponse:
        if not self.node:
            raise InvalidArgument.for_field("knowledge_base", "is required (no message was sent)")
        self.out.knowledge_base.CopyFrom(await self.transfer.stored(self.node))
        return self.out


def _exported(
    store: KbTransferStore, rows: Sequence[object], node: str, max_bytes: int
) -> list[svc.ExportKnowledgeBaseResponse]:
    """A batch of the store's pattern rows as export messages of at most ``max_bytes`` each (a
    message holds one pattern at least: a pattern alone may be larger, up to what an import
    message takes, ``validation.message_limit``)."""
    out = [svc.ExportKnowledgeBaseResponse()]
    size = 0
    for row in rows:
        record, affinity = store.exported(row)
        item = svc.ExportedPattern(pattern=encoding.pattern_proto(record, node), affinity=affinity)
        item_bytes = item.ByteSize() + 8  # its tag and length
        if out[-1].patterns and size + item_bytes > max_bytes:
            out.append(svc.ExportKnowledgeBaseResponse())
            size = 0
        out[-1].patterns.append(item)
        size += item_bytes
    return out


def _write_prefix(node: str, caller: Caller, import_id: str) -> str:
    """Scoped by knowledge base and caller, like request ids: nobody else's import id can make
    this one's batches look applied."""
    digest = hashlib.sha256(f"{node}\0{caller.principal}\0{import_id}".encode()).hexdigest()[:32]
    return f"import:{digest}"
