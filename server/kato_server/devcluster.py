"""A local Redis Cluster for the tests and benchmarks: masters and replicas of the Valkey
server the dev extra installs, on loopback ports, joined by hand the way an operator would —
slots with CLUSTER ADDSLOTSRANGE, nodes with CLUSTER MEET, replicas with CLUSTER REPLICATE.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from kato_server.devstack import LocalServer, free_port, start_redis

SLOTS = 16384
# How long a master may be unreachable before its replica takes over (ms): short, so a
# failover test does not wait long; a production cluster uses more (the default is 15 s).
NODE_TIMEOUT_MS = 2000


@dataclass
class LocalCluster:
    nodes: list[LocalServer]

    @property
    def url(self) -> str:
        """What KATO_REDIS_URL names it by: any node, with the cluster scheme."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def roles(self) -> dict[int, str]:
        """Each live node's port and role (``master`` / ``slave``), as the cluster sees them."""
        out = {}
        for node in self.nodes:
            if node.proc.poll() is None:
                out[node.port] = str(_cmd(node.port, "ROLE")[0], "ascii")
        return out

    def master_of(self, key: str) -> LocalServer:
        live = [n for n in self.nodes if n.proc.poll() is None]
        slot = int(_cmd(live[0].port, "CLUSTER", "KEYSLOT", key))
        for node in live:
            if _owns(node.port, slot):
                return node
        raise RuntimeError(f"no live master owns slot {slot}")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every live node says cluster_state:ok and every slot has a live master."""
        _wait(lambda: all(_state_ok(n.port) for n in self.nodes if n.proc.poll() is None), timeout, "cluster state ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cmd(port: int, *args: str | int) -> Any:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as c:
        return c.execute_command(*args)


def _text(port: int, *args: str | int) -> str:
    return str(_cmd(port, *args), "ascii")


def _owns(port: int, slot: int) -> bool:
    for line in _text(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "myself" in fields[2] and "master" in fields[2]:
            for part in fields[8:]:
                lo, _, hi = part.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return True
    return False


def _state_ok(port: int) -> bool:
    try:
        return "cluster_state:ok" in _text(port, "CLUSTER", "INFO")
    except redis.RedisError:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"local cluster: no {what} after {timeout}s")


def start_cluster(data_dir: Path, masters: int = 3, replicas: int = 1) -> LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, slots split evenly; AOF on."""
    count = masters * (1 + replicas)
    # A replica's first sync starts at once: Valkey waits 5 s by default for more replicas to
    # share a diskless transfer, and every cluster start waited for it.
    extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0")  # fmt: skip
    nodes: list[LocalServer] = []
    buses: list[int] = []
    try:
        for _ in range(count):
            port, bus = free_port(), free_port()  # the bus port explicit: port + 10000 may be taken
            nodes.append(start_redis(data_dir / f"node-{port}", port, extra=(*extra, "--cluster-port", str(bus))))
            buses.append(bus)
        cluster = LocalCluster(nodes)
        for i in range(masters):
            lo, hi = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
            _cmd(nodes[i].port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node in nodes[1:]:
            _cmd(node.port, "CLUSTER", "MEET", "127.0.0.1", nodes[0].port, buses[0])

        def all_known() -> bool:
            return len(_text(nodes[0].port, "CLUSTER", "NODES").splitlines()) == count

        _wait(all_known, 30, "full membership")
        for j, node in enumerate(nodes[masters:]):
            master_id = _text(nodes[j % masters].port, "CLUSTER", "MYID")
            _wait(lambda: master_id in _text(node.port, "CLUSTER", "NODES"), 30, "master known to a replica")  # noqa: B023
            _cmd(node.port, "CLUSTER", "REPLICATE", master_id)
        cluster.wait_healthy()
        # A replica can take over only once it has synced: before that it has no data to serve.
        for node in nodes[masters:]:
            _wait(lambda: _cmd(node.port, "INFO", "replication").get("master_link_status") == "up", 60, "replica sync")  # noqa: B023
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@contextlib.contextmanager
def local_cluster(data_dir: Path, masters: int = 3, replicas: int = 1) -> Iterator[LocalCluster]:
    """A cluster for one test or benchmark: its data is thrown away, so its nodes are killed
    at the end (stopping them cleanly waited on each node's AOF)."""
    cluster = start_cluster(data_dir, masters, replicas)
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            node.kill()
