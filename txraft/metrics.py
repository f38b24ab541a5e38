"""
Prometheus metrics of one Raft member.

:class:`MemberMetrics` keeps its own :class:`prometheus_client.CollectorRegistry`
(several members may share a process) and renders it on the reactor thread::

    metrics = MemberMetrics(raft)             # after raft.start() has fired
    d = metrics.timed_append(command)         # observes the append latency
    text = metrics.render()                   # Prometheus text exposition

Gauges (term, role, commit/applied/last index) are read from
``raft.status()`` at scrape time, so they are never stale.  Counters that need
events (leader changes, snapshots installed from the leader) come from the
core, which the metrics observe (:class:`~txraft.interfaces.IRaftObserver`)
once the member has started.  Bytes replicated per peer are counted by
:class:`CountingTransport`, a wrapper stacked on the member's transport where
the transport is made, so the member sends through it from the start::

    transport = CountingTransport(AMPTransport.from_config(config, reactor))
    raft = Raft(config, app, transport=transport)
    metrics = MemberMetrics(raft, transport=transport)

(:class:`txraft.service.RaftService` does this.)  Without a counting
transport the replicated-bytes families are exposed empty.

Every name starts with ``txraft_``:

==========================================  =================================================
``txraft_term``                             current term
``txraft_role{role}``                       1 for this member's role, 0 for the others
``txraft_has_leader``                       1 when a leader is known
``txraft_commit_index``                     highest index known committed
``txraft_applied_index``                    highest index applied
``txraft_last_index``                       last index in the log
``txraft_snapshot_index``                   index of the latest snapshot (0: none)
``txraft_members``                          number of members
``txraft_elections_total``                  terms begun since this process started (each
                                            term opens with an election)
``txraft_leader_changes_total``             times a new leader became known
``txraft_snapshots_taken_total``            snapshots this member wrote of its own state
``txraft_snapshots_installed_total``        snapshots installed from the leader
``txraft_replicated_bytes_total{peer,kind}``  bytes of log entries (``kind="entries"``) and
                                            snapshot chunks (``kind="snapshot"``) sent
``txraft_replicated_entries_total{peer}``   log entries sent (retransmissions included)
``txraft_append_latency_seconds``           histogram: ``append()`` call to local apply
``txraft_append_failures_total{error}``     appends that failed, by exception class
``txraft_connections_open{port}``           connections held by the member and HTTP ports
``txraft_connections_refused_total{port,reason}``  connections closed at accept: over the
                                            port's cap (``reason="port"``) or the cap per
                                            source address (``reason="source"``)
``txraft_connections_timed_out_total{port,stage}``  connections aborted for not finishing the
                                            TLS handshake (``stage="handshake"``) or not
                                            sending a request (``stage="idle"``) in time
``txraft_uncommitted_entries``              commands the leader placed and has not committed
``txraft_uncommitted_bytes``                their bytes
``txraft_max_uncommitted_entries``          the bound beyond which appends fail with ``Busy``
``txraft_max_uncommitted_bytes``            the same bound in bytes
``txraft_append_queue``                     ``append()`` calls waiting for room in the
                                            leader's bounds (the admission queue)
``txraft_max_queued_appends``               its bound, beyond which they fail with ``Busy``
``txraft_appends_refused_busy_total``       commands refused with ``Busy`` (nothing stored)
``txraft_reactor_turn_seconds``             histogram: how late a timer due every 20 ms
                                            fired, i.e. the reactor turn it waited behind
                                            (once :meth:`MemberMetrics.watch_reactor` runs)
``txraft_reactor_turn_max_seconds``         the longest of those since the start
``txraft_reads_total{outcome}``             linearizable reads (``read_index()`` calls, which
                                            the HTTP API's ``GET`` makes) ended: ``ok``
                                            (served), ``no_quorum``, ``timeout``, ``stopped``
``txraft_fsync_seconds``                    histogram: how long each ``fsync`` of a log file
                                            took (disk store only; empty on other stores)
``txraft_snapshot_bytes``                   size of the latest snapshot taken or installed
                                            (0: none)
==========================================  =================================================

The storage knows nothing of metrics: the fsync histogram is fed through the
disk store's ``fsync_observers`` hook, and the snapshot size is read from the
store's current snapshot when one is taken or installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txraft import messages as m
from txraft.core.observers import RaftObserver
from txraft.interfaces import ITransport
from txraft.messages import Role

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from twisted.internet.interfaces import IReactorTime
    from twisted.python.failure import Failure

    from txraft.core.membership import Configuration
    from txraft.core.raft import RaftCore
    from txraft.member import Raft
    from txraft.messages import SnapshotMeta
    from txraft.transport.limits import ConnectionGuard

ROLES = (Role.LEADER, Role.FOLLOWER, Role.CANDIDATE, Role.STOPPED)

#: Append latency buckets, seconds: from a loopback cluster (~1 ms) to the
#: default request timeout (10 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: Reactor turn buckets, seconds: from nothing to well past an election timeout.
TURN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: fsync buckets, seconds: from a disk with a write cache (~50 us) through
#: SSDs and network block storage to a disk that stalls past an election timeout.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class TurnMonitor:
    """
    Measures how long the reactor's turns run, as Node.js's
    ``monitorEventLoopDelay`` does: a timer due every ``interval`` seconds
    fires late by as much as the turn it waited behind, so its lateness
    samples the turns' lengths and its largest lateness is the longest turn
    (to within ``interval``).

    :param clock: an ``IReactorTime``.
    :param histogram: a :class:`prometheus_client.Histogram` observing each lateness.
    :ivar longest: the largest lateness seen, in seconds.
    """

    interval = 0.02

    def __init__(self, clock: IReactorTime, histogram: Histogram) -> None:
        self.clock = clock
        self.histogram = histogram
        self.longest = 0.0
        self._due = 0.0  # set by start()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._due = self.clock.seconds()
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        now = self.clock.seconds()
        due = self._due + self.interval
        late = max(0.0, now - due)
        self._due = now
        self.histogram.observe(late)
        if late > self.longest:
            self.longest = late


@implementer(ITransport)
class CountingTransport:
    """
    An :class:`~txraft.interfaces.ITransport` that passes everything to
    ``transport`` and counts what it sends per peer.  Stack it on a
    transport before the member is built with it.

    :param transport: the :class:`~txraft.interfaces.ITransport` wrapped.

    :ivar entry_bytes: peer -> bytes of log entries sent in AppendEntries
        (``Entry.size()``, the same measure that bounds batches).
    :ivar snapshot_bytes: peer -> bytes of snapshot chunks sent.
    :ivar entries: peer -> number of log entries sent.
    """

    def __init__(self, transport: ITransport) -> None:
        self.transport = transport
        self.entry_bytes: Dict[str, int] = {}
        self.snapshot_bytes: Dict[str, int] = {}
        self.entries: Dict[str, int] = {}

    @property
    def address(self) -> Optional[str]:
        """The wrapped transport's ``address`` (the member id it listens as), if it has one."""
        return getattr(self.transport, "address", None)

    def start(self, handler: Any) -> defer.Deferred[Any]:
        return self.transport.start(handler)

    def send(self, peer: str, message: Any) -> defer.Deferred[Any]:
        if isinstance(message, m.AppendEntries) and message.entries:
            self.entry_bytes[peer] = self.entry_bytes.get(peer, 0) + sum(e.size() for e in message.entries)
            self.entries[peer] = self.entries.get(peer, 0) + len(message.entries)
        elif isinstance(message, m.InstallSnapshot):
            self.snapshot_bytes[peer] = self.snapshot_bytes.get(peer, 0) + len(message.data)
        return self.transport.send(peer, message)

    def follow_configuration(self, configuration: Configuration) -> None:
        """Pass a membership change to the wrapped transport, if it follows them."""
        follow = getattr(self.transport, "follow_configuration", None)
        if follow is not None:
            follow(configuration)

    def stop(self) -> defer.Deferred[Any]:
        return self.transport.stop()


