"""
Whole members (:class:`txraft.member.Raft`) on :class:`DiskStorage`: snapshots
taken and restored (seed TestSnapshot), a wiped member brought back through
a snapshot sent by the leader (seed TestRemoteSnapshot), and a member process
killed with SIGKILL again and again while it appends, which must never lose an
entry it acknowledged as committed.

Members talk over the in-memory network on the real reactor, so only the
storage is real.  Conditions are awaited by checking them once per reactor
tick with a deadline, never by sleeping a fixed time.

Run as a script (``python -m tests.storage.test_disk_cluster LOG_DIR PREFIX``)
this module is the member process of the SIGKILL test.
"""

import io
import json
import os
import shutil
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from txraft.config import RaftConfig
from txraft.core.snapshot_header import read_header
from txraft.member import Raft
from txraft.messages import EntryKind
from txraft.storage.disk import DiskStorage
from txraft.testing import RecordingClient
from txraft.transport.memory import MemoryNetwork

try:
    from tests.storage.helpers import deferred_test
except ImportError:  # run as the member script
    pass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@defer.inlineCallbacks
def wait_for(predicate, timeout=30.0, what="condition", members=()):
    """
    Check ``predicate`` once per reactor tick until it holds; fail after
    ``timeout`` seconds, showing the status of ``members``.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            statuses = "".join(f"\n  {m.status()}" for m in members)
            raise AssertionError(f"timed out waiting for {what}{statuses}")
        yield task.deferLater(reactor, 0.01, lambda: None)


def snapshot_pairs(log_dir):
    """:returns: the snapshot names in ``log_dir`` that have their log."""
    names = set(os.listdir(log_dir))
    return sorted(n for n in names if n.endswith(".snap") and n[: -len(".snap")] + ".log" in names)


class Cluster:
    """Builds members on one in-memory network and stops them all after the test."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.network = MemoryNetwork(reactor)
        self.members = []

    def log_dir(self, member_id):
        return str(self.tmp_path / member_id.replace(":", "_"))

    def member(self, member_id, peers=(), threshold=10000, retain=None):
        config = RaftConfig(
            log_dir=self.log_dir(member_id),
            listen=member_id,
            heartbeat=0.05,
            snapshot_threshold=threshold,
            # Through the default storage (txraft.defaults), as twistd builds it.
            trailing_entries=0 if retain is None else retain,
            insecure=True,
        )
        client = RecordingClient()
        member = Raft(config, client, reactor=reactor, transport=self.network.transport(member_id))
        for peer in peers:
            member.add_member(peer)
        self.members.append(member)
        return member, client

    def stop(self):
        return defer.gatherResults([defer.maybeDeferred(m.stop) for m in self.members])


@pytest.fixture
def cluster(tmp_path):
    built = Cluster(tmp_path)
    yield built
    pytest_twisted.blockon(built.stop())
    # Let messages already in flight to stopped members be dropped.
    pytest_twisted.blockon(wait_for(lambda: not reactor.getDelayedCalls(), 5, "in-flight messages"))


class TestSnapshot:
    """Threshold 1: snapshots are taken, and a restart restores the same state (seed TestSnapshot)."""

    @deferred_test
    def test_snapshot_taken_and_restored(self, cluster):
        member_id = "127.0.0.1:7001"
        log_dir = cluster.log_dir(member_id)
        member, client = cluster.member(member_id, threshold=1)
        yield member.start()
        for command in (b"string1", b"string2", b"string3"):
            yield member.append(command)
        yield wait_for(lambda: snapshot_pairs(log_dir), what="a snapshot and its log", members=[member])
        yield member.stop()
        # Only the newest snapshot and the generation before it remain.
        assert 1 <= len([n for n in os.listdir(log_dir) if n.endswith(".snap")]) <= 2

        again, restored = cluster.member(member_id, threshold=1)
        yield again.start()
        assert restored.restores == 1
        yield wait_for(
            lambda: restored.applied == client.applied, what="the restarted member to catch up", members=[again]
        )
        assert sorted(restored.applied.values()) == [b"string1", b"string2", b"string3"]
        # It keeps working after the restart.
        yield again.append(b"string4")
        assert b"string4" in restored.applied.values()


class TestRemoteSnapshot:
    """A member whose disk was wiped catches up through the leader's snapshot (seed TestRemoteSnapshot)."""

    @deferred_test
    def test_wiped_member_catches_up_by_snapshot(self, cluster):
        ids = [f"127.0.0.1:{7011 + i}" for i in range(3)]
        members, clients = [], []
        for member_id in ids:
            member, client = cluster.member(member_id, peers=ids, threshold=30)
            members.append(member)
            clients.append(client)
        yield defer.gatherResults([m.start() for m in members])
        for i in range(100):
            yield members[1].append(b"string%d" % i)

        def agree(clients):
            return all(c.applied == clients[0].applied for c in clients) and len(clients[0].applied) == 100

        yield wait_for(lambda: agree(clients), what="applied agreement", members=members)
        assert all(snapshot_pairs(cluster.log_dir(i)) for i in ids)

        yield members[0].stop()
        shutil.rmtree(cluster.log_dir(ids[0]))
        fresh, fresh_client = cluster.member(ids[0], peers=ids, threshold=30)
        yield fresh.start()
        clients[0] = fresh_client
        yield wait_for(lambda: agree(clients), what="the wiped member to catch up", members=[fresh] + members[1:])
        assert fresh_client.restores >= 1
        assert snapshot_pairs(cluster.log_dir(ids[0]))


