"""Pages of List calls (AIP-158): the page size rule and opaque page tokens, for every list."""

from __future__ import annotations

import base64

from kato_grpc.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum means the maximum (AIP-158)."""
    if requested < 0:
        raise InvalidArgument.for_field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def after(token: str) -> str | None:
    """Where the page of ``token`` starts: after this key (None: from the first)."""
    if not token:
        return None
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument.for_field("page_token", "is not a token this service issued") from exc


def token(last_key: str) -> str:
    """The token of the page that starts after ``last_key``."""
    return base64.urlsafe_b64encode(last_key.encode()).decode()
