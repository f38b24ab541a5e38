"""
Member RPCs over AMP, on mutual TLS: :class:`AMPTransport`, the network
implementation of :class:`txraft.interfaces.ITransport`.

Build one per member from its configuration, start it with the member's
:class:`~txraft.interfaces.IRPCHandler`, and send requests by member id::

    transport = AMPTransport.from_config(config, reactor)
    yield transport.start(core)          # listening; transport.address is the member id
    reply = yield transport.send("127.0.0.12:7002", RequestVote(...))
    yield transport.stop()

How it works:

- The member listens on ``config.listen`` (``SSL4ServerEndpoint`` bound to that
  host).  With port 0 the system picks one; ``transport.address`` then gives
  the real ``host:port``.
- For each peer, one long-lived connection carries every RPC.  A
  :class:`~twisted.application.internet.ClientService` keeps it up,
  reconnecting after 0.05 s, then backing off to at most 2 s.  Outgoing
  connections bind their source address to the member's listen host.  A
  connection is used only after its TLS handshake completed and the peer passed
  the ACL (:mod:`txraft.transport.tls`).
- While a peer is unreachable, :meth:`AMPTransport.send` fails at once with
  :class:`~txraft.errors.TransportError` (nothing queues up); while a
  connection attempt is in progress it waits for that attempt only.  Calls in
  flight when a connection drops fail with ``TransportError``.
- Values too large for one AMP value (65,535 bytes) are split into
  :class:`~txraft.transport.commands.Fragment` commands, at most
  :data:`FRAGMENT_WINDOW` unacknowledged at a time, and reassembled by the
  receiving connection; one message may be up to ``max_message_bytes``
  (:data:`MAX_MESSAGE_BYTES`, 64 MiB, by default).
- Requests arriving are decoded, checked (:mod:`txraft.codec`, the claimed
  identity), and handed to ``handler.receive``; its reply goes back, and a
  :class:`~txraft.errors.RaftError` it raises reaches the caller as the same
  type.  An unknown command or a malformed argument is a protocol violation:
  the peer gets an error and that one connection is closed.
"""

from __future__ import annotations

import dataclasses
import ipaddress as _ipaddress
import random as _random_module
from typing import Dict, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, error as ierror
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft import codec
from txraft import errors as e
from txraft.config import parse_host_port
from txraft.interfaces import ITransport
from txraft.transport import commands
from txraft.transport.peers import member_id
from txraft.transport.tls import AccessPolicy, ACLCheckedProtocolMixin, TLSCredentials

__all__ = ["AMPTransport", "MAX_MESSAGE_BYTES", "FRAGMENT_SIZE", "FRAGMENT_WINDOW"]

#: Default largest encoded value of one message field (a batch of entries, a
#: command, a snapshot chunk) that a member sends or accepts.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Bytes per Fragment command; also the largest value sent inline.
FRAGMENT_SIZE = 60 * 1024
#: Unacknowledged Fragment commands per transfer (flow control).
FRAGMENT_WINDOW = 4

_BAD_REQUEST = b"BAD_REQUEST"


class _Reassembly:
    """
    Fragment sequences being received on one connection.

    Invariant: ``total`` is the sum of the lengths of all parts held, and never
    exceeds ``max_pending``; no sequence exceeds ``max_message``.
    """

    def __init__(self, max_message, max_pending):
        self.max_message = max_message
        self.max_pending = max_pending
        self.parts: Dict[int, list] = {}
        self.sizes: Dict[int, int] = {}
        self.total = 0

    def add(self, blob, data):
        size = self.sizes.get(blob, 0) + len(data)
        if size > self.max_message:
            self.discard(blob)
            raise e.InvalidRequest(f"fragmented value {blob} exceeds the {self.max_message}-byte limit")
        if self.total + len(data) > self.max_pending:
            self.discard(blob)
            raise e.InvalidRequest(f"more than {self.max_pending} bytes of fragments pending on this connection")
        self.parts.setdefault(blob, []).append(data)
        self.sizes[blob] = size
        self.total += len(data)

    def discard(self, blob):
        self.parts.pop(blob, None)
        self.total -= self.sizes.pop(blob, 0)

    def take(self, blob) -> bytes:
        parts = self.parts.pop(blob, None)
        if parts is None:
            raise e.TransportError(f"fragmented value {blob} was not received on this connection")
        self.total -= self.sizes.pop(blob)
        return b"".join(parts)


def _claimant(message) -> Optional[str]:
    """The member id a request claims to come from, if it claims one."""
    return getattr(message, "candidate", None) or getattr(message, "leader", None)


