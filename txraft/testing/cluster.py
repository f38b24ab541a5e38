"""
:class:`SimulatedCluster`: a whole Raft cluster in one process, on a fake clock.

Every member runs the real :class:`txraft.member.Raft` and
:class:`~txraft.core.raft.RaftCore`; only time (a ``task.Clock``), the network
(:class:`~txraft.transport.memory.MemoryNetwork`) and the disks
(:class:`~txraft.storage.memory.MemoryStorage`) are simulated.  All randomness
comes from one seed, so a schedule replays exactly.

Use it to test your own :class:`txraft.RaftClient`::

    cluster = SimulatedCluster(3, seed=7, client_factory=MyApp)
    cluster.start()
    leader = cluster.wait_for_leader()
    d = cluster.members[leader].append(b"command")
    cluster.run(1.0)
    assert cluster.clients[leader].state == ...
"""

from __future__ import annotations

import io
import json
import random

from twisted.internet.task import Clock

from txraft.client import RaftClient
from txraft.config import RaftConfig
from txraft.messages import Role
from txraft.member import Raft
from txraft.storage.memory import MemoryStorage
from txraft.transport.memory import MemoryNetwork


class RecordingClient(RaftClient):
    """
    A replicated application that remembers every command it applied, keyed
    by log index; ``apply()`` returns the index.  Its snapshots hold the
    whole record, so a member restored from a snapshot still knows the past.
    """

    def __init__(self):
        self.applied = {}  # index -> command
        self.last_index = 0
        self.restores = 0

    def apply(self, command, index):
        if index <= self.last_index:
            raise AssertionError(f"apply() at {index} after {self.last_index}: out of order")
        self.applied[index] = command
        self.last_index = index
        return index

    def save_snapshot(self, fileobj):
        record = {str(i): c.decode("latin-1") for i, c in self.applied.items()}
        fileobj.write(json.dumps({"last": self.last_index, "applied": record}).encode())

    def restore_snapshot(self, index, fileobj):
        data = json.load(io.TextIOWrapper(fileobj, encoding="utf-8"))
        self.applied = {int(i): c.encode("latin-1") for i, c in data["applied"].items()}
        if data["last"] > index:
            raise AssertionError(f"snapshot claims index {index} but holds commands up to {data['last']}")
        # The snapshot may end on a no-op entry, which apply() never sees.
        self.last_index = index
        self.restores += 1


