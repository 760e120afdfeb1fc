"""The API's resource names (AIP-122) and the ids inside them — the one place they are made
and taken apart.

- ``knowledgeBases/{knowledge_base}/symbols/{symbol}``: {symbol} percent-encoded (every byte
  but RFC 3986's unreserved ones), so it holds no "/" and parses from the right too.
- ``sessions/{session}``: {session} is the id the server made ("s-" + 32 hex digits).
- ``knowledgeBases/{knowledge_base}``: {knowledge_base} is KATO's node id, verbatim (D-28
  allows any UTF-8, "/" included, so it is never split).
- ``knowledgeBases/{knowledge_base}/patterns/{pattern}``: {pattern} is the 40-hex sha1 of the
  pattern's events (D-27). It is parsed from the right, so a node id containing
  "/patterns/" still names its own knowledge base.

The engine and the stores work with the bare ids (and the engine's learn results with
KATO's ``PTRN|<sha1>``, which the recorded scenarios use); names are made at the edge, where
a message leaves, and parsed where a request arrives (``server/kato_server/validation.py`` says what is
refused). Parsers return ``None`` for anything that is not the form; they check the form
only, not the id's own rules.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from kato_grpc.engine.naming import PATTERN_PREFIX, strip_pattern_prefix

SESSIONS = "sessions/"
KNOWLEDGE_BASES = "knowledgeBases/"
PATTERNS = "/patterns/"
SYMBOLS = "/symbols/"


def session(session_id: str) -> str:
    return SESSIONS + session_id


def knowledge_base(node_id: str) -> str:
    return KNOWLEDGE_BASES + node_id


def pattern_prefix(node_id: str) -> str:
    """What goes before a pattern's sha1 in its name (made once per response, not per name)."""
    return KNOWLEDGE_BASES + node_id + PATTERNS


def pattern(node_id: str, pattern_id: str) -> str:
    """A pattern's name from its sha1 — or from KATO's ``PTRN|<sha1>``; "" stays ""."""
    if not pattern_id:
        return ""
    return pattern_prefix(node_id) + strip_pattern_prefix(pattern_id)


def symbol(node_id: str, text: str) -> str:
    return KNOWLEDGE_BASES + node_id + SYMBOLS + quote(text, safe="")


def parse_symbol(name: str) -> tuple[str, str] | None:
    """(node id, symbol) of ``knowledgeBases/{kb}/symbols/{percent-encoded symbol}``; None
    when the form is wrong or the encoding is not exactly ours (one name per symbol)."""
    node_id = parse_knowledge_base(name)
    if node_id is None:
        return None
    node_id, sep, encoded = node_id.rpartition(SYMBOLS)
    if not sep:
        return None
    try:
        text = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
    return (node_id, text) if quote(text, safe="") == encoded else None


def parse_session(name: str) -> str | None:
    return name[len(SESSIONS) :] if name.startswith(SESSIONS) else None


def parse_knowledge_base(name: str) -> str | None:
    return name[len(KNOWLEDGE_BASES) :] if name.startswith(KNOWLEDGE_BASES) else None


def parse_pattern(name: str) -> tuple[str, str] | None:
    """(node id, sha1) of ``knowledgeBases/{kb}/patterns/{sha1}``."""
    node_id = parse_knowledge_base(name)
    if node_id is None:
        return None
    node_id, sep, pattern_id = node_id.rpartition(PATTERNS)
    return (node_id, pattern_id) if sep else None


def pattern_id(name: str) -> str:
    """The sha1 at the end of a pattern's name (KATO's prediction name; views and tools)."""
    return name.rpartition("/")[2]


def kato_pattern_name(name: str) -> str:
    """KATO's ``PTRN|<sha1>`` for a pattern's name; "" stays "" (the recorded scenarios' form)."""
    return PATTERN_PREFIX + pattern_id(name) if name else ""
