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
    leader = cluster.wait_for_leader()          # an id from cluster.ids, or None
    outcomes = []
    cluster.members[leader].append(b"command").addBoth(outcomes.append)
    cluster.run(1.0)
    assert cluster.clients[leader].state == ...   # each member's MyApp
    cluster.stop()

Consume every append's outcome (``addBoth`` above): :meth:`~SimulatedCluster.crash`
and :meth:`~SimulatedCluster.stop` fail the pending ones with
:class:`~txraft.errors.Stopped`, and a failed Deferred nobody looks at is
logged as "Unhandled error in Deferred".  ``docs/testing.md`` shows a whole
test.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Protocol, Set, Tuple

from twisted.internet.task import Clock

from txraft.client import RaftClient
from txraft.config import RaftConfig
from txraft.core.membership import Configuration
from txraft.core.raft import RaftCore
from txraft.interfaces import ITransport
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

    def __init__(self) -> None:
        self.applied: Dict[int, bytes] = {}  # index -> command
        self.last_index = 0
        self.restores = 0

    def apply(self, command: bytes, index: int) -> int:
        """Record ``command`` at ``index``; :raises AssertionError: when applied out of order."""
        if index <= self.last_index:
            raise AssertionError(f"apply() at {index} after {self.last_index}: out of order")
        self.applied[index] = command
        self.last_index = index
        return index

    def save_snapshot(self, fileobj: BinaryIO) -> None:
        """Write every applied command to ``fileobj`` as JSON."""
        record = {str(i): c.decode("latin-1") for i, c in self.applied.items()}
        fileobj.write(json.dumps({"last": self.last_index, "applied": record}).encode())

    def restore_snapshot(self, index: int, fileobj: BinaryIO) -> None:
        """Replace the record with the one :meth:`save_snapshot` wrote."""
        data = json.load(io.TextIOWrapper(fileobj, encoding="utf-8"))
        self.applied = {int(i): c.encode("latin-1") for i, c in data["applied"].items()}
        if data["last"] > index:
            raise AssertionError(f"snapshot claims index {index} but holds commands up to {data['last']}")
        # The snapshot may end on a no-op entry, which apply() never sees.
        self.last_index = index
        self.restores += 1


