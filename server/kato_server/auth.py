"""Optional bearer-token authentication (KATO_AUTH_TOKENS): a call's ``Caller``.

``authenticate`` runs first in every KatoService call (health and reflection stay open for
probes): no or an unknown token is UNAUTHENTICATED. The Caller it returns carries the token's
nodes and goes to the use case as an argument (``kato_grpc/access.py``); wherever a node is
touched — a session's node included — it is authorized, so a token never reaches another
node's data (PERMISSION_DENIED).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from kato_grpc.access import Caller
from kato_grpc.errors import Unauthenticated

_SCHEME = "bearer "


def authenticate(metadata: Sequence[tuple[str, str | bytes]], tokens: Mapping[str, Sequence[str]] | None) -> Caller:
    """The caller this call's bearer token names (anyone, when authentication is off)."""
    if tokens is None:
        return Caller()  # anyone, but this call's own record of the node it touches
    presented = ""
    for key, value in metadata:
        # The scheme name is case-insensitive (RFC 7235 section 2.1).
        if key == "authorization" and isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
            presented = value[len(_SCHEME) :].strip()
    if not presented:
        raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)", reason="TOKEN_MISSING")
    for token, nodes in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            return Caller(frozenset(nodes), hashlib.sha256(token.encode()).hexdigest()[:32])
    raise Unauthenticated("the bearer token is not valid", reason="TOKEN_INVALID")
