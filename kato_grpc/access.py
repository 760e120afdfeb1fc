"""Who is calling, and which nodes they may touch.

A ``Caller`` is made once per call by the server's authentication (``server/kato_server/auth.py``) and
handed to every use case and to the transaction runner as an argument — never held in a
context variable — so what a call may touch is visible where it is checked. The runner checks
a session's node on every load; use cases check the ``node_id`` a request names. Since every
node a call touches passes ``authorize``, the Caller also records the first one: the access
log names it (``server/kato_server/calls.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kato_grpc.errors import PermissionDenied

ALL_NODES = "*"


@dataclass(frozen=True, slots=True)
class Caller:
    nodes: frozenset[str] | None = None  # None: authentication is off, every node is allowed
    principal: str = ""  # a digest of the caller's token ("" without authentication)
    # The first node this call asked for, allowed or not (at most one entry: bounded even on
    # the shared ANYONE of in-process tools).
    touched: list[str] = field(default_factory=list, compare=False, repr=False)

    def authorize(self, node_id: str) -> None:
        if not self.touched:
            self.touched.append(node_id)
        if self.nodes is not None and ALL_NODES not in self.nodes and node_id not in self.nodes:
            raise PermissionDenied("this token may not access that node", reason="NODE_NOT_ALLOWED")


# Without authentication (KATO_AUTH_TOKENS unset), and for in-process tools like the replay.
ANYONE = Caller()