class _Checker(Protocol):
    """What :class:`SimulatedCluster` asks of its ``checker``."""

    def check(self, cluster: SimulatedCluster) -> None: ...


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

    :ivar ids: the member ids, ``["127.0.0.1:7000", "127.0.0.2:7000", ...]``,
        in order.
    :ivar members: member id -> its :class:`txraft.Raft` (a new one after
        every :meth:`restart`; a crashed member's stays, stopped).
    :ivar clients: member id -> its application, built by ``client_factory``
        (a new one after every :meth:`restart`, restored from storage).
    :ivar crashed: the ids of crashed members (:meth:`running` lists the others).
    :ivar clock: the ``task.Clock`` every member runs on; advance it with
        :meth:`run` and :meth:`run_until`, which check after every event.
    :ivar network: the :class:`~txraft.transport.memory.MemoryNetwork`.
    :ivar storages: member id -> its :class:`~txraft.storage.memory.MemoryStorage`.
    :ivar trace: the faults injected so far, one line each, stamped with the
        simulated time.
    """

    def __init__(self, size: int = 3, seed: int = 0, client_factory: Callable[[], Any] = RecordingClient,
                 heartbeat: float = 0.05, snapshot_threshold: int = 1000,
                 delay: Tuple[float, float] = (0.001, 0.005), drop_rate: float = 0.0,
                 duplicate_rate: float = 0.0, fsync_delay: float = 0.002, checker: Optional[_Checker] = None,
                 request_timeout: float = 5.0,
                 wrap_transport: Optional[Callable[[ITransport], ITransport]] = None) -> None:
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
        self.transports: Dict[str, ITransport] = {}  # member id -> the transport its member was built with
        self.members: Dict[str, Raft] = {}
        # member id -> whom it asks to add it (members launched later)
        self.contacts: Dict[str, Optional[Iterable[str]]] = {}
        # Any: each test reaches its own application's attributes.
        self.clients: Dict[str, Any] = {}
        self.crashed: Set[str] = set()
        self.checker = checker
        self.trace: List[str] = []
        self._stopped = False

    # -- building ------------------------------------------------------------

    def config(self, member_id: str) -> RaftConfig:
        """:returns: the :class:`~txraft.RaftConfig` the cluster gives ``member_id``."""
        return RaftConfig(
            listen=member_id, heartbeat=self.heartbeat, snapshot_threshold=self.snapshot_threshold,
            rpc_timeout=max(4 * self.heartbeat, 0.1), request_timeout=self.request_timeout,
            snapshot_chunk=256,
        )

    def _launch(self, member_id: str) -> Raft:
        client = self.client_factory()
        transport: ITransport = self.network.transport(member_id)
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

    def start(self) -> None:
        """Start every member (once)."""
        if self.members or self._stopped:
            raise RuntimeError("start(): the cluster was already started")
        for member_id in self.ids:
            self._launch(member_id)
        self.note("start")

    def note(self, event: str) -> None:
        """Add ``event`` to the trace, stamped with the simulated time."""
        self.trace.append(f"{self.clock.seconds():9.4f} {event}")

    def launch_new_member(self, contacts: Optional[Iterable[str]] = None) -> str:
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

    def configuration(self) -> Optional[Configuration]:
        """
        :returns: the configuration of the leader of the highest term among
            running members (the cluster as it stands), or the latest one any
            running member holds when none leads.
        """
        leader = self.leader()
        if leader is not None:
            return self._core(leader).configuration
        cores = [self._core(i) for i in self.running() if self.members[i].core is not None]
        best = max(cores, key=lambda c: (c.configuration_index, c.term), default=None)
        return best.configuration if best is not None else None

    def in_configuration(self) -> List[str]:
        """:returns: ids of running members that belong to :meth:`configuration` (removed ones left out)."""
        configuration = self.configuration()
        ids = set(configuration.ids) if configuration is not None else set(self.ids)
        return [i for i in self.running() if i in ids]

    # -- faults ----------------------------------------------------------------

    def running(self) -> List[str]:
        """:returns: ids of members that are not crashed."""
        return [i for i in self.ids if i not in self.crashed]

    def _check_member(self, action: str, member_id: str, crashed: bool) -> None:
        """Refuse ``action`` on an unknown member, or one that is not (``crashed``) crashed."""
        if self._stopped:
            raise RuntimeError(f"{action}({member_id!r}): the cluster was stopped")
        if member_id not in self.storages:
            raise ValueError(f"{action}({member_id!r}): no such member; the members are {self.ids}")
        if (member_id in self.crashed) != crashed:
            state = "crashed; restart() it first" if member_id in self.crashed else "running; crash() it first"
            raise ValueError(f"{action}({member_id!r}): the member is {state}")

    def crash(self, member_id: str) -> None:
        """
        Power off a running member: everything its storage had not made
        durable is lost, and its pending ``append()`` Deferreds fail with
        :class:`~txraft.errors.Stopped`.

        :raises ValueError: if ``member_id`` is unknown or already crashed.
        """
        self._check_member("crash", member_id, crashed=False)
        self.note(f"crash {member_id}")
        self.members[member_id].crash()
        self.network.transport(member_id).stop()
        self.storages[member_id] = self.storages[member_id].crash()
        self.crashed.add(member_id)

    def restart(self, member_id: str) -> Raft:
        """
        Start a crashed member again from what its storage kept, with a new
        application from ``client_factory``.

        :returns: the new :class:`txraft.Raft` (also ``members[member_id]``).
        :raises ValueError: if ``member_id`` is unknown or running: a second
            instance on the same storage would corrupt it.
        """
        self._check_member("restart", member_id, crashed=True)
        self.note(f"restart {member_id}")
        self.crashed.discard(member_id)
        return self._launch(member_id)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network into ``groups`` of member ids that reach only each other."""
        self.note(f"partition {groups}")
        self.network.partition(*groups)

    def heal(self) -> None:
        """Undo every partition and cut."""
        self.note("heal")
        self.network.heal()

    # -- observing ---------------------------------------------------------------

    def _core(self, member_id: str) -> RaftCore:
        """:returns: the core of ``member_id``, which exists once the member was started."""
        core = self.members[member_id].core
        assert core is not None, f"{member_id} was never started"
        return core

    def leaders(self) -> List[str]:
        """:returns: ids of running members that believe they lead."""
        return [i for i in self.running() if self._core(i).role is Role.LEADER]

    def leader(self) -> Optional[str]:
        """:returns: the leader of the highest term among running members, or ``None``."""
        leaders = self.leaders()
        if not leaders:
            return None
        return max(leaders, key=lambda i: self._core(i).term)

    def agreed_leader(self) -> Optional[str]:
        """:returns: the leader every running member follows, or ``None``."""
        seen = set()
        for i in self.in_configuration():
            core = self._core(i)
            seen.add(i if core.role is Role.LEADER else core.leader)
        if len(seen) == 1:
            (leader,) = seen
            if leader in self.members and leader not in self.crashed \
                    and self._core(leader).role is Role.LEADER:
                return leader
        return None

    # -- time ----------------------------------------------------------------------

    def _step(self, limit: float) -> None:
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

    def run(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, checking invariants after every event."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self._step(end)

    def run_until(self, predicate: Callable[[], object], timeout: float) -> bool:
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

    def wait_for_leader(self, timeout: float = 10.0) -> Optional[str]:
        """
        Run the clock until every running member follows the same leader.

        :returns: that leader's id (one of :attr:`ids`), or ``None`` if they
            did not agree within ``timeout`` simulated seconds.
        """
        self.run_until(lambda: self.agreed_leader() is not None, timeout)
        return self.agreed_leader()

    def converged(self) -> bool:
        """
        :returns: whether every running member of the configuration has
            applied the same, complete log (removed members no longer hear
            from the leader).
        """
        running = self.in_configuration()
        leader_id = self.agreed_leader()
        if not running or leader_id is None:
            return False
        leader = self._core(leader_id)
        target = leader.storage.last_index
        return all(self._core(i).applied_index == target
                   and self._core(i).storage.last_index == target for i in running)

    def check(self) -> None:
        """Check the safety properties now (with the cluster's :class:`SafetyChecker`, if any)."""
        if self.checker is not None:
            self.checker.check(self)

    def stop(self) -> None:
        """
        Stop every running member (cleanly: their pending appends fail with
        :class:`~txraft.errors.Stopped`) and cancel the clock's calls.  Call it
        at the end of each test; the cluster cannot be used afterwards.
        """
        self._stopped = True
        for member_id in self.running():
            self.members[member_id].stop()
        # task.Clock hands out its own list, which cancel() shrinks: copy it,
        # or every other call survives.
        for call in list(self.clock.getDelayedCalls()):
            call.cancel()
