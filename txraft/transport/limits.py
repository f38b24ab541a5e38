"""
Limits on the connections a listening port holds, for the member port and the
HTTPS API alike: how many at once, how many from one source address, and how
long a connection may stay unproven.

Each connection passes three stages::

    accepted --(TLS handshake done, peer admitted by the ACL)--> admitted --(first request)--> established

- At accept, a connection over :attr:`ConnectionLimits.max_connections` for
  the port or :attr:`ConnectionLimits.max_per_source` for its source address
  is closed at once, before TLS, and counted (:attr:`ConnectionGuard.refused`).
- An accepted connection must be admitted within
  :attr:`~ConnectionLimits.handshake_timeout` seconds (a socket that never
  starts TLS, a handshake that stalls), and an admitted one must be
  established within :attr:`~ConnectionLimits.idle_timeout`; otherwise it is
  aborted and counted (:attr:`ConnectionGuard.timed_out`).  An established
  member connection is a peer link and may be idle between elections (a
  member's outgoing link speaks as soon as it is admitted, so that it is
  established even with nothing to send); the HTTP API's own idle timeout
  takes over on its connections.

The protocol running on a connection reports its progress with
:func:`mark_admitted` and :func:`mark_established`, which find the guard
under any TLS layer.  :func:`txraft.transport.tls.server_endpoint` puts a
guard under every port it makes::

    guard = ConnectionGuard("member", ConnectionLimits(), reactor)
    endpoint = server_endpoint(reactor, "10.0.0.1", 7001, credentials, guard)

Every connection costs the process a file descriptor: the limits of both
ports together, plus the member's outgoing links and log files, must stay
below its descriptor limit (``docs/deployment.md``, "Descriptors").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["ConnectionLimits", "ConnectionGuard", "GuardedFactory", "mark_admitted", "mark_established",
           "MEMBER_LIMITS", "HTTP_LIMITS", "descriptor_budget"]


@dataclass(frozen=True)
class ConnectionLimits:
    """
    :ivar max_connections: connections the port holds at once.
    :ivar max_per_source: connections from one source address at once.
    :ivar handshake_timeout: seconds from accept to admission (TLS handshake
        and ACL check; on a plain TCP port admission is immediate).
    :ivar idle_timeout: seconds from admission to the first request.
    """

    max_connections: int
    max_per_source: int
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0

    def __post_init__(self):
        for name in ("max_connections", "max_per_source"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("handshake_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


#: The member port: one link from each peer, a few more while they reconnect.
MEMBER_LIMITS = ConnectionLimits(max_connections=128, max_per_source=8)
#: The HTTP API: clients, a proxy or load balancer perhaps among them.
HTTP_LIMITS = ConnectionLimits(max_connections=512, max_per_source=128)


def descriptor_budget(*limits: ConnectionLimits, others: int = 64) -> int:
    """
    :returns: the descriptors a member may need: every port's cap, plus
        ``others`` for its outgoing links, log and snapshot files and the
        reactor's own.
    """
    return sum(limit.max_connections for limit in limits) + others


class ConnectionGuard:
    """
    The connections of one listening port, counted against its limits.

    :param name: the port's name in logs and metrics (``"member"``, ``"http"``).
    :param limits: the :class:`ConnectionLimits`.
    :param clock: an ``IReactorTime`` for the deadlines.

    :ivar open: connections now held.  Invariant: ``open`` is the sum of
        ``by_source`` and never exceeds ``limits.max_connections``.
    :ivar refused: reason (``"port"``, ``"source"``) -> connections closed at accept.
    :ivar timed_out: stage (``"handshake"``, ``"idle"``) -> connections aborted.
    """

    log = Logger()

    def __init__(self, name: str, limits: ConnectionLimits, clock: IReactorTime) -> None:
        self.name = name
        self.limits = limits
        self.clock = clock
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.refused = {"port": 0, "source": 0}
        self.timed_out = {"handshake": 0, "idle": 0}
        self._full = False

    def accept(self, host) -> bool:
        """Count a new connection from ``host``. :returns: ``False`` (counted as refused) when over a limit."""
        limits = self.limits
        if self.open >= limits.max_connections:
            reason = "port"
        elif self.by_source[host] >= limits.max_per_source:
            reason = "source"
        else:
            self.open += 1
            self.by_source[host] += 1
            self._full = False
            return True
        self.refused[reason] += 1
        if not self._full:
            # Once per episode, not once per connection: a flood must not flood the log too.
            self._full = True
            self.log.warn(
                "{port} port: refusing connections from {host}: {limit} (more are counted in "
                "txraft_connections_refused_total)",
                port=self.name, host=host,
                limit=(f"{limits.max_connections} connections open" if reason == "port"
                       else f"{limits.max_per_source} connections from that address"))
        return False

    def release(self, host):
        """A connection from ``host`` closed."""
        self.open -= 1
        self.by_source[host] -= 1
        if not self.by_source[host]:
            del self.by_source[host]


class _GuardedConnection(ProtocolWrapper):
    """One connection under a :class:`ConnectionGuard`: its deadlines and its place in the count."""

    _deadline = None
    stage = "accepted"

    def connectionMade(self):
        self._start_deadline("handshake", self.factory.guard.limits.handshake_timeout)
        ProtocolWrapper.connectionMade(self)

    def admitted(self):
        if self.stage == "accepted":
            self.stage = "admitted"
            self._start_deadline("idle", self.factory.guard.limits.idle_timeout)

    def established(self):
        self.admitted()
        if self.stage == "admitted":
            self.stage = "established"
            self._cancel_deadline()

    def _start_deadline(self, stage, seconds):
        self._cancel_deadline()
        self._deadline = self.factory.guard.clock.callLater(seconds, self._expired, stage)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self, stage):
        self._deadline = None
        guard = self.factory.guard
        guard.timed_out[stage] += 1
        peer = self.transport.getPeer()
        guard.log.info("{port} port: closing the connection from {peer}: {what} within {seconds} s",
                       port=guard.name, peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
                       what="no TLS handshake and admission" if stage == "handshake" else "no request",
                       seconds=getattr(guard.limits, f"{stage}_timeout"))
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_deadline()
        self.factory.guard.release(self.factory.hosts.pop(self))
        ProtocolWrapper.connectionLost(self, reason)


class GuardedFactory(WrappingFactory):
    """
    Wraps the factory of a listening port (outside TLS, so that refusals and
    deadlines cost no handshake) and applies ``guard`` to every connection.
    """

    protocol = _GuardedConnection
    noisy = False

    def __init__(self, guard, wrapped_factory):
        WrappingFactory.__init__(self, wrapped_factory)
        self.guard = guard
        self.hosts = {}

    def buildProtocol(self, addr):
        host = getattr(addr, "host", str(addr))
        if not self.guard.accept(host):
            return None  # the port closes the socket at once
        try:
            protocol = WrappingFactory.buildProtocol(self, addr)
        except BaseException:
            self.guard.release(host)
            raise
        self.hosts[protocol] = host
        return protocol


def _guarded(transport):
    # The chain is protocol -> [TLS layer ->] guard -> socket; a few steps at most.
    for _ in range(4):
        if isinstance(transport, _GuardedConnection):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def mark_admitted(transport: object) -> None:
    """The peer on ``transport`` passed the TLS handshake and the ACL (no-op on unguarded connections)."""
    connection = _guarded(transport)
    if connection is not None:
        connection.admitted()


def mark_established(transport: object) -> None:
    """The peer on ``transport`` sent a request: its connection is in use (no-op on unguarded connections)."""
    connection = _guarded(transport)
    if connection is not None:
        connection.established()