class SimulatedCluster:
    """
    A cluster of ``size`` members on one simulated clock.

    :param int size: number of members.
    :param int seed: seeds every random choice (timeouts, delays, faults).
    :param client_factory: builds each member's application (a fresh one on
        every restart, which is then restored from storage).
    :param float heartbeat: seconds between heartbeats.
    :param int snapshot_threshold: entries between snapshots.
    :param delay: ``(low, high)`` one-way message delay in seconds.
    :param float drop_rate: chance a message or reply is lost.
    :param float duplicate_rate: chance a message is delivered twice.
    :param fsync_delay: simulated fsync latency in seconds.
    :param checker: an object with ``check(cluster)``, called after every
        step (see :class:`txraft.testing.checks.SafetyChecker`), or ``None``.
    :param wrap_transport: called with each member's transport whenever the
        member is built; the member uses what it returns (for example a
        :class:`txraft.metrics.CountingTransport`), kept in ``transports``.
    """

    def __init__(self, size=3, seed=0, client_factory=RecordingClient, heartbeat=0.05,
                 snapshot_threshold=1000, delay=(0.001, 0.005), drop_rate=0.0,
                 duplicate_rate=0.0, fsync_delay=0.002, checker=None, request_timeout=5.0,
                 wrap_transport=None):
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.network = MemoryNetwork(self.clock, random.Random(self.rng.random()), delay,
                                     drop_rate, duplicate_rate)
        self.ids = [f"127.0.0.{i + 1}:7000" for i in range(size)]
        #: The members of the bootstrap configuration; later ones joined.
        self.initial_ids = list(self.ids)
        self.client_factory = client_factory
        self.heartbeat = heartbeat
        self.snapshot_threshold = snapshot_threshold
        self.request_timeout = request_timeout
        self.fsync_delay = fsync_delay
        self.storages = {i: MemoryStorage(self.clock, fsync_delay) for i in self.ids}
        self.wrap_transport = wrap_transport
        self.transports = {}  # member id -> the transport its member was built with
        self.members = {}
        self.contacts = {}  # member id -> whom it asks to add it (members launched later)
        self.clients = {}
        self.crashed = set()
        self.checker = checker
        self.trace = []

    # -- building ------------------------------------------------------------

    def config(self, member_id):
        return RaftConfig(
            listen=member_id, heartbeat=self.heartbeat, snapshot_threshold=self.snapshot_threshold,
            rpc_timeout=max(4 * self.heartbeat, 0.1), request_timeout=self.request_timeout,
            snapshot_chunk=256,
        )

    def _launch(self, member_id):
        client = self.client_factory()
        transport = self.network.transport(member_id)
        if self.wrap_transport is not None:
            transport = self.wrap_transport(transport)
        self.transports[member_id] = transport
        member = Raft(self.config(member_id), client, reactor=self.clock, transport=transport,
                      storage=self.storages[member_id], rng=random.Random(self.rng.random()))
        if member_id in self.initial_ids:
            for other in self.initial_ids:
                member.add_member(other)
        else:
            member.join(self.contacts.get(member_id))
        self.members[member_id] = member
        self.clients[member_id] = client
        member.start()
        return member

    def start(self):
        """Start every member."""
        for member_id in self.ids:
            self._launch(member_id)
        self.note("start")

    def note(self, event):
        """Add ``event`` to the trace, stamped with the simulated time."""
        self.trace.append(f"{self.clock.seconds():9.4f} {event}")

    def launch_new_member(self, contacts=None):
        """
        Start a member with an empty disk that waits to be added (it is not
        part of any configuration until a member's ``add_member()`` commits).

        :param contacts: ids of members it asks to add it, as ``twistd raft
            --join`` does; ``None``: it only waits.
        :returns: its id.
        """
        member_id = f"127.0.0.{len(self.ids) + 1}:7000"
        self.ids.append(member_id)
        self.contacts[member_id] = contacts
        self.storages[member_id] = MemoryStorage(self.clock, self.fsync_delay)
        self.note(f"launch new member {member_id}")
        self._launch(member_id)
        return member_id

    def configuration(self):
        """
        :returns: the configuration of the leader of the highest term among
            running members (the cluster as it stands), or the latest one any
            running member holds when none leads.
        """
        leader = self.leader()
        if leader is not None:
            return self.members[leader].core.configuration
        cores = [self.members[i].core for i in self.running() if self.members[i].core is not None]
        best = max(cores, key=lambda c: (c.configuration_index, c.term), default=None)
        return best.configuration if best is not None else None

    def in_configuration(self):
        """:returns: ids of running members that belong to :meth:`configuration` (removed ones left out)."""
        configuration = self.configuration()
        ids = set(configuration.ids) if configuration is not None else set(self.ids)
        return [i for i in self.running() if i in ids]

    # -- faults ----------------------------------------------------------------

    def running(self):
        """:returns: ids of members that are not crashed."""
        return [i for i in self.ids if i not in self.crashed]

    def crash(self, member_id):
        """Power off ``member_id``: everything its storage had not made durable is lost."""
        self.note(f"crash {member_id}")
        self.members[member_id].crash()
        self.network.transport(member_id).stop()
        self.storages[member_id] = self.storages[member_id].crash()
        self.crashed.add(member_id)

    def restart(self, member_id):
        """Start a crashed member again from what its storage kept."""
        self.note(f"restart {member_id}")
        self.crashed.discard(member_id)
        return self._launch(member_id)

    def partition(self, *groups):
        self.note(f"partition {groups}")
        self.network.partition(*groups)

    def heal(self):
        self.note("heal")
        self.network.heal()

    # -- observing ---------------------------------------------------------------

    def leaders(self):
        """:returns: ids of running members that believe they lead."""
        return [i for i in self.running() if self.members[i].core.role is Role.LEADER]

    def leader(self):
        """:returns: the leader of the highest term among running members, or ``None``."""
        leaders = self.leaders()
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.members[i].core.term)

    def agreed_leader(self):
        """:returns: the leader every running member follows, or ``None``."""
        seen = set()
        for i in self.in_configuration():
            core = self.members[i].core
            seen.add(i if core.role is Role.LEADER else core.leader)
        if len(seen) == 1:
            (leader,) = seen
            if leader in self.members and leader not in self.crashed \
                    and self.members[leader].core.role is Role.LEADER:
                return leader
        return None

    # -- time ----------------------------------------------------------------------

    def _step(self, limit):
        """
        Advance to the next scheduled event, but not past ``limit``.

        ``task.Clock.advance`` runs every call due within the step with the
        clock already at the step's end, so coarse steps would quantize time
        and make random timeouts collide; stepping event by event keeps the
        simulated timing exact.
        """
        now = self.clock.seconds()
        calls = self.clock.calls  # task.Clock keeps them sorted by time
        target = min(calls[0].getTime(), limit) if calls else limit
        self.clock.advance(max(target - now, 0))
        self.check()

    def run(self, seconds):
        """Advance the clock by ``seconds``, checking invariants after every event."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self._step(end)

    def run_until(self, predicate, timeout):
        """
        Advance the clock until ``predicate()`` is true.

        :returns: whether it became true within ``timeout`` simulated seconds.
        """
        end = self.clock.seconds() + timeout
        while not predicate():
            if self.clock.seconds() >= end:
                return False
            self._step(end)
        return True

    def wait_for_leader(self, timeout=10.0):
        """:returns: the id of a leader all running members agree on, or ``None``."""
        self.run_until(lambda: self.agreed_leader() is not None, timeout)
        return self.agreed_leader()

    def converged(self):
        """
        :returns: whether every running member of the configuration has
            applied the same, complete log (removed members no longer hear
            from the leader).
        """
        running = self.in_configuration()
        if not running or self.agreed_leader() is None:
            return False
        leader = self.members[self.agreed_leader()].core
        target = leader.storage.last_index
        return all(self.members[i].core.applied_index == target
                   and self.members[i].core.storage.last_index == target for i in running)

    def check(self):
        if self.checker is not None:
            self.checker.check(self)

    def stop(self):
        """Stop every running member (cleanly) and cancel the clock's calls."""
        for member_id in self.running():
            self.members[member_id].stop()
        for call in self.clock.getDelayedCalls():
            call.cancel()
