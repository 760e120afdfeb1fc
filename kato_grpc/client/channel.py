"""What both clients share: the channel options, credentials, and the retry schedule."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from kato_grpc.client.errors import retryable
from kato_grpc.errors import KatoError

DEFAULT_TARGET = "127.0.0.1:50051"
# Responses can carry many predictions; the server's own limit is 4 MiB by default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Options:
    """How a client connects and retries.

    ``timeout``: the whole budget of a call, in seconds, its retries and the waits between them
    included — each attempt's deadline is what is left of it. ``retries``: further attempts
    after UNAVAILABLE or a retryable ABORTED, with the same request (and so the same request
    id), while the budget lasts; waits grow from ``backoff`` doubling up to ``max_backoff``,
    jittered. DEADLINE_EXCEEDED is never retried: an attempt's deadline is the rest of the
    budget, so when it passes the budget is spent (and when the server's own call limit,
    ``KATO_MAX_CALL_SECONDS``, cut it, the same call would be cut again).
    """

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    timeout: float = 30.0
    # "round_robin" spreads calls over every address the target resolves to (e.g.
    # "ipv4:10.0.0.1:50051,10.0.0.2:50051" or a headless DNS name); None: grpc's pick_first.
    load_balancing: str | None = None
    retries: int = 4
    backoff: float = 0.05
    max_backoff: float = 2.0

    def channel_options(self) -> list[tuple[str, Any]]:
        balancing = [("grpc.lb_policy_name", self.load_balancing)] if self.load_balancing else []
        return [*CHANNEL_OPTIONS, *balancing]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls and self.root_certificates is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1, 2, ...): full jitter."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


# A delete that may have been applied by an attempt whose answer was lost finds nothing the
# second time: that NOT_FOUND means "done", not "never existed".
_DELETES = frozenset({"DeleteSession", "DeletePattern"})


def _now() -> float:
    return time.monotonic()


@dataclass
class Attempts:
    """The attempts of one call within its budget (``Options.timeout``), shared by the sync
    and the async client: each attempt's deadline (``timeout()``) and the retry decision."""

    options: Options
    method: str
    attempt: int = 0
    ambiguous: bool = False  # an earlier attempt may have been applied
    ends: float = field(init=False)  # when the budget is spent (monotonic clock)

    def __post_init__(self) -> None:
        self.ends = _now() + self.options.timeout

    def timeout(self) -> float:
        """The next attempt's deadline: what is left of the budget (0 when it is spent)."""
        return max(self.ends - _now(), 0.0)

    def after(self, error: KatoError) -> float | None:
        """Seconds to wait before trying again, or None to give up (raise ``error``): not
        retryable, out of retries, or no budget left after the wait."""
        self.attempt += 1
        if not retryable(error) or self.attempt > self.options.retries:
            return None
        wait = self.options.wait(self.attempt)
        if wait >= self.ends - _now():  # the wait would spend the budget: the next attempt has none
            return None
        self.ambiguous = self.ambiguous or error.code != "ABORTED"
        return wait

    def done_anyway(self, error: KatoError) -> bool:
        return self.ambiguous and self.method in _DELETES and error.code == "NOT_FOUND"
