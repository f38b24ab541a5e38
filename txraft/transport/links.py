"""
Connections between members: one reconnecting outgoing link per peer
(:class:`PeerLink`), its reconnection policy, and the endpoint a member
dials a peer with.  (The listening endpoint comes from
:func:`txraft.transport.tls.server_endpoint`, shared with the HTTPS API.)

A link is a :class:`~twisted.application.internet.ClientService` that keeps
one connection to its peer up, reconnecting after ``initial_delay`` and
backing off to at most ``max_delay`` (:func:`retry_policy`); Twisted's
default back-off grows to 60 s, far too slow for Raft.  A connection counts
as made only when its protocol's ``ready`` Deferred fires, that is after the
TLS handshake and the ACL check: an endpoint's ``connect()`` fires before the
handshake, and a refused peer would otherwise look connected until its first
call.

While the peer is unreachable, :meth:`PeerLink.connection` fails at once
(nothing queues up); while an attempt is in progress it waits for that
attempt only.

A link logs when its connection comes up, when it is lost and when the peer
becomes unreachable (not every retry), each naming the peer by member id and
certificate name, as text and as the fields ``member``, ``peer``,
``peer_name`` (and ``reason``).
"""

from __future__ import annotations

import ipaddress

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from txraft import errors as e

__all__ = ["PeerLink", "retry_policy", "client_endpoint"]


def retry_policy(initial_delay, max_delay, rng):
    """
    :returns: a ClientService ``retryPolicy``: ``initial_delay`` seconds, then
        doubling up to ``max_delay``, plus up to ``initial_delay`` of jitter
        drawn from ``rng`` (a ``random.Random``) so that members restarted
        together do not reconnect in lockstep.
    """
    return backoffPolicy(
        initialDelay=initial_delay, maxDelay=max_delay, factor=2.0, jitter=lambda: rng.random() * initial_delay
    )


def _is_ip(host, version):
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def client_endpoint(reactor, host, port, *, bind_host, timeout):
    """
    :returns: a TCP client endpoint to ``host:port`` whose connections leave
        from ``bind_host`` (the member's own listen host, so that the peer
        sees the member's address), unless it is a wildcard.
    """
    bind = None if bind_host in ("0.0.0.0", "::", "") else (bind_host, 0)
    if _is_ip(host, 4):
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    if _is_ip(host, 6):
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        link = self.link
        link.connecting = link.build_protocol(link)
        return link.connecting


class _WatchedEndpoint:
    """Tells its link when a connection attempt starts and when it fails."""

    def __init__(self, endpoint, link):
        self.endpoint = endpoint
        self.link = link

    def __repr__(self):
        # ClientService names its endpoint in "Scheduling retry N to connect ...".
        return self.link.describe()

    def connect(self, factory):
        self.link.attempting = True

        def failed(failure):
            self.link.attempting = False
            self.link.last_error = failure.getErrorMessage()
            self.link.unreachable_now()
            self.link.wake()
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class PeerLink:
    """
    The one outgoing connection to one peer.

    The protocols it builds keep it informed: each has a ``ready`` Deferred
    (fired once the peer is admitted, failed if the connection ends first) and
    calls :meth:`admitted`, :meth:`lost` and :meth:`wake` as its connection
    changes.

    :param peer: the peer's member id.
    :param endpoint: the client endpoint reaching it (:func:`client_endpoint`).
    :param build_protocol: ``build_protocol(link)`` -> a new protocol for a
        connection of this link.
    :param expected_name: the certificate name the peer must carry, if the
        member list gives one.
    :param tls_options: client TLS options, or ``None`` for plain TCP.
    :param retry_policy: a ClientService retry policy (:func:`retry_policy`).
    :param clock: an ``IReactorTime`` for the reconnection delays.
    :param member: this member's id, for the log.

    Invariant: ``protocol`` is an admitted, connected protocol or ``None``;
    ``attempting`` is true from the start of a connection attempt until it is
    admitted or fails.
    """

    log = Logger()

    def __init__(self, peer, endpoint, build_protocol, *, expected_name, tls_options, retry_policy, clock,
                 member=None):
        self.peer = peer
        self.expected_name = expected_name
        self.member = member
        self._reachable = None  # for the log: True, False, or None before the first outcome
        self._tls = tls_options is not None
        self.build_protocol = build_protocol
        self.protocol = None
        self.connecting = None
        self.attempting = False
        self.last_error = "not connected yet"
        self._waiters = []
        factory = _ClientFactory(self)
        if tls_options is not None:
            factory = TLSMemoryBIOFactory(tls_options, True, factory)
        self.service = ClientService(
            _WatchedEndpoint(endpoint, self),
            factory,
            retryPolicy=retry_policy,
            clock=clock,
            prepareConnection=lambda _: self.connecting.ready,
        )

    def start(self):
        """Start connecting, and keep the connection up until :meth:`stop`."""
        self.service.startService()

    def describe(self):
        """:returns: the peer as the log names it: ``member ID (certificate NAME)``, or ``member ID`` without TLS."""
        if not self._tls:
            return f"member {self.peer}"
        name = self.expected_name or "any name the ACL admits"
        return f"member {self.peer} (certificate {name})"

    def _log(self, level, text, **fields):
        level(f"{{member}}: {text}", member=self.member or "?", peer=self.peer,
              peer_name=self.expected_name or "", peer_description=self.describe(), **fields)

    def admitted(self, protocol):
        """``protocol``'s peer passed the handshake and the ACL: use it."""
        self.protocol = protocol
        self.attempting = False
        self._reachable = True
        self._log(self.log.info, "connected to {peer_description}")

    def lost(self, protocol, reason):
        """``protocol``'s connection ended (``reason``, a Failure)."""
        if self.protocol is protocol:
            self.protocol = None
            if self.service.running:
                self._log(self.log.warn, "lost the connection to {peer_description}: {reason}",
                          reason=reason.getErrorMessage())
        if protocol is self.connecting:
            self.attempting = False
            self.last_error = reason.getErrorMessage()
            if protocol is not self.protocol and not protocol.admitted:
                self.unreachable_now()

    def unreachable_now(self):
        """An attempt failed: log it once per stretch of failures (ClientService logs each retry)."""
        if self._reachable is not False and self.service.running:
            self._log(self.log.warn, "cannot reach {peer_description}: {reason}; retrying", reason=self.last_error)
        self._reachable = False

    def connection(self):
        """:returns: a Deferred firing with an admitted protocol, or failing with TransportError."""
        if self.protocol is not None:
            return defer.succeed(self.protocol)
        if not self.attempting:
            return defer.fail(self.unreachable())
        waiter = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def unreachable(self):
        """:returns: the TransportError saying why the peer cannot be reached."""
        return e.TransportError(f"member {self.peer} is unreachable: {self.last_error}")

    def wake(self):
        """Settle the callers waiting for a connection attempt that has now ended."""
        if self.attempting and self.protocol is None:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if self.protocol is not None:
                waiter.callback(self.protocol)
            else:
                waiter.errback(self.unreachable())

    def stop(self):
        """
        Stop reconnecting and close the connection; callers still waiting fail
        with :class:`~txraft.errors.Stopped`.

        :returns: a Deferred firing when the connection is closed.
        """
        self.attempting = False
        self.protocol = None
        self.last_error = "the transport was stopped"
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(e.Stopped("the transport was stopped"))
        return self.service.stopService()