def _as_transport_error(failure, peer):
    """Map everything but Raft errors and cancellation to TransportError."""
    if failure.check(e.RaftError, defer.CancelledError):
        return failure
    if failure.check(ierror.ConnectionDone, ierror.ConnectionLost):
        raise e.TransportError(f"connection to {peer} lost: {failure.value}")
    raise e.TransportError(f"RPC to {peer} failed: {failure.getErrorMessage() or failure.type.__name__}")


@implementer(IHandshakeListener)
class MemberProtocol(ACLCheckedProtocolMixin, amp.AMP):
    """
    One AMP connection between two members, in either direction.

    :ivar ready: fires with this protocol once the peer is admitted (after the
        TLS handshake and the ACL check), or fails with
        :class:`~txraft.errors.TransportError` if the connection ends first
        (outgoing connections only: nothing waits on an accepted one).
    :ivar closed: fires when the connection is lost.
    """

    log = Logger()

    def __init__(self, member, side, expected_peer_name=None, link=None):
        amp.AMP.__init__(self)
        self.member = member
        self.side = side
        self.policy = member._policy
        self.expected_peer_name = expected_peer_name
        self.link = link
        self.admitted = False
        self.heard = False  # any box received from the peer
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self._fragments = _Reassembly(member.max_message_bytes, 2 * member.max_message_bytes)
        self._next_blob = 0

    # -- connection life ---------------------------------------------------

    def connectionMade(self):
        amp.AMP.connectionMade(self)
        # RPCs are small writes answered by small writes: without TCP_NODELAY,
        # Nagle's algorithm and delayed ACKs add tens of milliseconds.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        peer = self.transport.getPeer()
        self.peer_address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.member._connections.add(self)
        if self.policy is None:  # insecure: no handshake to wait for
            self.peer_admitted()

    def peer_admitted(self):
        self.admitted = True
        if self.link is not None:
            self.link.admitted(self)
        # ClientService resumes from this callback; callers waiting on the link
        # are woken only afterwards, outside its state machine, so that they
        # may stop the transport at once.
        self.ready.callback(self)
        if self.link is not None:
            self.link.wake()

    def peer_refused(self, reason):
        self._fail_ready(reason)

    def _fail_ready(self, reason):
        # Only an outgoing connection's ClientService waits on ``ready``.
        if self.link is not None and not self.ready.called:
            self.ready.errback(reason)

    def connectionLost(self, reason):
        self.member._connections.discard(self)
        amp.AMP.connectionLost(self, reason)
        if not self.admitted:
            # The TLS handshake failed, or the other side refused us.
            self.log.warn(
                "{side}: connection with {peer} closed before the peer was admitted: {reason}",
                side=self.side,
                peer=self.peer_address,
                reason=reason.getErrorMessage(),
            )
        elif self.side == "client" and not self.heard and not self.member._stopping:
            # Under TLS 1.3 a server that refuses our certificate or its name
            # aborts the connection after our side of the handshake is done:
            # all we see is the connection closing before any answer.
            self.log.warn(
                "client: connection to {peer} closed before any answer; it may refuse this member's "
                "certificate (see its log): {reason}",
                peer=self.peer_address,
                reason=reason.getErrorMessage(),
            )
        if self.link is not None:
            self.link.lost(self, reason)
            self.link.wake()
        self._fail_ready(e.TransportError(f"connection closed before the peer was admitted: {reason.getErrorMessage()}"))
        self.closed.callback(None)

    # -- receiving -----------------------------------------------------------

    def ampBoxReceived(self, box):
        self.heard = True
        return amp.AMP.ampBoxReceived(self, box)

    def locateResponder(self, name):
        responder = amp.AMP.locateResponder(self, name)
        if responder is None:
            return lambda box: self._violation(Failure(ValueError(f"unknown command {name!r}")), name)

        def guarded(box):
            return defer.maybeDeferred(responder, box).addErrback(self._violation, name)

        return guarded

    def _violation(self, failure, name):
        """A request AMP could not parse: answer with an error and close this connection."""
        if failure.check(amp.RemoteAmpError):
            return failure
        self.log.warn(
            "closing the connection from {peer}: bad request {command}: {error}",
            peer=self.peer_address,
            command=name,
            error=failure.getErrorMessage(),
        )
        return Failure(amp.RemoteAmpError(_BAD_REQUEST, f"bad request {name!r}: {failure.getErrorMessage()}", fatal=True))

    @commands.Members.responder
    def _members(self, **kw):
        return self._serve(commands.Members, kw)

    @commands.Leader.responder
    def _leader(self, **kw):
        return self._serve(commands.Leader, kw)

    @commands.RequestVote.responder
    def _request_vote(self, **kw):
        return self._serve(commands.RequestVote, kw)

    @commands.AppendToLog.responder
    def _append_to_log(self, **kw):
        return self._serve(commands.AppendToLog, kw)

    @commands.Append.responder
    def _append(self, **kw):
        return self._serve(commands.Append, kw)

    @commands.InstallSnapshot.responder
    def _install_snapshot(self, **kw):
        return self._serve(commands.InstallSnapshot, kw)

    @commands.ReadIndex.responder
    def _read_index(self, **kw):
        return self._serve(commands.ReadIndex, kw)

    @commands.Fragment.responder
    def _fragment(self, blob, data, discard=False):
        if discard:
            self._fragments.discard(blob)
        else:
            self._fragments.add(blob, data)
        return {}

    def _serve(self, command, kw):
        d = defer.maybeDeferred(self._receive, command, kw)
        d.addCallback(self._response, command)
        d.addErrback(self._error_response, command)
        return d

    def _receive(self, command, kw):
        for name, argument in command.arguments:
            if isinstance(argument, commands.Blob):
                key = name.decode("ascii")
                value = kw[key]
                if isinstance(value, commands.BlobRef):
                    value = self._fragments.take(value.blob)
                try:
                    kw[key] = argument.decode(value)
                except ValueError as error:
                    raise e.InvalidRequest(f"{key}: {error}") from None
        try:
            message = codec.from_wire(codec.to_wire(command.message_type(**kw)))
        except (ValueError, TypeError) as error:
            raise e.InvalidRequest(str(error)) from None
        claimed = _claimant(message)
        if claimed and self.policy is not None:
            try:
                self.policy.check_claim(claimed, self.peer_certificate_names)
            except e.Unauthorized as refusal:
                self.log.warn("refused a {command} request: {refusal}", command=command.__name__, refusal=str(refusal))
                raise
        handler = self.member.handler
        if handler is None:
            raise e.Stopped("this member is not running")
        return handler.receive(message)

    def _response(self, reply, command):
        if not isinstance(reply, command.reply_type):
            raise TypeError(f"the handler answered {command.__name__} with {type(reply).__name__}")
        response = {}
        for f in dataclasses.fields(reply):
            value = getattr(reply, f.name)
            response[f.name] = list(value) if isinstance(value, tuple) else value  # AMP's ListOf wants a list
        return response

    def _error_response(self, failure, command):
        if failure.check(e.NotLeader):
            # AMP carries only a description: make it the leader's id.
            leader = failure.value.leader
            raise e.NotLeader(leader, message=leader)
        if failure.check(e.RaftError):
            return failure
        self.log.failure("the handler failed on a {command} request", failure, command=command.__name__)
        raise e.RaftError(f"internal error in the member handling {command.__name__}")

    # -- sending ---------------------------------------------------------------

    def call(self, command, arguments):
        """:returns: a Deferred firing with ``command``'s reply message."""
        try:
            d = self.callRemote(command, **arguments)
        except amp.TooLong as error:
            return defer.fail(e.TransportError(f"{command.__name__}: a value is too long for AMP: {error}"))
        return d.addCallback(self._reply_message, command)

    def _reply_message(self, response, command):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in response.items()}
        try:
            return codec.from_wire(codec.to_wire(command.reply_type(**fields)))
        except (ValueError, TypeError) as error:
            raise e.TransportError(f"malformed {command.__name__} reply: {error}") from None

    async def upload(self, raw: bytes) -> commands.BlobRef:
        """Send ``raw`` as a Fragment sequence, keeping at most FRAGMENT_WINDOW unacknowledged."""
        blob = self._next_blob
        self._next_blob += 1
        window = []
        try:
            for offset in range(0, len(raw), FRAGMENT_SIZE):
                window.append(self.callRemote(commands.Fragment, blob=blob, data=raw[offset : offset + FRAGMENT_SIZE]))
                if len(window) >= FRAGMENT_WINDOW:
                    await window.pop(0)
            while window:
                await window.pop(0)
        except BaseException:
            for d in window:
                d.addErrback(lambda _: None)
            if self.transport is not None and self.transport.connected and not self.closed.called:
                self.callRemote(commands.Fragment, blob=blob, data=b"", discard=True).addErrback(lambda _: None)
            raise
        return commands.BlobRef(blob)


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, member):
        self.member = member

    def buildProtocol(self, addr):
        return MemberProtocol(self.member, "server")


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        link = self.link
        protocol = MemberProtocol(link.member, "client", link.expected_name, link)
        link.connecting = protocol
        return protocol


