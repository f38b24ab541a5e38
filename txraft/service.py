"""
:class:`RaftService`: one txraft member as a Twisted service.

It builds a :class:`txraft.member.Raft` from a :class:`txraft.RaftConfig`
(disk storage in ``config.log_dir``, AMP over mutual TLS, or plain TCP when
``config.insecure``), starts it with the service and stops it, flushing the
log, when the service stops.  With ``http=(host, port)`` it also serves the
key-value HTTP API (:func:`txraft.http.create_api`): HTTPS that requires a
client certificate from the cluster CA whose name is in ``client_acl``, or
plain HTTP when the member is insecure.

It is an ordinary :class:`~twisted.application.service.MultiService`, so it
fits in any Twisted application::

    from twisted.application import service
    from txraft import RaftConfig
    from txraft.service import RaftService

    application = service.Application("counter")
    config = RaftConfig(listen="10.0.0.1:7001", log_dir="/var/lib/counter",
                        cert="member1.pem", key="member1.key", ca="ca.pem",
                        acl=("member1", "member2", "member3"))
    raft_service = RaftService(config, Counter(), members=["10.0.0.2:7001", "10.0.0.3:7001"])
    raft_service.setServiceParent(application)

``twistd raft`` (:mod:`txraft.tap`) makes one from its command line.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, NoReturn, Optional, Set, Tuple, Union, cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener, IListeningPort, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource
from zope.interface import implementer

from txraft.config import RaftConfig
from txraft.errors import CorruptLog, RaftError
from txraft.http import BoundedRequest
from txraft.interfaces import IRaftClient, IStorage, ITransport
from txraft.member import Raft
from txraft.transport.limits import HTTP_LIMITS, ConnectionGuard, ConnectionLimits, descriptor_budget, \
    mark_established
from txraft.transport.tls import AccessPolicy, ACLCheckedProtocolMixin, TLSCredentials, server_endpoint

if TYPE_CHECKING:
    from txraft.metrics import CountingTransport, MemberMetrics

__all__ = ["RaftService", "ClientCertificateSite", "LOST_DISK"]

#: Where an operator whose member refuses a damaged log finds what to do.
LOST_DISK = "see \"A member's disk is lost\" in docs/operations.md"


@implementer(IHandshakeListener)
class _ClientCheckedChannel(ACLCheckedProtocolMixin, http.HTTPChannel):
    """
    An HTTP connection that is aborted right after its TLS handshake unless
    the client's certificate carries a name in the site's client ACL (the
    check members apply to each other, :class:`ACLCheckedProtocolMixin`).

    :ivar closed: a Deferred that fires (with ``None``) once the connection
        is lost, whoever closed it.
    """

    side = "HTTP API"
    peer_role = "client"
    # Made by ClientCertificateSite.buildProtocol, which sets it.
    factory: ClientCertificateSite

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._host: Optional[IAddress] = None
        self._idle_call: Optional[IDelayedCall] = None
        self._last_active = 0.0

    @property
    def policy(self) -> Optional[AccessPolicy]:
        """The site's :class:`AccessPolicy`; ``None`` (plain HTTP) admits everyone."""
        return self.factory.policy

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.factory.connections.add(self)
        if self.policy is None:  # plain HTTP: no handshake to wait for
            mark_established(self.transport)

    def peer_admitted(self) -> None:
        # From here on, twisted.web's own idle timeout applies.
        mark_established(self.transport)

    def getHost(self) -> IAddress:
        """
        The connection's local address, asked of the transport once: every
        twisted.web request asks for it (``Request.__init__``), and a TCP
        transport makes a ``getsockname()`` system call each time.
        """
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        return self._host

    # twisted.web's idle timeout (TimeoutMixin) is switched off while a request
    # is handled and on again once it is answered: a DelayedCall cancelled and
    # a new one made per request.  Here one timer per connection checks a
    # deadline that activity moves forward, and re-arms itself for the rest;
    # the timeout itself is the same (``timeOut`` seconds without a byte
    # received or an answer finished, never while a request is in hand).

    def setTimeout(self, period: Optional[int]) -> Optional[int]:
        previous = self.timeOut
        self.timeOut = period
        if period is not None:
            now = self._last_active = self.factory.reactor.seconds()
            if self._idle_call is None:
                self._idle_call = self.callLater(period, self._idle_check)  # type: ignore[no-untyped-call]
            elif self._idle_call.getTime() > now + period:  # a shorter timeout than the one armed
                self._idle_call.reset(period)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None:
            self._last_active = self.factory.reactor.seconds()

    def _idle_check(self) -> None:
        self._idle_call = None
        if self.timeOut is None:
            return  # a request is in hand; setTimeout() arms the timer again once it is answered
        now = self.factory.reactor.seconds()
        idle_until = self._last_active + self.timeOut
        if now >= idle_until:
            self.timeoutConnection()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        else:
            self._idle_call = self.callLater(  # type: ignore[no-untyped-call]  # Twisted's, unannotated
                idle_until - now, self._idle_check)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        finally:
            if self._idle_call is not None and self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None
            self.closed.callback(None)