class MemberMetrics(RaftObserver):
    """
    The metrics of one member, in a registry of their own.  It observes the
    member's core for the event counters.

    :param raft: the :class:`txraft.member.Raft`.  Event counters attach to
        its core when it has started: at construction if it has, otherwise at
        the first scrape or :meth:`attach` call.
    :param registry: a :class:`prometheus_client.CollectorRegistry`; a new
        one by default.
    :param bool count_bytes: expose the bytes replicated per peer counted by
        ``transport``.
    :param transport: the :class:`CountingTransport` the member was built
        with, or ``None`` (nothing is counted).  The metrics never replace
        the transport of a member.
    """

    log = Logger()

    def __init__(self, raft: Raft, registry: Optional[CollectorRegistry] = None, count_bytes: bool = True,
                 transport: Optional[CountingTransport] = None) -> None:
        if transport is not None and not isinstance(transport, CountingTransport):
            raise TypeError(f"transport must be a CountingTransport, not {type(transport).__name__}")
        self.raft = raft
        self.registry = registry if registry is not None else CollectorRegistry()
        self.count_bytes = count_bytes
        self.append_latency = Histogram(
            "txraft_append_latency_seconds",
            "Seconds from an append() through this member's API to its apply() here",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.append_failures = Counter(
            "txraft_append_failures_total", "append() calls through this member's API that failed",
            ["error"], registry=self.registry)
        self.reactor_turns = TurnMonitor(raft.reactor, Histogram(
            "txraft_reactor_turn_seconds",
            "Seconds a timer due every 20 ms fired late: the reactor turn it waited behind",
            buckets=TURN_BUCKETS, registry=self.registry))
        self.fsync_seconds = Histogram(
            "txraft_fsync_seconds", "Seconds each fsync of a log file took (disk store only)",
            buckets=FSYNC_BUCKETS, registry=self.registry)
        # Event counters, updated as an observer of the core once attached.
        self.leader_changes = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        #: Bytes of the latest snapshot taken or installed (0: none).
        self.snapshot_bytes = 0
        self._core: Optional[RaftCore] = None
        self._first_term: Optional[int] = None
        self.transport = transport if count_bytes else None
        #: The :class:`~txraft.transport.limits.ConnectionGuard` of each port watched.
        self.ports: List[ConnectionGuard] = []
        self.registry.register(_StatusCollector(self))
        self.attach()

    def watch_reactor(self) -> None:
        """Start measuring the reactor's turns (``txraft_reactor_turn_seconds``); :meth:`stop` ends it."""
        self.reactor_turns.start()

    def stop(self) -> None:
        """Stop the reactor turn monitor (nothing else needs stopping)."""
        self.reactor_turns.stop()

    # -- attaching to the core -----------------------------------------------

    def attach(self) -> bool:
        """
        Observe the member's core if it has started and is not observed yet.

        :returns: whether the metrics are attached.
        """
        core = getattr(self.raft, "core", None)
        if core is None:
            return False
        if core is self._core:
            return True
        self._core = core
        self._first_term = core.term
        core.add_observer(self)
        storage = getattr(core, "storage", None)
        observers = getattr(storage, "fsync_observers", None)
        if observers is not None:
            observers.append(self.fsync_seconds.observe)
        # A snapshot restored at start came before we observed the core.
        self._measure_snapshot()
        found = getattr(core, "transport", None)
        if self.transport is None and self.count_bytes and isinstance(found, CountingTransport):
            # Built by txraft.defaults: the member already sends through a
            # counting transport; read it, never replace it.
            self.transport = found
        return True

    def watch_port(self, guard: Optional[ConnectionGuard]) -> None:
        """Expose the connection counts of a :class:`~txraft.transport.limits.ConnectionGuard`."""
        if guard is not None and guard not in self.ports:
            self.ports.append(guard)

    def leader_changed(self, leader: str, term: int) -> None:
        """:class:`~txraft.interfaces.IRaftObserver`: count a newly known leader."""
        if leader:
            self.leader_changes += 1

    def restored(self, meta: SnapshotMeta) -> None:
        """:class:`~txraft.interfaces.IRaftObserver`: count a snapshot installed, and measure it."""
        self.snapshots_installed += 1
        self._measure_snapshot()

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """:class:`~txraft.interfaces.IRaftObserver`: count a snapshot of our own state, and measure it."""
        self.snapshots_taken += 1
        self._measure_snapshot()

    def _measure_snapshot(self) -> None:
        # Once per snapshot, not per scrape: the store may be closed by then.
        storage = getattr(self._core, "storage", None)
        try:
            source = storage.open_snapshot() if storage is not None else None
        except Exception:
            self.log.failure("could not measure the latest snapshot")
            return
        if source is not None:
            try:
                self.snapshot_bytes = source.size
            finally:
                source.close()

    # -- observing appends ---------------------------------------------------------

    def observe_append(self, seconds: float) -> None:
        """Record one append that took ``seconds`` from call to local apply."""
        self.append_latency.observe(seconds)

    def timed_append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """
        ``raft.append(command, timeout)``, observing its latency (or counting
        its failure by exception class).

        :returns: the Deferred of :meth:`txraft.member.Raft.append`, unchanged.
        """
        clock = self.raft.reactor
        started = clock.seconds()
        d = self.raft.append(command, timeout)

        def succeeded(result: Any) -> Any:
            self.observe_append(clock.seconds() - started)
            return result

        def failed(failure: Failure) -> Failure:
            self.append_failures.labels(type(failure.value).__name__).inc()
            return failure

        return d.addCallbacks(succeeded, failed)

    # -- exposition ----------------------------------------------------------------

    def render(self) -> bytes:
        """:returns: the Prometheus text exposition of this member (bytes)."""
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class _StatusCollector:
    """Reads the member's status at scrape time."""

    def __init__(self, metrics: MemberMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        metrics.attach()
        status = metrics.raft.status()
        core = metrics._core

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("txraft_term", "Current term", status.term)
        roles = GaugeMetricFamily("txraft_role", "1 for this member's current role", labels=["role"])
        for role in ROLES:
            roles.add_metric([role.value], 1 if status.role == role else 0)
        yield roles
        yield gauge("txraft_has_leader", "1 when this member knows a leader", 1 if status.leader else 0)
        yield gauge("txraft_commit_index", "Highest log index known committed", status.commit_index)
        yield gauge("txraft_applied_index", "Highest log index applied", status.applied_index)
        yield gauge("txraft_last_index", "Last index in the log", status.last_index)
        yield gauge("txraft_members", "Members of the cluster", len(status.members))
        yield gauge("txraft_snapshot_index", "Index of the latest snapshot (0: none)",
                    core.snapshot_index if core is not None else 0)

        first = metrics._first_term if metrics._first_term is not None else status.term
        yield CounterMetricFamily("txraft_elections", "Terms begun (elections held) since this member started",
                                  value=max(0, status.term - first))
        yield CounterMetricFamily("txraft_leader_changes", "Times a new leader became known",
                                  value=metrics.leader_changes)
        yield CounterMetricFamily("txraft_snapshots_taken", "Snapshots of this member's own state",
                                  value=metrics.snapshots_taken)
        yield CounterMetricFamily("txraft_snapshots_installed", "Snapshots installed from the leader",
                                  value=metrics.snapshots_installed)

        pending, size = core.uncommitted() if core is not None else (0, 0)
        config = metrics.raft.config
        yield gauge("txraft_uncommitted_entries", "Commands the leader placed and has not committed", pending)
        yield gauge("txraft_uncommitted_bytes", "Bytes of commands the leader placed and has not committed", size)
        yield gauge("txraft_max_uncommitted_entries",
                    "Uncommitted commands beyond which append() fails at once with Busy",
                    config.max_uncommitted_entries)
        yield gauge("txraft_max_uncommitted_bytes",
                    "Uncommitted bytes beyond which append() fails at once with Busy",
                    config.max_uncommitted_bytes)
        yield gauge("txraft_append_queue", "append() calls waiting in this member's admission queue",
                    metrics.raft.queued_appends)
        yield gauge("txraft_max_queued_appends", "Queued append() calls beyond which append() fails with Busy",
                    config.max_queued_appends)
        yield CounterMetricFamily("txraft_appends_refused_busy",
                                  "Commands this member, as leader, refused with Busy (nothing stored)",
                                  value=core.busy_refusals if core is not None else 0)
        yield gauge("txraft_reactor_turn_max_seconds", "The longest reactor turn measured since the start",
                    metrics.reactor_turns.longest)
        reads = CounterMetricFamily("txraft_reads", "Linearizable reads (read_index() calls) ended, by outcome",
                                    labels=["outcome"])
        for outcome, count in getattr(metrics.raft, "reads", {}).items():
            reads.add_metric([outcome], count)
        yield reads
        yield gauge("txraft_snapshot_bytes", "Bytes of the latest snapshot taken or installed (0: none)",
                    metrics.snapshot_bytes)

        sent = CounterMetricFamily("txraft_replicated_bytes", "Bytes replicated to each peer",
                                   labels=["peer", "kind"])
        entries = CounterMetricFamily("txraft_replicated_entries", "Log entries sent to each peer",
                                      labels=["peer"])
        transport = metrics.transport
        if transport is not None:
            for peer in status.members:
                if peer == status.id:
                    continue
                sent.add_metric([peer, "entries"], transport.entry_bytes.get(peer, 0))
                sent.add_metric([peer, "snapshot"], transport.snapshot_bytes.get(peer, 0))
                entries.add_metric([peer], transport.entries.get(peer, 0))
        yield sent
        yield entries
        yield from _connection_families(metrics.ports)


def _connection_families(guards: Iterable[ConnectionGuard]) -> Tuple[Metric, Metric, Metric]:
    opened = GaugeMetricFamily("txraft_connections_open", "Connections held by each port", labels=["port"])
    refused = CounterMetricFamily("txraft_connections_refused", "Connections closed at accept, over a cap",
                                  labels=["port", "reason"])
    timed_out = CounterMetricFamily("txraft_connections_timed_out",
                                    "Connections aborted for not finishing the TLS handshake or sending a request in time",
                                    labels=["port", "stage"])
    for guard in guards:
        opened.add_metric([guard.name], guard.open)
        for reason, count in guard.refused.items():
            refused.add_metric([guard.name, reason], count)
        for stage, count in guard.timed_out.items():
            timed_out.add_metric([guard.name, stage], count)
    return opened, refused, timed_out