class _WatchedEndpoint:
    """Tells its link when a connection attempt starts and when it fails."""

    def __init__(self, endpoint, link):
        self.endpoint = endpoint
        self.link = link

    def connect(self, factory):
        self.link.attempting = True

        def failed(failure):
            self.link.attempting = False
            self.link.last_error = failure.getErrorMessage()
            self.link.wake()
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class _PeerLink:
    """
    The one outgoing connection to one peer.

    Invariant: ``protocol`` is an admitted, connected protocol or ``None``;
    ``attempting`` is true from the start of a connection attempt until it is
    admitted or fails.
    """

    def __init__(self, member, peer, host, port):
        self.member = member
        self.peer = peer
        self.expected_name = member.peer_names.get(peer)
        self.protocol = None
        self.connecting = None
        self.attempting = False
        self.last_error = "not connected yet"
        self._waiters = []
        factory = _ClientFactory(self)
        if member._credentials is not None:
            factory = TLSMemoryBIOFactory(member._tls_options, True, factory)
        self.service = ClientService(
            _WatchedEndpoint(member._client_endpoint(host, port), self),
            factory,
            retryPolicy=member._retry_policy,
            clock=member.reactor,
            prepareConnection=lambda _: self.connecting.ready,
        )
        self.service.startService()

    def admitted(self, protocol):
        self.protocol = protocol
        self.attempting = False

    def lost(self, protocol, reason):
        if self.protocol is protocol:
            self.protocol = None
        if protocol is self.connecting:
            self.attempting = False
            self.last_error = reason.getErrorMessage()

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
        self.attempting = False
        self.protocol = None
        self.last_error = "the transport was stopped"
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(e.Stopped("the transport was stopped"))
        return self.service.stopService()