class ClientCertificateSite(server.Site):
    """
    A :class:`~twisted.web.server.Site` that admits only TLS clients whose
    certificate names meet ``client_acl`` (``None``: everyone, for plain
    HTTP), keeps track of its connections so that they can be closed with
    the service, and does not write an access log line per request.

    :ivar policy: the :class:`~txraft.transport.tls.AccessPolicy` applied
        after each TLS handshake, or ``None``.
    :ivar connections: the open connections; each has a ``closed`` Deferred.
    :ivar max_body_bytes: the largest request body read; a larger one is
        refused with 413 as soon as it is declared or received
        (:class:`txraft.http.BoundedRequest`).  ``None``: no limit.
    """

    # HTTPFactory declares ``protocol`` as making its HTTP/1.1-or-HTTP/2
    # wrapper (_GenericHTTPChannelProtocol).  Its buildProtocol only sets
    # attributes every HTTPChannel has (factory, timeOut, callLater), so a
    # plain HTTPChannel subclass serves: HTTP/1.1, which is all this API speaks.
    protocol = cast("Callable[[], http._GenericHTTPChannelProtocol]", _ClientCheckedChannel)
    requestFactory = BoundedRequest

    def __init__(self, resource: IResource, client_acl: Optional[Iterable[str]] = None, reactor: Any = None,
                 max_body_bytes: Optional[int] = None) -> None:
        super().__init__(resource, reactor=reactor)  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.max_body_bytes = max_body_bytes
        self.client_acl = frozenset(client_acl) if client_acl is not None else None
        self.policy = None if self.client_acl is None else AccessPolicy.build(
            self.client_acl, unlisted="no name is in --client-acl")
        self.connections: Set[_ClientCheckedChannel] = set()
        self.noisy = False

    def log(self, request: http.Request) -> None:
        """No access log: a busy member would spend its time writing it."""

    def close_connections(self) -> defer.Deferred[None]:
        """
        Abort every open connection.

        :returns: a Deferred firing once all of them are closed.
        """
        channels = list(self.connections)
        for channel in channels:
            # Every connection of the site is TCP, or TLS over TCP.
            cast(ITCPTransport, channel.transport).abortConnection()
        return defer.DeferredList([channel.closed for channel in channels]).addCallback(lambda _: None)


