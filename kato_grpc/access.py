"""Who is calling, and which nodes they may touch.

A ``Caller`` is made once per call by the server's authentication (``server/auth.py``) and
handed to every use case and to the transaction runner as an argument — never held in a
context variable — so what a call may touch is visible where it is checked. The runner checks
a session's node on every load; use cases check the ``node_id`` a request names.
"""

from __future__ import annotations

from dataclasses import dataclass

from kato_grpc.errors import PermissionDenied

ALL_NODES = "*"


@dataclass(frozen=True, slots=True)
class Caller:
    nodes: frozenset[str] | None = None  # None: authentication is off, every node is allowed
    principal: str = ""  # a digest of the caller's token ("" without authentication)

    def authorize(self, node_id: str) -> None:
        if self.nodes is not None and ALL_NODES not in self.nodes and node_id not in self.nodes:
            raise PermissionDenied("this token may not access that node", reason="NODE_NOT_ALLOWED")


# Without authentication (KATO_AUTH_TOKENS unset), and for in-process tools like the replay.
ANYONE = Caller()