class TestRetainedEntries:
    """Entries kept before the snapshot let a lagging follower catch up without one."""

    @deferred_test
    def test_lagging_follower_is_sent_entries_not_the_snapshot(self, cluster):
        ids = [f"127.0.0.1:{7021 + i}" for i in range(3)]
        members, clients = [], []
        for member_id in ids:
            member, client = cluster.member(member_id, peers=ids, threshold=30, retain=60)
            members.append(member)
            clients.append(client)
        yield defer.gatherResults([m.start() for m in members])
        yield members[0].append(b"first")
        leader = next(i for i, m in enumerate(members) if m.status().role == "leader")
        lagging = (leader + 1) % 3
        cluster.network.isolate(ids[lagging], ids)
        for i in range(45):
            yield members[leader].append(b"while cut off %d" % i)
        log_dir = cluster.log_dir(ids[leader])
        yield wait_for(lambda: snapshot_pairs(log_dir), what="a snapshot on the leader", members=members)
        leader_storage = members[leader].core.storage
        source = leader_storage.open_snapshot()
        snapshot_index = source.meta.index
        source.close()
        # The follower lags behind the snapshot, but not behind the retained entries.
        assert leader_storage.first_index <= clients[lagging].last_index + 1 < snapshot_index
        cluster.network.heal()

        def agree():
            return all(c.applied == clients[0].applied for c in clients) and len(clients[0].applied) == 46

        yield wait_for(agree, what="the lagging follower to catch up", members=members)
        assert clients[lagging].restores == 0


class Child(protocol.ProcessProtocol):
    """A member process; it is sent SIGKILL once it has acknowledged ``kill_after`` commands."""

    def __init__(self, kill_after):
        self.kill_after = kill_after
        self.acked = []
        self.killed = False
        self.stderr = b""
        self._buffer = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"ack "):
                self.acked.append(line[4:])
        if len(self.acked) >= self.kill_after and not self.killed:
            self.killed = True
            self.transport.signalProcess("KILL")

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.reason = reason
        self.ended.callback(None)


@defer.inlineCallbacks
def stored_commands(log_dir):
    """:returns: every command in the snapshot or the log of ``log_dir``."""
    storage = DiskStorage(log_dir, reactor=reactor)
    yield storage.open()
    try:
        found = set()
        source = storage.open_snapshot()
        if source is not None:
            fileobj = source.open()
            try:
                read_header(fileobj)
                state = json.load(io.TextIOWrapper(fileobj, encoding="utf-8"))
                found.update(c.encode("latin-1") for c in state["applied"].values())
            finally:
                source.close()
        for e in storage.entries(storage.first_index, storage.last_index + 1):
            if e.kind == EntryKind.COMMAND:
                found.add(e.data)
        return found
    finally:
        yield storage.close()


class TestKill9:
    @deferred_test
    def test_acknowledged_entries_survive_sigkill(self, tmp_path):
        log_dir = str(tmp_path / "member")
        acked = []
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for round, kill_after in enumerate([20, 45, 70, 33, 90]):
            child = Child(kill_after)
            reactor.spawnProcess(
                child,
                sys.executable,
                [sys.executable, "-m", "tests.storage.test_disk_cluster", log_dir, f"r{round}"],
                env=env,
                path=REPO,
            )
            yield child.ended
            assert child.killed, f"member process died by itself:\n{child.stderr.decode(errors='replace')}"
            acked.extend(child.acked)
            stored = yield stored_commands(log_dir)
            missing = [c for c in acked if c not in stored]
            assert not missing, f"round {round}: acknowledged but lost: {missing[:10]}"
        assert len(acked) >= sum([20, 45, 70, 33, 90])
        # Snapshots were taken along the way, so recovery went through them too.
        assert snapshot_pairs(log_dir)


def _member_process(log_dir, prefix):
    """Append commands forever, eight at a time, printing each one once it is applied."""
    config = RaftConfig(
        log_dir=log_dir, listen="127.0.0.1:7099", heartbeat=0.02, snapshot_threshold=25, insecure=True
    )
    member = Raft(config, RecordingClient(), reactor=reactor, transport=MemoryNetwork(reactor).transport(config.listen))

    @defer.inlineCallbacks
    def appender(lane):
        for i in range(10**9):
            command = f"{prefix}-{lane}-{i}".encode()
            yield member.append(command)
            sys.stdout.write(f"ack {command.decode()}\n")
            sys.stdout.flush()

    @defer.inlineCallbacks
    def main(_):
        yield member.start()
        yield defer.gatherResults([appender(lane) for lane in range(8)])

    task.react(main)


if __name__ == "__main__":
    _member_process(sys.argv[1], sys.argv[2])
