"""Issue 21 (2, 3): a server killed by SIGKILL comes back at once on its port, and the learns
it acknowledged reach the knowledge base within seconds — whatever it left open in MongoDB."""

from __future__ import annotations

import datetime
import json
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_grpc.settings import Settings
from kato_grpc.v1 import engine_pb2 as pb
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_grpc.v1 import kato_service_pb2_grpc as svc_grpc
from kato_server import devstack
from kato_server.devserver import ServerProcess, new_server
from tests.integration.crashing_server import CRASH_EXIT_CODE
from tests.integration.support import doomed_session, eventually, frequency

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
# What a restart must not wait for: MongoDB (and SecantusDB) end a transaction its process left
# open once it has been idle 60 s.
TRANSACTION_LIFETIME = 60.0
_DEFAULTS = Settings.model_fields
_LEASE = float(_DEFAULTS["transaction_lease_seconds"].default)
# The server's own schedule once it serves: the dead process's lease lapses (at most one lease
# after its last renewal, which came before it died), the reaper's next pass (every third of a
# lease) ends its MongoDB sessions, and the relay's next pass (its interval) applies the
# outbox, due at worst its delay after the commit: 7 s with the defaults (operations.md,
# "Crashes": "the lease, then the relay's 2 s").
SCHEDULE = (
    _LEASE
    + _LEASE / 3
    + float(_DEFAULTS["outbox_relay_after_seconds"].default)
    + float(_DEFAULTS["outbox_relay_interval_seconds"].default)
)
# The bound on that, measured on the server's own clock (its log) from the line saying it
# serves to its relay's last "relayed an outbox" — so its start-up and the test's polling do not
# count: halfway between the schedule and the lifetime. A restart that waited for MongoDB is
# past it; a machine is past it only if a few store round trips and two loops' passes took
# some 26 s beyond their schedule.
WITHIN_SECONDS = (SCHEDULE + TRANSACTION_LIFETIME) / 2
# Connection states a killed server leaves on its port (/proc/net/tcp): FIN_WAIT1, FIN_WAIT2,
# TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING.
LEFT_BEHIND = {"04", "05", "06", "07", "08", "09", "0B"}


def _relayed_seconds(server: ServerProcess) -> float | None:
    """Seconds from the server's "serving" line to its last "relayed an outbox" line, by the
    timestamps it wrote them with (a JSON log); None when it relayed nothing."""
    times: dict[str, float] = {}
    for line in server.log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # not one of its lines (a library's text on stderr)
        if isinstance(record, dict) and record.get("event") in ("serving", "relayed an outbox"):
            times[record["event"]] = datetime.datetime.fromisoformat(record["timestamp"]).timestamp()
    return times["relayed an outbox"] - times["serving"] if "relayed an outbox" in times else None


def test_a_learn_whose_process_died_inside_its_transaction_lands_within_seconds(stores: Stores, log_dir: Path) -> None:
    database = "kato_txn_" + uuid.uuid4().hex[:8]
    doomed, stub, node, sid = doomed_session(
        stores, log_dir, 0, database, CRASH_IN_TRANSACTION="1", KATO_LEARN_ACK="committed"
    )
    # The transaction it dies in is used after this moment: MongoDB cannot end it before
    # TRANSACTION_LIFETIME has passed from here.
    sent = time.monotonic()
    answered = stub.Learn(svc.LearnRequest(name=sid, request_id="learn-once"), timeout=30)  # acknowledged
    assert doomed.proc is not None and doomed.proc.wait(30) == CRASH_EXIT_CODE  # inside its MongoDB transaction
    survivor = new_server(*stores, log_dir, database, log_level="INFO").start(KATO_LOG_JSON="1")
    try:
        stub = survivor.stub()
        # Landed before MongoDB could have ended the transaction holding its KB: the
        # survivor's reaper and relay applied it, not MongoDB's clean-up (no margin here: the
        # limit is MongoDB's own). The time is read after the poll, not taken from its
        # deadline: a read of the pattern waits while the transaction holds the pattern.
        assert eventually(lambda: frequency(stub, answered.pattern) == 1, timeout=120), "applied"
        assert time.monotonic() < sent + TRANSACTION_LIFETIME, "before MongoDB ended the dead process's transaction"
        relayed = _relayed_seconds(survivor)
        assert relayed is not None and relayed < WITHIN_SECONDS, relayed  # on the relay's schedule
        # The KB takes other learns again, and the retry gets the recorded answer.
        other = stub.CreateSession(
            svc.CreateSessionRequest(session=svc.Session(knowledge_base=names.knowledge_base(node)))
        ).name
        for symbol in ("c", "d"):
            stub.Observe(svc.ObserveRequest(name=other, observation=pb.Observation(strings=[symbol])))
        learned = stub.Learn(svc.LearnRequest(name=other), timeout=120)
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
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a learner saw the server gone"
    restarted = new_server(*stores, log_dir, database, log_level="INFO")
    restarted.start(KATO_LEARN_ACK="committed", KATO_LOG_JSON="1")
    try:
        stub = restarted.stub()

        def all_there() -> bool:
            return all(frequency(stub, p) == 1 for p in acknowledged)

        # Polled until there (the deadline only bounds a hang); how soon is the relay's own
        # account: the learns the killed process had not applied were relayed on its schedule.
        assert eventually(all_there, timeout=120), "every acknowledged learn, once"
        relayed = _relayed_seconds(restarted)  # None: the killed process had applied them all
        assert relayed is None or relayed < WITHIN_SECONDS, relayed
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