class RaftService(service.MultiService):
    """
    A Raft member (and optionally its HTTP API) started and stopped with the
    service.

    :param config: the member's :class:`txraft.RaftConfig`; ``config.listen``
        is its id.
    :param app: the replicated application, a :class:`txraft.RaftClient`.
    :param members: ids (``host:port``) of the other members; this member's
        own id may be among them.
    :param reactor: the reactor; the global one when ``None``.
    :param http: ``(host, port)`` of the client API, or ``None`` for none.
        The API needs ``app`` to be a :class:`txraft.kv.KeyValueStore`.
    :param client_acl: certificate names of the clients the HTTPS API admits.
    :param storage: an :class:`~txraft.interfaces.IStorage` to use instead of
        the default (disk in ``config.log_dir``).
    :param transport: an :class:`~txraft.interfaces.ITransport` to use instead
        of AMP.
    :param api: a callable taking this service and returning the
        :class:`~twisted.web.resource.IResource` served on ``http``; the
        default serves :func:`txraft.http.create_api` (the key-value API and
        ``/metrics``).  Embedding applications pass their own.
    :param exit_on_failure: when the member cannot start, log one line, stop
        the reactor and exit the process with status 1 (what ``twistd raft``
        wants; embedding applications leave it off and watch :attr:`ready`).
    :param max_command_size: the largest command (and request body) the HTTP
        API accepts; by default ``config.max_command_bytes``, the limit the
        leader applies to every command.
    :param tune_gc: once the member runs, call :func:`~txraft.service.tune_garbage_collector`
        (``twistd raft`` does; it changes the whole process's collector, so
        embedding applications decide for themselves).
    :param credentials: the member's :class:`~txraft.transport.tls.TLSCredentials`,
        already loaded (``twistd raft`` loads them while checking its
        options); by default they are loaded from ``config`` once, at start.
        The member transport and the HTTPS API share them.
    :param warnings: lines about the configuration to log as warnings at
        start (``twistd raft`` checks its options before logging begins).
    :param http_limits: the :class:`~txraft.transport.limits.ConnectionLimits`
        of the HTTP API's port.

    :ivar raft: the :class:`txraft.member.Raft`, from :meth:`startService` on.
    :ivar transport: the member's transport, wrapped in a
        :class:`~txraft.metrics.CountingTransport` (bytes replicated per peer,
        for the metrics) before the member is built.
    :ivar ready: a Deferred firing with this service once the member runs and
        the HTTP API listens, or failing with the reason it could not start.
        A new one is made by every :meth:`startService`.
    :ivar http_address: ``(host, port)`` the API listens on once ready.
    :ivar http_guard: the :class:`~txraft.transport.limits.ConnectionGuard` of
        the API's port.
    """

    log = Logger()

    def __init__(self, config: RaftConfig, app: IRaftClient, members: Iterable[str] = (), reactor: Any = None,
                 http: Optional[Tuple[str, int]] = None, client_acl: Optional[Iterable[str]] = (),
                 storage: Optional[IStorage] = None, transport: Optional[ITransport] = None,
                 api: Optional[Callable[[RaftService], IResource]] = None, exit_on_failure: bool = False,
                 max_command_size: Optional[int] = None, credentials: Optional[TLSCredentials] = None,
                 http_limits: ConnectionLimits = HTTP_LIMITS, warnings: Iterable[str] = (),
                 tune_gc: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.tune_gc = tune_gc
        if isinstance(members, str):
            raise TypeError("members must be a sequence of member ids, not a str")
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.app = app
        self.members = tuple(members)
        self.reactor = reactor
        self.http = http
        self.client_acl = tuple(client_acl or ())
        self.exit_on_failure = exit_on_failure
        # One limit for every path into the log: the HTTP API refuses what the leader would.
        self.max_command_size = config.max_command_bytes if max_command_size is None else max_command_size
        self.api = api if api is not None else _key_value_api
        self._storage = storage
        self._transport = transport
        self.credentials = credentials
        self.http_guard = ConnectionGuard("http", http_limits, reactor)
        self.warnings = tuple(warnings)
        self.transport: Optional[CountingTransport] = None
        self.raft: Optional[Raft] = None
        self.metrics: Optional[MemberMetrics] = None
        self.ready: Optional[defer.Deferred[RaftService]] = None
        self.http_address: Optional[Tuple[str, int]] = None
        self._site: Optional[ClientCertificateSite] = None
        self._port: Optional[IListeningPort] = None
        self._starting: Optional[defer.Deferred[None]] = None

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        """Start the member and its HTTP API; :attr:`ready` fires once both are up."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        for warning in self.warnings:
            self.log.warn("{warning}", warning=warning)
        self.ready = defer.Deferred()
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addCallbacks(self._started, self._failed)

    def _load_credentials(self) -> Optional[TLSCredentials]:
        """:returns: the member's credentials, loaded once; ``None`` when insecure."""
        if self.config.insecure:
            return None
        if self.credentials is None:
            self.credentials = TLSCredentials.load(self.config.cert, self.config.key, self.config.ca)
        return self.credentials

    def _member_transport(self) -> CountingTransport:
        """The transport the member is built with: the given one or AMP, counted for the metrics."""
        from txraft.defaults import default_transport
        from txraft.metrics import CountingTransport

        if self._transport is None:
            return default_transport(self.config, self.reactor, credentials=self._load_credentials())
        if isinstance(self._transport, CountingTransport):
            return self._transport
        return CountingTransport(self._transport)

    async def _start(self) -> None:
        # Everything up to the first await runs within startService, so
        # ``raft`` is set on return unless building it failed (then ``ready``
        # fails with the reason, like any other failure to start).
        self.transport = self._member_transport()
        self.raft = Raft(self.config, self.app, reactor=self.reactor, transport=self.transport,
                         storage=self._storage)
        for member in self.members:
            self.raft.add_member(member)
        await self.raft.start()
        if self.http is not None:
            await self._listen_http()
        if self.metrics is not None:
            self.metrics.watch_reactor()

    def _started(self, _: None) -> None:
        assert self.raft is not None and self.ready is not None  # set by startService and _start
        self._starting = None
        if self.tune_gc:
            tune_garbage_collector()
        c = self.config
        self.log.info(
            "txraft member {member} running; members {members}; log {log_dir} (fsync {fsync}); heartbeat {heartbeat} s, "
            "election timeout {election} s; {security}; HTTP API {api}",
            member=self.raft.id, members=list(self.raft.members), log_dir=c.log_dir or "in memory", fsync=c.fsync,
            heartbeat=c.heartbeat, election=c.election_base,
            security="INSECURE" if c.insecure else f"TLS, ACL {sorted(c.acl)}",
            api="off" if self.http_address is None else "%s:%d" % self.http_address)
        self._check_descriptor_limit()
        self._check_identities()
        self.ready.callback(self)

    def _check_identities(self) -> None:
        if self.config.insecure:
            return
        assert self.raft is not None
        unbound = sorted(m for m in self.raft.members if m != self.raft.id and m not in self.config.peer_names)
        if unbound:
            self.log.warn(
                "members {members} are given without a certificate name: any certificate in the ACL may "
                "claim to be them (vote, lead) in requests; give them as NAME@HOST:PORT (docs/security.md, "
                "'Claimed identity')", members=unbound)

    def _check_descriptor_limit(self) -> None:
        import resource

        guards: List[Optional[ConnectionGuard]] = [self.http_guard] if self.http_address is not None else []
        guards += [getattr(getattr(self.transport, "transport", None), "connection_guard", None)]
        needed = descriptor_budget(*(guard.limits for guard in guards if guard is not None))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            self.log.warn("the descriptor limit is {soft}, but this member may hold {needed} connections and files; "
                          "raise it (ulimit -n, LimitNOFILE; docs/deployment.md, 'Descriptors')",
                          soft=soft, needed=needed)

    def _failed(self, failure: Failure) -> None:
        assert self.ready is not None  # set by startService
        self._starting = None
        reason = failure.getErrorMessage() or failure.type.__name__
        if failure.check(CorruptLog):
            reason += f"; the member refuses to run on a damaged log: {LOST_DISK}"
        if failure.check(RaftError, OSError, ConnectError, CannotListenError):
            # Expected: a locked or corrupt log, a taken port.  No traceback.
            self.log.error("txraft member {member} could not start: {reason}",
                           member=self.config.listen, reason=reason)
        else:
            self.log.failure("txraft member {member} could not start: {reason}", failure,
                             member=self.config.listen, reason=reason)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)
        if self.exit_on_failure:
            sys.stderr.write(f"txraft: member {self.config.listen} could not start: {reason}\n")
            sys.stderr.flush()
            self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
            self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop the HTTP API (closing its connections), then the member: waiting
        requests fail, connections close and the log is flushed and closed.

        :returns: a Deferred firing when all of it is done.
        """
        super_stop = super().stopService
        return defer.Deferred.fromCoroutine(self._stop(super_stop))

    async def _stop(self, super_stop: Callable[[], Optional[defer.Deferred[None]]]) -> None:
        if self._starting is not None:
            # Let a start in progress finish (or fail) before undoing it.
            try:
                await self._starting
            except Exception:
                pass
        if self._port is not None:
            port, self._port = self._port, None
            await defer.maybeDeferred(port.stopListening)
        if self._site is not None:
            site, self._site = self._site, None
            await site.close_connections()
        if self.metrics is not None:
            self.metrics.stop()
        if self.raft is not None:
            # A leader hands over first (twistd's SIGTERM lands here), so a
            # rolling restart costs a transfer, not an election timeout.
            await self.raft.stop(transfer=True)
        await defer.maybeDeferred(super_stop)

    # -- the HTTP API -------------------------------------------------------------

    async def _listen_http(self) -> None:
        assert self.http is not None
        resource = self.api(self)
        host, port = self.http
        credentials = self._load_credentials()
        client_acl = None if credentials is None else self.client_acl
        self._site = ClientCertificateSite(resource, client_acl=client_acl, reactor=self.reactor,
                                           max_body_bytes=self.max_command_size)
        endpoint = server_endpoint(self.reactor, host, port, credentials, self.http_guard)
        self._port = await endpoint.listen(self._site)
        self.http_address = (host, cast(Union[IPv4Address, IPv6Address], self._port.getHost()).port)  # a TCP port
        if credentials is None:
            self.log.warn("HTTP API on {host}:{port} is INSECURE: plain HTTP, clients are not authenticated",
                          host=host, port=self.http_address[1])


#: Collector thresholds for a busy member: young collections every 50,000
#: allocations instead of 700, full ones 100 young-ish rounds apart instead of 10.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """
    Make the cyclic garbage collector's pauses rare: freeze the objects made
    so far (start-up: modules, the member) out of its reach and raise its
    thresholds to ``GC_THRESHOLDS``.  Under load a member holds many
    objects (pending appends, their Deferreds), and with the default
    thresholds a full collection of them blocked the reactor for 100-540 ms
    about once a second, long enough to cost leaderships
    (``docs/performance.md``).  Objects are still freed at once when their
    last reference goes; only reference cycles wait longer.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _key_value_api(svc: RaftService) -> IResource:
    """The default API: the key-value store's HTTP API with the member's metrics."""
    from txraft.http import create_api
    from txraft.metrics import MemberMetrics

    assert svc.raft is not None  # the API is built once the member runs
    svc.metrics = MemberMetrics(svc.raft, transport=svc.transport)
    svc.metrics.watch_port(getattr(getattr(svc.transport, "transport", None), "connection_guard", None))
    svc.metrics.watch_port(svc.http_guard)
    return create_api(svc.raft, svc.app, metrics=svc.metrics, request_timeout=svc.config.request_timeout,
                      max_command_size=svc.max_command_size)


def _exit_failed() -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
