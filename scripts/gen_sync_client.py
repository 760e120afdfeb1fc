"""Write kato_grpc/client/sync.py, the blocking client, from kato_grpc/client/aio.py.

    python scripts/gen_sync_client.py            (`make client`, run by `make proto`)
    python scripts/gen_sync_client.py --check    exit 1 when sync.py is not what aio.py makes

The asyncio client is the one written by hand; the blocking one is its token-for-token
translation (what unasync does): ``async def``/``async for``/``async with`` lose ``async``,
``await`` goes (with the parentheses that only grouped an await: ``(await f()).x`` is
``f().x``), ``grpc.aio.`` is ``grpc.``, ``asyncio.sleep`` is ``time.sleep``, ``Awaitable[T]`` is
``T`` (and its import goes), and the async names map to their blocking twins (``RENAMES``).
Docstrings and comments get the same renames, so they are written to read right in both; the
module docstring is the script's. Anything else asyncio offers has no blocking spelling: the
script refuses it, and such code belongs in a module both clients import (``channel.py``,
``requests.py``, ``errors.py``). ruff then sorts the renamed imports, turns a loop that only
yields into ``yield from`` and formats the file, so the output is what ``ruff check`` and
``ruff format`` want (docs/architecture.md §1).
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "kato_grpc" / "client" / "aio.py"
TARGET = ROOT / "kato_grpc" / "client" / "sync.py"

HEADER = (
    "# Generated from kato_grpc/client/aio.py by scripts/gen_sync_client.py (`make client`): do not edit.\n"
    "# Change aio.py, or the modules both clients share, and regenerate; a unit test fails while\n"
    "# this file differs from what the script writes.\n"
)
DOCSTRING = '"""The blocking client: typed methods for every RPC, retries with the same request id."""'

RENAMES = {
    "AsyncKatoClient": "KatoClient",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "StopAsyncIteration": "StopIteration",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}
# The same in docstrings and comments: the renames, the two dotted ones, and the keywords gone.
_PROSE_RENAMES = {**RENAMES, "grpc.aio": "grpc", "asyncio.sleep": "time.sleep"}
_PROSE = re.compile(
    r"\b(?:" + "|".join(map(re.escape, _PROSE_RENAMES)) + r")\b|\basync (?=def\b|for\b|with\b)|\bawait "
)
# What must not survive the translation: each one would make the blocking client async (and
# a name starting with Async would be a blocking class that says otherwise).
_ASYNC_NAMES = {"async", "await", "asyncio", "aio", "Awaitable", *RENAMES}

_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}


class Untranslatable(ValueError):
    """aio.py uses something with no mechanical blocking spelling; share it instead."""


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


class _Source:
    """aio.py's tokens, with offsets into its text so edits can be made by position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        self._lines = [0]
        for line in text.splitlines(keepends=True):
            self._lines.append(self._lines[-1] + len(line))

    def offset(self, position: tuple[int, int]) -> int:
        row, col = position
        return self._lines[row - 1] + col

    def start(self, i: int) -> int:
        return self.offset(self.tokens[i].start)

    def end(self, i: int) -> int:
        return self.offset(self.tokens[i].end)

    def next(self, i: int) -> int:
        """The next token that is code (not layout or a comment)."""
        i += 1
        while self.tokens[i].type in _SKIP:
            i += 1
        return i

    def previous(self, i: int) -> int | None:
        i -= 1
        while i >= 0 and self.tokens[i].type in _SKIP:
            i -= 1
        return i if i >= 0 else None

    def closing(self, i: int) -> int:
        """The bracket that closes the one at ``i``."""
        depth = 0
        for j in range(i, len(self.tokens)):
            if self.tokens[j].string in "([{" and self.tokens[j].type == tokenize.OP:
                depth += 1
            elif self.tokens[j].string in ")]}" and self.tokens[j].type == tokenize.OP:
                depth -= 1
                if depth == 0:
                    return j
        raise Untranslatable(f"unbalanced bracket at line {self.tokens[i].start[0]}")

    def where(self, i: int) -> str:
        return f"aio.py line {self.tokens[i].start[0]}: {self.tokens[i].line.strip()}"


def translate(text: str) -> str:
    """The blocking spelling of async source, before ruff (imports unsorted, unformatted)."""
    src = _Source(text)
    edits: list[_Edit] = []
    first_code = src.next(-1)
    for i, tok in enumerate(src.tokens):
        if tok.type == tokenize.STRING:
            new = DOCSTRING if i == first_code else _PROSE.sub(_prose, tok.string)
            edits.append(_Edit(src.start(i), src.end(i), new))
        elif tok.type == tokenize.COMMENT:
            edits.append(_Edit(src.start(i), src.end(i), _PROSE.sub(_prose, tok.string)))
        elif tok.type == tokenize.NAME:
            edits.extend(_name(src, i))
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text


def _prose(match: re.Match[str]) -> str:
    return _PROSE_RENAMES.get(match.group(0), "")  # a keyword goes


