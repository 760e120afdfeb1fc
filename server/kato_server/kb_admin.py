"""Knowledge-base administration: patterns (get, list, update, delete) and wiping a KB.

Each call checks its request (``limits``), authorizes the node and goes to the pattern store;
a change publishes the KB's new version so every process's cache refreshes. A wipe with a
session also clears the session's STM, through the transaction runner.
"""

from __future__ import annotations

import hashlib

from kato_grpc import encoding, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.engine.records import canonical_values
from kato_grpc.errors import InvalidArgument, NotFound
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.protocols import KbVersionBoard, KbWrites, PatternReads, RecordKey, RequestRecords
from kato_grpc.stores.snapshotter import KbWritten
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server import paging, validation


def _wipe_id(*scope: str) -> str:
    """A wipe's ledger id, scoped as its request id is (a session, or a KB and caller), so that
    the API's promise holds: with a request id, the knowledge base is wiped once."""
    return "wipe:" + hashlib.sha256("\0".join(scope).encode()).hexdigest()[:32]


def pattern_not_found(name: str) -> NotFound:
    return NotFound(f"pattern {name} not found", reason="PATTERN_NOT_FOUND")


class KbAdmin:
    def __init__(
        self,
        settings: Settings,
        versions: KbVersionBoard,
        records: RequestRecords,
        patterns: PatternReads,
        writes: KbWrites,
        runner: TransactionRunner,
        written: KbWritten | None = None,
    ) -> None:
        """``written`` hears the version of each update or delete (the snapshotter: a KB
        changed only by them still gets its snapshot). A wipe leaves nothing to snapshot."""
        self.settings = settings
        self.versions = versions
        self.records = records
        self.patterns = patterns
        self.writes = writes
        self.runner = runner
        self.written = written

    @staticmethod
    def _pattern(req: svc.GetPatternRequest | svc.DeletePatternRequest, caller: Caller) -> tuple[str, str]:
        """(node id, sha1) of the pattern a request names, once the caller may see its node."""
        node, sha1 = validation.pattern_ref(req.name)
        caller.authorize(node)
        return node, sha1

    async def get_pattern(self, req: svc.GetPatternRequest, caller: Caller) -> pb.Pattern:
        node, sha1 = self._pattern(req, caller)
        # Learns this process answered before their writes (KATO_LEARN_ACK=committed) land
        # first: their callers read what they were told.
        await self.runner.applier.settle(node)
        record = await self.patterns.get_pattern(node, sha1)
        if record is None:
            raise pattern_not_found(req.name)
        return encoding.pattern_proto(record, node)

    async def list_patterns(self, req: svc.ListPatternsRequest, caller: Caller) -> svc.ListPatternsResponse:
        node = validation.node_id(req.parent, "parent")
        caller.authorize(node)
        await self.runner.applier.settle(node)
        size = paging.page_size(req.page_size)
        records = await self.patterns.list_patterns(node, paging.after(req.page_token) or "", size + 1)
        out = svc.ListPatternsResponse(patterns=[encoding.pattern_proto(r, node) for r in records[:size]])
        if len(records) > size:
            out.next_page_token = paging.token(records[size - 1].name)
        return out

    async def update_pattern(self, req: svc.UpdatePatternRequest, caller: Caller) -> pb.Pattern:
        (node, sha1), mask = validation.check_pattern_update(req, self.settings)
        caller.authorize(node)
        emotives = [dict(r.values) for r in req.pattern.emotives] if "emotives" in mask else None
        metadata = (
            {k: canonical_values(v, f"pattern.metadata.{k}") for k, v in req.pattern.metadata.items()}
            if "metadata" in mask
            else None
        )
        validation.check_accumulations(emotives or [], metadata or {}, "pattern")
        updated = await self.writes.update_pattern(
            node,
            sha1,
            frequency=req.pattern.frequency if "frequency" in mask else None,
            emotives=emotives,
            metadata=metadata,
        )
        if updated is None:
            raise pattern_not_found(req.pattern.name)
        record, version = updated
        # Published as a delete's is: this process's cache (and any other's) refreshes at once
        # instead of at its next check of MongoDB's version (D-8).
        await self.versions.publish_kb_version(node, version)
        self._wrote(node, version)
        return encoding.pattern_proto(record, node)

    async def delete_pattern(self, req: svc.DeletePatternRequest, caller: Caller) -> None:
        node, sha1 = self._pattern(req, caller)
        version = await self.writes.delete_pattern(node, sha1)
        if version is None:
            raise pattern_not_found(req.name)
        await self.versions.publish_kb_version(node, version)
        self._wrote(node, version)

    def _wrote(self, node: str, version: int) -> None:
        if self.written is not None:
            self.written(node, version)

    async def clear_knowledge_base(self, req: svc.ClearKnowledgeBaseRequest, caller: Caller) -> None:
        """KATO's clear-all: wipe the KB (of the session's node, or the one named) and, with a
        session, clear its STM."""
        validation.check_request_id(req.request_id)
        target = req.WhichOneof("target")
        if target is None:
            raise InvalidArgument.for_field(
                "target", "set session (KATO's clear-all of a session) or knowledge_base", reason="MISSING_FIELD"
            )
        if target == "knowledge_base":
            await self._clear_node(req, caller)
            return
        sid = validation.session_id(req.session, "session")
        call = request_ids.Call("ClearKnowledgeBase", req, req.request_id, svc.ClearKnowledgeBaseResponse)
        loaded = await self.runner.load(sid, caller, req.request_id)
        node = loaded.state.node_id
        if loaded.record is not None:  # a retry: answered by the transaction below, no second wipe
            request_ids.check_replay(loaded.record, call.method, call.fingerprint)
        else:
            # Apply the outbox first: writes learned before the wipe must land before it, never
            # after (the ledger then keeps them from being applied again).
            await self.runner.read(sid, caller)
            # An attempt that wiped and then failed before its commit recorded the request id
            # leaves no record: the wipe's ledger id keeps its retries from wiping again.
            wipe_id = _wipe_id("session", sid, req.request_id) if req.request_id else ""
            await self.versions.publish_kb_version(node, await self.writes.clear(node, wipe_id))

        async def run(
            state: storage.SessionState, _kb: int | None
        ) -> tuple[storage.SessionState, svc.ClearKnowledgeBaseResponse]:
            return processor.clear_stm(state), svc.ClearKnowledgeBaseResponse()

        await self.runner.transact(sid, call, run, caller=caller)

    async def _clear_node(self, req: svc.ClearKnowledgeBaseRequest, caller: Caller) -> None:
        node = validation.node_id(req.knowledge_base, "knowledge_base")
        caller.authorize(node)
        key = None
        if req.request_id:
            key = RecordKey("kbreq", node, caller.principal, req.request_id)
            fp = request_ids.fingerprint("ClearKnowledgeBase", req)
            previous = await self.records.recorded(key)
            if previous is not None:
                request_ids.check_replay(previous, "ClearKnowledgeBase", fp)
                return
        # The record is written after the wipe: the wipe's ledger id keeps a retry of an
        # attempt that failed in between from wiping again.
        wipe_id = _wipe_id("kb", node, caller.principal, req.request_id) if req.request_id else ""
        await self.versions.publish_kb_version(node, await self.writes.clear(node, wipe_id))
        if key is not None:
            done = request_ids.record("ClearKnowledgeBase", fp, b"")
            await self.records.remember(key, done, self.settings.max_ttl_seconds * 1000)
