"""The blocking client is generated from the asyncio one (scripts/gen_sync_client.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync_client", ROOT / "scripts" / "gen_sync_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_the_committed_blocking_client_is_what_aio_py_makes(generator: ModuleType) -> None:
    # sync.py is `make client`'s output: a hand edit, or aio.py changed without regenerating, fails.
    committed = (ROOT / "kato_grpc" / "client" / "sync.py").read_text(encoding="utf-8")
    assert committed == generator.render()
    assert committed.startswith(generator.HEADER)
    assert "async" not in committed and "await" not in committed


ASYNC = '''\
"""The asyncio spelling."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc


class AsyncKatoClient:
    """``async with AsyncKatoClient() as kato: await kato.learn(...)``."""

    async def __aenter__(self) -> AsyncKatoClient:
        return self

    async def read(self, fetch: Callable[[], Awaitable[int]]) -> AsyncIterator[int]:
        # AsyncKatoClient waits with asyncio.sleep
        async with grpc.aio.insecure_channel("x") as channel:
            await asyncio.sleep(0.5)
            async for item in channel.things():
                yield item
            yield (await fetch()).real
            yield (await
                   fetch()).imag
            yield abs(await fetch())
            yield (await fetch() + 1)
'''

BLOCKING = '''\
"""The blocking client: typed methods for every RPC, retries with the same request id."""

import time
from collections.abc import Callable, Iterator

import grpc


class KatoClient:
    """``with KatoClient() as kato: kato.learn(...)``."""

    def __enter__(self) -> KatoClient:
        return self

    def read(self, fetch: Callable[[], int]) -> Iterator[int]:
        # KatoClient waits with time.sleep
        with grpc.insecure_channel("x") as channel:
            time.sleep(0.5)
            yield from channel.things()
            yield fetch().real
            yield fetch().imag
            yield abs(fetch())
            yield (fetch() + 1)
'''


def test_each_async_form_gets_its_blocking_spelling(generator: ModuleType) -> None:
    # Parentheses that only grouped an await go; a call's stay, and so do ones grouping more.
    assert generator.render(ASYNC) == generator.HEADER + BLOCKING


@pytest.mark.parametrize(
    "line",
    [
        "    await asyncio.gather(f(), g())",
        "    loop = asyncio.get_running_loop()",
        "    from grpc import aio",
        "    return AsyncPager(fetch)",
    ],
)
def test_what_has_no_blocking_spelling_is_refused(generator: ModuleType, line: str) -> None:
    # Such code belongs in a module both clients import, not translated into a wrong client.
    source = f"import asyncio\n\n\nasync def f() -> None:\n{line}\n"
    with pytest.raises(generator.Untranslatable):
        generator.render(source)