def _name(src: _Source, i: int) -> list[_Edit]:
    name = src.tokens[i].string
    after = src.next(i)
    # The keyword goes with the space after it: `async def` indented must stay `def` indented.
    drop_keyword = _Edit(src.start(i), src.start(after), "")
    if name == "async":
        if src.tokens[after].string not in ("def", "for", "with"):
            raise Untranslatable(src.where(i))
        return [drop_keyword]
    if name == "await":
        return [drop_keyword, *_grouping(src, i)]
    if name in RENAMES:
        return [_Edit(src.start(i), src.end(i), RENAMES[name])]
    before = src.previous(i)
    if name == "aio" and before is not None and _follows(src, before, "grpc", "."):
        if src.tokens[after].string != ".":
            raise Untranslatable(src.where(i))
        return [_Edit(src.start(i), src.end(after), "")]  # grpc.aio.x -> grpc.x
    if name == "asyncio":
        imported = before is not None and src.tokens[before].string == "import"
        sleep = src.tokens[after].string == "." and src.tokens[src.next(after)].string == "sleep"
        if not (imported or sleep):
            raise Untranslatable(f"{src.where(i)} (only asyncio.sleep has a blocking twin)")
        return [_Edit(src.start(i), src.end(i), "time")]
    if name == "Awaitable":
        return _unwrap(src, i, after, before)
    return []


def _unwrap(src: _Source, i: int, after: int, before: int | None) -> list[_Edit]:
    """``Awaitable[T]`` is ``T``; in an import list the name goes with its comma."""
    if src.tokens[after].string == "[":
        close = src.closing(after)
        return [_Edit(src.start(i), src.end(after), ""), _Edit(src.start(close), src.end(close), "")]
    if src.tokens[after].string == ",":
        return [_Edit(src.start(i), src.start(src.next(after)), "")]
    if before is not None and src.tokens[before].string == ",":
        return [_Edit(src.start(before), src.end(i), "")]
    raise Untranslatable(src.where(i))


def _follows(src: _Source, i: int, *strings: str) -> bool:
    """Whether the code tokens ending at ``i`` are ``strings``."""
    j: int | None = i
    for expected in reversed(strings):
        if j is None or src.tokens[j].string != expected:
            return False
        j = src.previous(j)
    return True


def _grouping(src: _Source, i: int) -> list[_Edit]:
    """The parentheses around ``await x`` that only group it, which the blocking spelling
    drops: ``(await f()).x`` becomes ``f().x``. The await's operand is a primary, so without
    the await the parentheses group nothing; a call's parentheses, ``g(await x)``, stay."""
    opening = src.previous(i)
    if opening is None or src.tokens[opening].string != "(":
        return []
    before = src.previous(opening)
    if before is not None:
        tok = src.tokens[before]
        called = (tok.type == tokenize.NAME and not keyword.iskeyword(tok.string)) or tok.string in (")", "]", "}")
        if called or tok.type == tokenize.STRING:
            return []
    close = src.closing(opening)
    # Parsed in parentheses again, so an await split over lines parses as it does in place.
    inner = ast.parse(src.text[src.start(opening) : src.end(close)], mode="eval").body
    if not isinstance(inner, ast.Await):
        return []  # (await x + 1): the parentheses group more than the await
    return [_Edit(src.start(opening), src.end(opening), ""), _Edit(src.start(close), src.end(close), "")]


def _ruff(text: str, *args: str) -> str:
    # As the file in the tree, so the project's ruff settings apply.
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET.relative_to(ROOT)), "-"]
    done = subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ruff {args[0]} failed on the generated client:\n{done.stderr}")
    return done.stdout


def _check_blocking(text: str) -> None:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and (tok.string in _ASYNC_NAMES or tok.string.startswith("Async")):
            raise Untranslatable(f"left in the translation, line {tok.start[0]}: {tok.line.strip()}")


def render(text: str | None = None) -> str:
    """sync.py as aio.py (or ``text``, an async client) makes it: translated, ruff-clean."""
    translated = translate(SOURCE.read_text(encoding="utf-8") if text is None else text)
    _check_blocking(translated)
    # I001: the renames move imports (AsyncIterator sorts before Callable, Iterator after
    # Iterable). UP028: `async for x in it: yield x` has no shorter async spelling, its blocking
    # one is `yield from it`, which the project's lint requires; ruff calls that fix unsafe for
    # a generator that is sent values, and nobody sends to these (grpc's response iterators,
    # repeated fields).
    fixed = _ruff(HEADER + translated, "check", "--fix-only", "--unsafe-fixes", "--select", "I001,UP028", "--quiet")
    return _ruff(fixed, "format")


def main() -> None:
    rendered = render()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text(encoding="utf-8") != rendered:
            raise SystemExit(f"{TARGET.relative_to(ROOT)} is not what aio.py makes: run `make client`")
        return
    TARGET.write_text(rendered, encoding="utf-8")


if __name__ == "__main__":
    main()
