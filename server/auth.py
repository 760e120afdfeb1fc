"""Optional bearer-token authentication and node-scoped authorization (KATO_AUTH_TOKENS).

``authenticate`` runs first in every KatoService call (health and reflection stay open for
probes): no or an unknown token is UNAUTHENTICATED. The token's nodes are then held in a
context variable for the call, and the shell asks ``authorize(node_id)`` wherever a node is
touched — a session's node included — so a token never reaches another node's data
(PERMISSION_DENIED).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from contextvars import ContextVar

from kato_grpc.errors import PermissionDenied, Unauthenticated

ALL_NODES = "*"

# The nodes this call may touch; None = no auth configured (everything allowed).
_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("kato_allowed_nodes", default=None)


def authenticate(metadata: Sequence[tuple[str, str | bytes]], tokens: Mapping[str, Sequence[str]] | None) -> None:
    """Check the call's bearer token and remember its nodes for ``authorize``."""
    if tokens is None:
        _ALLOWED.set(None)
        return
    presented = ""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            presented = value.removeprefix("Bearer ").strip()
    if not presented:
        raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)", reason="TOKEN_MISSING")
    for token, nodes in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            _ALLOWED.set(frozenset(nodes))
            return
    raise Unauthenticated("the bearer token is not valid", reason="TOKEN_INVALID")


def authorize(node_id: str) -> None:
    allowed = _ALLOWED.get()
    if allowed is not None and ALL_NODES not in allowed and node_id not in allowed:
        raise PermissionDenied("this token may not access that node", reason="NODE_NOT_ALLOWED")
