"""Issue 21 (2, 3): a server killed by SIGKILL comes back at once on its port, and the learns
it acknowledged reach the knowledge base within seconds — whatever it left open in MongoDB."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import grpc

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import new_server
from tests.integration.crashing_server import CRASH_EXIT_CODE
from tests.integration.support import doomed_session, eventually, frequency

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
# MongoDB (and SecantusDB) reap a transaction its process left open after 60 s; a restart must
# not wait for that. The relay applies outboxes 2 s old, the dead process's lease lapses after
# 3 s: half the reaper's minute is a margin a loaded machine keeps.
WITHIN_SECONDS = 30.0
# Connection states a killed server leaves on its port (/proc/net/tcp): FIN_WAIT1, FIN_WAIT2,
# TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING.
LEFT_BEHIND = {"04", "05", "06", "07", "08", "09", "0B"}


def test_a_learn_whose_process_died_inside_its_transaction_lands_within_seconds(stores: Stores, log_dir: Path) -> None:
    database = "kato_txn_" + uuid.uuid4().hex[:8]
    doomed, stub, node, sid = doomed_session(
        stores, log_dir, 0, database, CRASH_IN_TRANSACTION="1", KATO_LEARN_ACK="committed"
    )
    answered = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"), timeout=30)  # acknowledged
    assert doomed.proc is not None and doomed.proc.wait(30) == CRASH_EXIT_CODE  # inside its MongoDB transaction
    died = time.monotonic()
    survivor = new_server(*stores, log_dir, database, log_level="INFO").start()
    try:
        stub = survivor.stub()
        assert eventually(lambda: frequency(stub, answered.pattern) == 1, timeout=WITHIN_SECONDS)
        assert time.monotonic() - died < WITHIN_SECONDS
        # The KB takes other learns again, and the retry gets the recorded answer.
        other = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        ).name
        for symbol in ("c", "d"):
            stub.Observe(svc.ObserveRequest(name=other, observation=pb.Observation(strings=[symbol])))
        learned = stub.Learn(svc.LearnRequest(name=other), timeout=WITHIN_SECONDS)
        assert frequency(stub, learned.pattern) == 1
        assert stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once")) == answered
        assert frequency(stub, answered.pattern) == 1
        assert eventually(lambda: "ended the MongoDB sessions of a process" in survivor.log_path.read_text())
    finally:
        survivor.stop()


def test_acknowledged_learns_survive_sigkill_under_concurrent_learns(stores: Stores, log_dir: Path) -> None:
    database = "kato_kill_" + uuid.uuid4().hex[:8]
    server = new_server(*stores, log_dir, database).start(KATO_LEARN_ACK="committed")
    kb = names.knowledge_base("kill-" + uuid.uuid4().hex)
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def learner(i: int) -> None:
        stub = server.stub()
        sid = stub.CreateSession(svc.CreateSessionRequest(session=svc.Session(knowledge_base=kb))).name
        for n in range(10_000):
            try:
                for symbol in (f"w{i}", f"n{n}"):
                    stub.Observe(svc.ObserveRequest(name=sid, observation=pb.Observation(strings=[symbol])))
                pattern = stub.Learn(svc.LearnRequest(name=sid, request_id=f"{i}-{n}"), timeout=30).pattern
            except grpc.RpcError:
                return  # the server is gone
            with lock:
                acknowledged.append(pattern)
                if len(acknowledged) >= 40:
                    enough.set()

    threads = [threading.Thread(target=learner, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(120), "learns were acknowledged"
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # in the middle of eight learners' writes
    server.proc.wait()
    died = time.monotonic()
    for thread in threads:
        thread.join()
    restarted = new_server(*stores, log_dir, database).start(KATO_LEARN_ACK="committed")
    try:
        stub = restarted.stub()

        def all_there() -> bool:
            return all(frequency(stub, p) == 1 for p in acknowledged)

        assert eventually(all_there, timeout=WITHIN_SECONDS), "every acknowledged learn, once"
        assert time.monotonic() - died < WITHIN_SECONDS
        assert len(set(acknowledged)) == len(acknowledged)  # each learn its own pattern: counted once
    finally:
        restarted.stop()


def _left_behind(port: int) -> int:
    """Sockets on ``port`` that are not listening: what a killed server leaves."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state in LEFT_BEHIND:
                count += 1
    return count


def test_a_killed_server_restarts_on_its_port_at_once(stores: Stores, log_dir: Path) -> None:
    server = new_server(*stores, log_dir)
    server.start()
    # A connection each (grpc shares one between channels to a target unless told not to).
    channels = [grpc.insecure_channel(server.address, [("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    try:
        for channel in channels:  # open connections, each with a call done
            svc_grpc.KatoServiceStub(channel).CreateSession(
                svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("restart")))
            )
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        for channel in channels[:2]:  # some clients hang up (TIME_WAIT), others not yet (FIN_WAIT)
            channel.close()
        assert _left_behind(server.port) > 0  # what used to keep the port "in use" for a minute
        server.start()  # the same port, at once: SERVING
        stub = server.stub()
        session = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base("restart")))
        )
        for symbol in ("x", "y"):
            stub.Observe(svc.ObserveRequest(name=session.name, observation=pb.Observation(strings=[symbol])))
        learned = stub.Learn(svc.LearnRequest(name=session.name))
        assert learned.pattern == names.pattern("restart", pattern_name([["x"], ["y"]]))
    finally:
        for channel in channels:
            channel.close()
        server.stop()
