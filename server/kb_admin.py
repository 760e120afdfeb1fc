"""Knowledge-base administration: patterns (get, list, update, delete) and wiping a KB.

Each call checks its request (``limits``), authorizes the node and goes to the pattern store;
a change publishes the KB's new version so every process's cache refreshes. A wipe with a
session also clears the session's STM, through the transaction runner.
"""

from __future__ import annotations

import base64

from kato_grpc import encoding, request_ids
from kato_grpc.access import Caller
from kato_grpc.engine import processor
from kato_grpc.engine.records import canonical_values
from kato_grpc.errors import InvalidArgument, NotFound
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.runner import TransactionRunner
from kato_grpc.settings import Settings
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.redis_sessions import RedisSessionStore, scoped_key
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from server import limits

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def pattern_not_found(name: str, node_id: str) -> NotFound:
    return NotFound(f"pattern {name} not found in node {node_id}", reason="PATTERN_NOT_FOUND")


class KbAdmin:
    def __init__(
        self, settings: Settings, sessions: RedisSessionStore, patterns: MongoPatternStore, runner: TransactionRunner
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.patterns = patterns
        self.runner = runner

    @staticmethod
    def _pattern(req: svc.GetPatternRequest | svc.DeletePatternRequest, caller: Caller) -> str:
        """The bare name of the pattern a request names, once the caller may see its node."""
        limits.require_node_id(req.node_id)
        bare = limits.pattern_name(req.name)
        caller.authorize(req.node_id)
        return bare

    async def get_pattern(self, req: svc.GetPatternRequest, caller: Caller) -> pb.Pattern:
        bare = self._pattern(req, caller)
        record = await self.patterns.get_pattern(req.node_id, bare)
        if record is None:
            raise pattern_not_found(req.name, req.node_id)
        return encoding.pattern_proto(record)

    async def list_patterns(self, req: svc.ListPatternsRequest, caller: Caller) -> svc.ListPatternsResponse:
        limits.require_node_id(req.node_id)
        caller.authorize(req.node_id)
        if req.page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(req.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            after = (
                base64.b64decode(req.page_token.encode(), altchars=b"-_", validate=True).decode()
                if req.page_token
                else ""
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument.for_field("page_token", "is not a token this service issued") from exc
        records = await self.patterns.list_patterns(req.node_id, after, size + 1)
        out = svc.ListPatternsResponse(patterns=[encoding.pattern_proto(r) for r in records[:size]])
        if len(records) > size:
            out.next_page_token = base64.urlsafe_b64encode(records[size - 1].name.encode()).decode()
        return out

    async def update_pattern(self, req: svc.UpdatePatternRequest, caller: Caller) -> pb.Pattern:
        bare, mask = limits.check_pattern_update(req, self.settings)
        caller.authorize(req.node_id)
        record = await self.patterns.update_pattern(
            req.node_id,
            bare,
            frequency=req.pattern.frequency if "frequency" in mask else None,
            emotives=[dict(r.values) for r in req.pattern.emotives] if "emotives" in mask else None,
            metadata=(
                {k: canonical_values(v, f"pattern.metadata.{k}") for k, v in req.pattern.metadata.items()}
                if "metadata" in mask
                else None
            ),
        )
        if record is None:
            raise pattern_not_found(req.pattern.name, req.node_id)
        return encoding.pattern_proto(record)

    async def delete_pattern(self, req: svc.DeletePatternRequest, caller: Caller) -> None:
        bare = self._pattern(req, caller)
        version = await self.patterns.delete_pattern(req.node_id, bare)
        if version is None:
            raise pattern_not_found(req.name, req.node_id)
        await self.sessions.publish_kb_version(req.node_id, version)

    async def clear_knowledge_base(self, req: svc.ClearKnowledgeBaseRequest, caller: Caller) -> None:
        """KATO's clear-all: wipe the KB (of the session's node, or of ``node_id``) and, with a
        session, clear its STM. Both given must agree."""
        limits.check_request_id(req.request_id)
        target = req.WhichOneof("target")
        if target is None:
            raise InvalidArgument.for_field("target", "set session_id (clear-all of a session) or node_id")
        if target == "node_id":
            await self._clear_node(req, caller)
            return
        fp = request_ids.fingerprint("ClearKnowledgeBase", req) if req.request_id else b""
        loaded = await self.runner.load(req.session_id, caller, req.request_id)
        node = loaded.state.node_id
        if loaded.record is not None:  # a retry: answered by the transaction below, no second wipe
            request_ids.check_replay(loaded.record, "ClearKnowledgeBase", fp)
        else:
            # Apply the outbox first: writes learned before the wipe must land before it, never
            # after (the ledger then keeps them from being applied again).
            await self.runner.read(req.session_id, caller)
            await self.sessions.publish_kb_version(node, await self.patterns.clear(node))

        async def run(
            state: storage.SessionState, _kb: int | None
        ) -> tuple[storage.SessionState, svc.ClearKnowledgeBaseResponse]:
            return processor.clear_stm(state), svc.ClearKnowledgeBaseResponse()

        await self.runner.transact(
            req.session_id,
            "ClearKnowledgeBase",
            req,
            req.request_id,
            run,
            svc.ClearKnowledgeBaseResponse,
            caller=caller,
        )

    async def _clear_node(self, req: svc.ClearKnowledgeBaseRequest, caller: Caller) -> None:
        limits.require_node_id(req.node_id)
        caller.authorize(req.node_id)
        key = ""
        if req.request_id:
            key = scoped_key("kbreq", req.node_id, caller.principal, req.request_id)
            fp = request_ids.fingerprint("ClearKnowledgeBase", req)
            previous = await self.sessions.recorded(key)
            if previous is not None:
                request_ids.check_replay(previous, "ClearKnowledgeBase", fp)
                return
        await self.sessions.publish_kb_version(req.node_id, await self.patterns.clear(req.node_id))
        if key:
            done = request_ids.record("ClearKnowledgeBase", fp, b"")
            await self.sessions.remember(key, done, self.settings.max_ttl_seconds * 1000)
