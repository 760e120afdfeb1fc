"""Optional bearer-token authentication and node-scoped authorization (KATO_AUTH_TOKENS).

``authenticate`` runs first in every KatoService call (health and reflection stay open for
probes): no or an unknown token is UNAUTHENTICATED. The token's nodes are then held in a
context variable for the call, and the shell asks ``authorize(node_id)`` wherever a node is
touched — a session's node included — so a token never reaches another node's data
(PERMISSION_DENIED).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from contextvars import ContextVar

from kato_grpc.errors import PermissionDenied, Unauthenticated

ALL_NODES = "*"

# The nodes this call may touch; None = no auth configured (everything allowed).
_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("kato_allowed_nodes", default=None)
# Who is calling: a digest of the token ("" without auth). Scopes session-less request ids.
_PRINCIPAL: ContextVar[str] = ContextVar("kato_principal", default="")
_SCHEME = "bearer "


def authenticate(metadata: Sequence[tuple[str, str | bytes]], tokens: Mapping[str, Sequence[str]] | None) -> None:
    """Check the call's bearer token and remember its nodes for ``authorize``."""
    if tokens is None:
        _ALLOWED.set(None)
        _PRINCIPAL.set("")
        return
    presented = ""
    for key, value in metadata:
        # The scheme name is case-insensitive (RFC 7235 section 2.1).
        if key == "authorization" and isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
            presented = value[len(_SCHEME) :].strip()
    if not presented:
        raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)", reason="TOKEN_MISSING")
    for token, nodes in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            _ALLOWED.set(frozenset(nodes))
            _PRINCIPAL.set(hashlib.sha256(token.encode()).hexdigest()[:32])
            return
    raise Unauthenticated("the bearer token is not valid", reason="TOKEN_INVALID")


def principal() -> str:
    """The authenticated caller of this call (a token digest), or "" without auth."""
    return _PRINCIPAL.get()


def authorize(node_id: str) -> None:
    allowed = _ALLOWED.get()
    if allowed is not None and ALL_NODES not in allowed and node_id not in allowed:
        raise PermissionDenied("this token may not access that node", reason="NODE_NOT_ALLOWED")
