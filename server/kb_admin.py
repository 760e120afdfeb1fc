"""Knowledge-base administration: reading, listing, changing and deleting patterns.

No session is involved: each call checks its request (``limits``), authorizes the node and
goes to the pattern store; a change publishes the KB's new version so every process's cache
refreshes.
"""

from __future__ import annotations

import base64

from kato_grpc.engine import processor
from kato_grpc.errors import InvalidArgument, NotFound
from kato_grpc.settings import Settings
from kato_grpc.stores.mongo_patterns import MongoPatternStore
from kato_grpc.stores.redis_sessions import RedisSessionStore
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from server import limits
from server.auth import authorize

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def pattern_not_found(name: str, node_id: str) -> NotFound:
    return NotFound(f"pattern {name} not found in node {node_id}", reason="PATTERN_NOT_FOUND")


class KbAdmin:
    def __init__(self, settings: Settings, sessions: RedisSessionStore, patterns: MongoPatternStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.patterns = patterns

    async def get_pattern(self, req: svc.GetPatternRequest) -> pb.Pattern:
        limits.require_node_id(req.node_id)
        bare = limits.pattern_name(req.name)
        authorize(req.node_id)
        record = await self.patterns.get_pattern(req.node_id, bare)
        if record is None:
            raise pattern_not_found(req.name, req.node_id)
        return processor.pattern_proto(record)

    async def list_patterns(self, req: svc.ListPatternsRequest) -> svc.ListPatternsResponse:
        limits.require_node_id(req.node_id)
        authorize(req.node_id)
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
        out = svc.ListPatternsResponse(patterns=[processor.pattern_proto(r) for r in records[:size]])
        if len(records) > size:
            out.next_page_token = base64.urlsafe_b64encode(records[size - 1].name.encode()).decode()
        return out

    async def update_pattern(self, req: svc.UpdatePatternRequest) -> pb.Pattern:
        bare, mask = limits.check_pattern_update(req, self.settings)
        authorize(req.node_id)
        record = await self.patterns.update_pattern(
            req.node_id,
            bare,
            frequency=req.pattern.frequency if "frequency" in mask else None,
            emotives=[dict(r.values) for r in req.pattern.emotives] if "emotives" in mask else None,
            metadata={k: list(v.values) for k, v in req.pattern.metadata.items()} if "metadata" in mask else None,
        )
        if record is None:
            raise pattern_not_found(req.pattern.name, req.node_id)
        return processor.pattern_proto(record)

    async def delete_pattern(self, req: svc.DeletePatternRequest) -> None:
        limits.require_node_id(req.node_id)
        bare = limits.pattern_name(req.name)
        authorize(req.node_id)
        version = await self.patterns.delete_pattern(req.node_id, bare)
        if version is None:
            raise pattern_not_found(req.name, req.node_id)
        await self.sessions.publish_kb_version(req.node_id, version)