@implementer(ITransport)
class AMPTransport:
    """
    Member RPCs as AMP commands over mutual TLS (or plain TCP when insecure).

    :param listen: ``"host:port"`` to listen on; port 0 picks a free port.
    :param cert: this member's certificate: a PEM file path or a
        ``cryptography`` certificate.
    :param key: its private key: a PEM file path or a ``cryptography`` key.
    :param ca: the cluster CA: a PEM file path, a certificate or a list of them.
    :param acl: certificate names admitted (see :mod:`txraft.transport.tls`).
    :param peer_names: member id -> certificate name that member must carry.
    :param insecure: plain TCP, no authentication at all (a warning is logged).
    :param reactor: provides TCP, SSL and time; the global reactor when ``None``.
    :param max_message_bytes: largest encoded field sent or accepted.
    :param connect_timeout: seconds a connection attempt may take.
    :param initial_delay: seconds before the first reconnection attempt.
    :param max_delay: the longest wait between reconnection attempts.
    :param random: a ``random.Random`` for the reconnection jitter.

    :ivar address: the member id, ``host:port``; after :meth:`start` it has the
        port actually bound.
    :ivar handler: the :class:`~txraft.interfaces.IRPCHandler` given to :meth:`start`.
    :raises ConfigurationError: for a bad address or unreadable TLS files.
    """

    log = Logger()

    def __init__(
        self,
        listen,
        *,
        cert=None,
        key=None,
        ca=None,
        acl=(),
        peer_names=None,
        insecure=False,
        reactor=None,
        max_message_bytes=MAX_MESSAGE_BYTES,
        connect_timeout=5.0,
        initial_delay=0.05,
        max_delay=2.0,
        random=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host, self._listen_port = parse_host_port(listen, "listen")
        self.address = member_id(self.host, self._listen_port)
        self.insecure = bool(insecure)
        self.peer_names = dict(peer_names or {})
        self.max_message_bytes = max_message_bytes
        self.connect_timeout = connect_timeout
        if self.insecure:
            self._credentials = None
            self._policy = None
            self._tls_options = None
        else:
            self._credentials = TLSCredentials.load(cert, key, ca)
            self._policy = AccessPolicy.build(acl, self._credentials.certificate, self.peer_names)
            self._tls_options = self._credentials.options()
        rng = random or _random_module.Random()
        self._retry_policy = backoffPolicy(
            initialDelay=initial_delay, maxDelay=max_delay, factor=2.0, jitter=lambda: rng.random() * initial_delay
        )
        self.handler = None
        self._port = None
        self._links: Dict[str, _PeerLink] = {}
        self._connections = set()
        self._stopping = False

    @classmethod
    def from_config(cls, config, reactor=None, **kwargs) -> "AMPTransport":
        """
        :returns: the transport a member configured by ``config`` (a
            :class:`txraft.config.RaftConfig`) uses; ``kwargs`` override the
            constructor's tuning parameters.  A connection attempt may take
            ``config.rpc_timeout``, like any RPC.
        """
        kwargs.setdefault("connect_timeout", config.rpc_timeout)
        return cls(
            config.listen,
            cert=config.cert,
            key=config.key,
            ca=config.ca,
            acl=config.acl,
            peer_names=config.peer_names,
            insecure=config.insecure,
            reactor=reactor,
            **kwargs,
        )

    # -- ITransport --------------------------------------------------------------

    def start(self, handler):
        """
        Listen for peers and deliver their requests to ``handler``.

        :returns: a Deferred firing with :attr:`address` once listening.
        """
        if self._stopping:
            return defer.fail(e.Stopped("this transport was stopped"))
        self.handler = handler
        if self.insecure:
            endpoint = endpoints.TCP4ServerEndpoint(self.reactor, self._listen_port, interface=self.host)
            if ":" in self.host:
                endpoint = endpoints.TCP6ServerEndpoint(self.reactor, self._listen_port, interface=self.host)
        else:
            endpoint = endpoints.SSL4ServerEndpoint(
                self.reactor, self._listen_port, self._tls_options, interface=self.host
            )

        def listening(port):
            self._port = port
            self.address = member_id(self.host, port.getHost().port)
            if not self.insecure and not self._policy.acl:
                self.log.warn(
                    "member {address}: the ACL is empty; only peers with this member's own key are admitted",
                    address=self.address,
                )
            if self.insecure:
                self.log.warn(
                    "member {address}: INSECURE transport: plain TCP, peers are neither authenticated nor encrypted",
                    address=self.address,
                )
            self.log.info("member {address} listening ({mode})", address=self.address,
                          mode="insecure TCP" if self.insecure else "TLS")
            return self.address

        return endpoint.listen(_ServerFactory(self)).addCallback(listening)

    def send(self, peer, message):
        """
        Send a request from :mod:`txraft.messages` to member ``peer``.

        :returns: a cancellable Deferred firing with the reply message, or
            failing with the peer's :class:`~txraft.errors.RaftError` or a
            :class:`~txraft.errors.TransportError`.
        :raises TypeError: when ``message`` is not a member request.
        """
        command = commands.COMMANDS.get(type(message))
        if command is None:
            raise TypeError(f"cannot send {type(message).__name__}: not a member request")
        if self._stopping:
            return defer.fail(e.Stopped("this transport was stopped"))
        try:
            link = self._link(peer)
        except e.RaftError:
            return defer.fail()
        d = defer.Deferred.fromCoroutine(self._send(link, command, message))
        return d.addErrback(_as_transport_error, peer)

    def stop(self):
        """
        Stop listening, close every connection and stop reconnecting.

        :returns: a Deferred that fires when all of it is done.
        """
        self._stopping = True
        self.handler = None
        waits = []
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        for link in self._links.values():
            waits.append(link.stop())
        self._links.clear()
        for protocol in list(self._connections):
            waits.append(protocol.closed)
            protocol.transport.abortConnection()
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- internals ---------------------------------------------------------------

    def _link(self, peer) -> _PeerLink:
        link = self._links.get(peer)
        if link is None:
            host, port = parse_host_port(peer, "peer")
            link = self._links[peer] = _PeerLink(self, peer, host, port)
        return link

    async def _send(self, link, command, message):
        protocol = await link.connection()
        arguments = {}
        for f in dataclasses.fields(message):
            arguments[f.name] = getattr(message, f.name)
        for name, argument in command.arguments:
            if isinstance(argument, commands.Blob):
                key = name.decode("ascii")
                raw = argument.encode(arguments[key])
                if len(raw) > self.max_message_bytes:
                    raise e.InvalidRequest(
                        f"{command.__name__}.{key} is {len(raw)} bytes; the limit is {self.max_message_bytes}"
                    )
                if len(raw) > FRAGMENT_SIZE:
                    arguments[key] = await protocol.upload(raw)
                else:
                    arguments[key] = commands.Encoded(raw)
        return await protocol.call(command, arguments)

    def _client_endpoint(self, host, port):
        bind = None if self.host in ("0.0.0.0", "::", "") else (self.host, 0)
        if _is_ip(host, 4):
            return endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout, bindAddress=bind)
        if _is_ip(host, 6):
            return endpoints.TCP6ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout, bindAddress=bind)
        return endpoints.HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout, bindAddress=bind)


def _is_ip(host, version):
    try:
        return _ipaddress.ip_address(host).version == version
    except ValueError:
        return False
