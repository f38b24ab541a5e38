"""
Member RPCs over AMP, on mutual TLS: the protocol spoken on each member
connection (:class:`MemberProtocol`) and :class:`AMPTransport`, the network
implementation of :class:`txraft.interfaces.ITransport`.

Build one per member from its configuration, start it with the member's
:class:`~txraft.interfaces.IRPCHandler`, and send requests by member id::

    transport = AMPTransport.from_config(config, reactor)
    yield transport.start(core)          # listening; transport.address is the member id
    reply = yield transport.send("127.0.0.12:7002", RequestVote(...))
    yield transport.stop()

How it works:

- The member listens on ``config.listen`` (TLS over TCP bound to that host,
  under the connection limits of :mod:`txraft.transport.limits`).  With port 0 the system picks one; ``transport.address`` then gives
  the real ``host:port``.
- For each peer, one long-lived connection carries every RPC
  (:mod:`txraft.transport.links`: reconnection, and use of a connection only
  after its TLS handshake completed and the peer passed the ACL of
  :mod:`txraft.transport.tls`).
- While a peer is unreachable, :meth:`AMPTransport.send` fails at once with
  :class:`~txraft.errors.TransportError` (nothing queues up); while a
  connection attempt is in progress it waits for that attempt only.  Calls in
  flight when a connection drops fail with ``TransportError``.
- A request goes out as the command of :mod:`txraft.transport.commands` for
  its type, one argument per field (:func:`txraft.codec.to_fields`).  Values
  too large for one AMP value are sent first as fragments
  (:mod:`txraft.transport.fragments`); one field may be up to
  ``max_message_bytes`` (:data:`MAX_MESSAGE_BYTES`, 64 MiB, by default).
- Requests arriving are checked (:func:`txraft.codec.from_fields`, the
  claimed identity) and handed to ``handler.receive``; its reply goes back,
  and a :class:`~txraft.errors.RaftError` it raises reaches the caller as the
  same type.  An unknown command or an argument AMP cannot parse is a protocol
  violation: the peer gets an error and that one connection is closed.
"""

from __future__ import annotations

import random as _random_module
import struct
from typing import Dict, Optional, Set

from twisted.internet import defer, error as ierror
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft import codec
from txraft import errors as e
from txraft.config import parse_host_port
from txraft.interfaces import ITransport
from txraft.transport import commands, fragments
from txraft.transport.addresses import member_id
from txraft.transport.arguments import Blob, BlobRef, Encoded
from txraft.transport.fragments import FRAGMENT_SIZE, FRAGMENT_WINDOW, MAX_MESSAGE_BYTES
from txraft.transport.limits import MEMBER_LIMITS, ConnectionGuard, mark_admitted, mark_established
from txraft.transport.links import PeerLink, client_endpoint, retry_policy
from txraft.transport.tls import AccessPolicy, ACLCheckedProtocolMixin, TLSCredentials, server_endpoint

__all__ = ["AMPTransport", "MemberProtocol", "MemberContext", "MAX_MESSAGE_BYTES", "FRAGMENT_SIZE", "FRAGMENT_WINDOW"]

_BAD_REQUEST = b"BAD_REQUEST"
# The blob id of the greeting an outgoing link sends first (senders number theirs from 0).
_GREETING = -1


def _blob_arguments(command):
    """:returns: ``(field name, Blob)`` for each argument of ``command`` that may be fragmented."""
    return tuple((name.decode("ascii"), argument) for name, argument in command.arguments
                 if isinstance(argument, Blob))


# Computed once: every request goes through one of these.
_BLOBS = {command: _blob_arguments(command) for command in commands.COMMANDS.values()}

#: The commands a member answers, by wire name: txraft's own, none of AMP's
#: built-ins (``StartTLS`` and the like) and nothing else.
_ANSWERED = frozenset(command.commandName for command in (*commands.COMMANDS.values(), commands.Fragment))


def _most_keys():
    """The most keys a box of txraft's may have: a request, an answer or an error."""
    requests = [len(c.arguments) + 2 for c in (*commands.COMMANDS.values(), commands.Fragment)]  # + _ask, _command
    answers = [len(c.response) + 1 for c in commands.COMMANDS.values()]  # + _answer
    return max(requests + answers + [3])  # an error: _error, _error_code, _error_description


#: A box with more keys than this is refused as soon as the extra key arrives.
MAX_BOX_KEYS = _most_keys()
#: A box with more bytes than this (keys and values) is refused as soon as they
#: arrive: one fragment or inline value, one other value of AMP's largest, and
#: the small fields.
MAX_BOX_BYTES = FRAGMENT_SIZE + 65535 + 8192

_PREFIX = struct.Struct("!H").unpack_from
#: Seconds a connection may hold fragments of a value without receiving more of
#: them or the command that uses them; then they are dropped.
FRAGMENT_IDLE_TIMEOUT = 30.0


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


class MemberContext:
    """
    What the connections of one transport share with it.  The transport sets
    these; its protocols read them, and keep :attr:`connections` current.

    :ivar policy: the :class:`~txraft.transport.tls.AccessPolicy` applied to
        peers, or ``None`` on an insecure transport (no handshake to wait for).
    :ivar max_message_bytes: the most bytes one field may have, sent or received.
    :ivar clock: the ``IReactorTime`` of the fragment deadlines; ``None``
        for none (connections in memory, in tests).
    :ivar fragment_budget: the :class:`~txraft.transport.fragments.Budget` of
        fragment bytes held by all connections together (twice
        ``max_message_bytes``), so more connections cannot hold more memory.
    :ivar handler: the :class:`~txraft.interfaces.IRPCHandler` receiving
        requests; ``None`` before start and after stop.
    :ivar stopping: whether the transport is stopping (connections closing
        then are expected, not worth a warning).
    :ivar connections: every open :class:`MemberProtocol`, in either direction.
    """

    def __init__(self, policy: Optional[AccessPolicy], max_message_bytes: int, clock=None):
        self.policy = policy
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.fragment_budget = fragments.Budget(2 * max_message_bytes)
        self.handler = None
        self.stopping = False
        self.connections: Set[MemberProtocol] = set()


@implementer(IHandshakeListener)
class MemberProtocol(ACLCheckedProtocolMixin, amp.AMP):
    """
    One AMP connection between two members, in either direction.

    :param context: the :class:`MemberContext` of the transport it belongs to.
    :param side: ``"server"`` for an accepted connection, ``"client"`` for an
        outgoing one.
    :param expected_peer_name: on outgoing connections, the certificate name
        the peer must carry, if known.
    :param link: the :class:`~txraft.transport.links.PeerLink` of an outgoing
        connection.

    :ivar ready: fires with this protocol once the peer is admitted (after the
        TLS handshake and the ACL check), or fails with
        :class:`~txraft.errors.TransportError` if the connection ends first
        (outgoing connections only: nothing waits on an accepted one).
    :ivar closed: fires when the connection is lost.
    """

    log = Logger()

    def __init__(self, context: MemberContext, side, expected_peer_name=None, link=None):
        amp.AMP.__init__(self)
        self.context = context
        self.side = side
        self.policy = context.policy  # read by ACLCheckedProtocolMixin
        self.expected_peer_name = expected_peer_name
        self.link = link
        self.admitted = False
        self.heard = False  # any box received from the peer
        self.peer_address = "?"
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self._fragments = fragments.Reassembly(context.max_message_bytes, context.max_message_bytes,
                                               context.fragment_budget)
        self._fragments_checked = None
        self._next_blob = 0
        # While a request uploads a large field as fragments, later requests
        # wait here (in order) so that the peer receives requests in the
        # order they were sent; None when no upload is in progress.
        self._upload_waiters = None
        self._box_bytes = 0

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
        self.context.connections.add(self)
        if self.policy is None:  # insecure: no handshake to wait for
            mark_admitted(self.transport)
            self.peer_admitted()

    def describe_peer(self):
        """:returns: the other end for the log: its member id and certificate name when known, and address."""
        if self.link is not None:
            return f"{self.link.describe()} at {self.peer_address}"
        names = sorted(self.peer_certificate_names)
        return self.peer_address + (f" (certificate {', '.join(names)})" if names else "")

    def peer_admitted(self):
        self.admitted = True
        if self.link is not None:
            # Speak at once: the accepting member closes a connection that
            # stays silent (txraft.transport.limits), and a link may have
            # nothing to send between elections.  Discarding a value never
            # sent is answered by every release, without the Raft core.
            self.callRemote(commands.Fragment, blob=_GREETING, data=b"", discard=True).addErrback(lambda _: None)
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
        self.context.connections.discard(self)
        self._fragments.clear()
        if self._fragments_checked is not None and self._fragments_checked.active():
            self._fragments_checked.cancel()
        amp.AMP.connectionLost(self, reason)
        if not self.admitted:
            # The TLS handshake failed, or the other side refused us.
            self.log.warn(
                "{side}: connection with {peer} closed before the peer was admitted: {reason}",
                side=self.side,
                peer=self.describe_peer(),
                reason=reason.getErrorMessage(),
            )
        elif self.side == "client" and not self.heard and not self.context.stopping:
            # Under TLS 1.3 a server that refuses our certificate or its name
            # aborts the connection after our side of the handshake is done:
            # all we see is the connection closing before any answer.
            self.log.warn(
                "client: connection to {peer} closed before any answer; it may refuse this member's "
                "certificate (see its log): {reason}",
                peer=self.describe_peer(),
                reason=reason.getErrorMessage(),
            )
        if self.link is not None:
            self.link.lost(self, reason)
            self.link.wake()
        self._fail_ready(e.TransportError(f"connection closed before the peer was admitted: {reason.getErrorMessage()}"))
        self.closed.callback(None)

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data):
        """
        Read boxes as AMP's parser does, with the same limits (a key of at
        most 255 bytes; :data:`MAX_BOX_KEYS` keys and :data:`MAX_BOX_BYTES`
        bytes per box), handing each to ``ampBoxReceived``.  AMP's parser
        makes about eight calls per key and per value, and a request is a
        dozen of them: this loop reads them all from the buffer at once.
        """
        if self.state == "refused":
            return
        if self.innerProtocol is not None:
            return amp.AMP.dataReceived(self, data)
        self._justStartedTLS = False
        buffer = self._unprocessed + data if self._unprocessed else data
        end, offset = len(buffer), 0
        box, key = self._currentBox, self._currentKey
        while offset + 2 <= end:
            (length,) = _PREFIX(buffer, offset)
            start = offset + 2
            stop = start + length
            if key is not None:  # a value
                if stop > end:
                    break
                offset = stop
                box[key] = buffer[start:stop]
                key = None
                self._box_bytes += length
                if self._box_bytes > MAX_BOX_BYTES:
                    self.state = self._refuse_box(f"a box of more than {MAX_BOX_BYTES} bytes")
                    return
                continue
            if length > amp.MAX_KEY_LENGTH:
                self._unprocessed = b""
                self.lengthLimitExceeded(length)
                return
            if stop > end:
                break
            offset = stop
            if box is None:
                box = amp.AmpBox()
            if length:
                key = buffer[start:stop]
                if len(box) >= MAX_BOX_KEYS and key not in box:
                    self.state = self._refuse_box(f"a box with more than {MAX_BOX_KEYS} keys")
                    return
                self._box_bytes += length
                continue
            # An empty key ends the box.
            self._box_bytes = 0
            self._currentBox = self._currentKey = None
            self._unprocessed = buffer[offset:]
            self.boxReceiver.ampBoxReceived(box)
            box = None
            if self.state == "refused":
                return
        self._unprocessed = buffer[offset:]
        self._currentBox, self._currentKey = box, key

    def _refuse_box(self, what):
        self.log.warn("closing the connection from {peer} {names}: it sent {what}", peer=self.peer_address,
                      names=sorted(self.peer_certificate_names), what=what)
        self._currentBox = None
        self.transport.abortConnection()
        return "refused"

    def ampBoxReceived(self, box):
        if not self.heard:
            self.heard = True
            # An admitted peer that speaks holds a peer link: no idle deadline any more.
            mark_established(self.transport)
        try:
            return amp.AMP.ampBoxReceived(self, box)
        except Exception as error:
            # A box AMP cannot make sense of (empty, an answer to no question,
            # ...): a protocol violation that closes this connection only.
            self.log.warn("closing the connection from {peer} {names}: malformed box: {error}",
                          peer=self.peer_address, names=sorted(self.peer_certificate_names),
                          error=f"{type(error).__name__}: {error}"[:200])
            self.transport.abortConnection()

    def locateResponder(self, name):
        responder = amp.AMP.locateResponder(self, name) if name in _ANSWERED else None
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
            peer=self.describe_peer(),
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

    @commands.TimeoutNow.responder
    def _timeout_now(self, **kw):
        return self._serve(commands.TimeoutNow, kw)

    @commands.ChangeMembers.responder
    def _change_members(self, **kw):
        return self._serve(commands.ChangeMembers, kw)

    @commands.TransferLeadership.responder
    def _transfer_leadership(self, **kw):
        return self._serve(commands.TransferLeadership, kw)

    @commands.Fragment.responder
    def _fragment(self, blob, data, offset=None, discard=False):
        if discard:
            self._fragments.discard(blob)
        else:
            self._fragments.add(blob, data, offset)
            self._note_fragments()
        return {}

    def _note_fragments(self):
        clock = self.context.clock
        if clock is not None:
            self._fragments_seen = clock.seconds()
            if self._fragments_checked is None and self._fragments.total:
                self._fragments_checked = clock.callLater(FRAGMENT_IDLE_TIMEOUT, self._check_fragments)

    def _check_fragments(self):
        """Drop what this connection holds of values that stopped arriving (or were never used)."""
        self._fragments_checked = None
        if not self._fragments.total:
            return
        idle = self.context.clock.seconds() - self._fragments_seen
        if idle >= FRAGMENT_IDLE_TIMEOUT:
            self.log.warn("dropping {size} bytes of fragments from {peer}: none arrived or was used for {idle:.0f} s",
                          size=self._fragments.total, peer=self.peer_address, idle=idle)
            self._fragments.clear()
        else:
            self._fragments_checked = self.context.clock.callLater(FRAGMENT_IDLE_TIMEOUT - idle, self._check_fragments)

    def _serve(self, command, kw):
        d = defer.maybeDeferred(self._receive, command, kw)
        d.addCallback(self._response, command)
        d.addErrback(self._error_response, command)
        return d

    def _receive(self, command, kw):
        for key, argument in _BLOBS[command]:
            value = kw[key]
            if isinstance(value, BlobRef):
                value = self._fragments.take(value.blob)
                self._note_fragments()
            try:
                kw[key] = argument.decode(value)
            except ValueError as error:
                raise e.InvalidRequest(f"{command.__name__}.{key}: {error}") from None
        try:
            message = codec.from_fields(command.message_type, kw)
        except ValueError as error:
            raise e.InvalidRequest(str(error)) from None
        claimed = _claimant(message)
        if claimed and self.policy is not None:
            try:
                self.policy.check_claim(claimed, self.peer_certificate_names)
            except e.Unauthorized as refusal:
                self.log.warn("refused a {command} request: {refusal}", command=command.__name__, refusal=str(refusal))
                raise
        handler = self.context.handler
        if handler is None:
            raise e.Stopped("this member is not running")
        return handler.receive(message)

    def _response(self, reply, command):
        if not isinstance(reply, command.reply_type):
            raise TypeError(f"the handler answered {command.__name__} with {type(reply).__name__}")
        return codec.to_fields(reply)

    def _error_response(self, failure, command):
        if failure.check(e.InvalidRequest):
            # Refused before anything was stored; say who sent it.
            self.log.warn("refused a {command} request from {peer} {names}: {error}", command=command.__name__,
                          peer=self.peer_address, names=sorted(self.peer_certificate_names),
                          error=failure.getErrorMessage())
            return failure
        if failure.check(e.NotLeader):
            # AMP carries only a description: make it the leader's id.
            leader = failure.value.leader
            raise e.NotLeader(leader, message=leader)
        if failure.check(e.RaftError):
            return failure
        self.log.failure("the handler failed on a {command} request", failure, command=command.__name__)
        raise e.RaftError(f"internal error in the member handling {command.__name__}")

    # -- sending ---------------------------------------------------------------

    async def send(self, message):
        """
        Send the request ``message`` over this connection, fragmenting large fields.

        :returns: its reply message.
        :raises InvalidRequest: when a field is over ``max_message_bytes``
            (nothing is sent).
        :raises TransportError: when the reply is malformed.
        """
        command = commands.COMMANDS[type(message)]
        arguments = codec.to_fields(message, packed=True)
        limit = self.context.max_message_bytes
        while self._upload_waiters is not None:
            # An earlier request is still uploading fragments: sending this
            # one now would overtake it (a follower would see a gap in the
            # log and refuse, and the leader would send everything again).
            turn: defer.Deferred[None] = defer.Deferred()
            self._upload_waiters.append(turn)
            await turn
        uploads = []
        for key, argument in _BLOBS[command]:
            # Entries come packed already (each encoded once, for every follower and the disk).
            raw = argument.encode(arguments[key])
            if len(raw) > limit:
                raise e.InvalidRequest(f"{command.__name__}.{key} is {len(raw)} bytes; the limit is {limit}")
            if len(raw) > FRAGMENT_SIZE:
                uploads.append((key, raw))
            else:
                arguments[key] = Encoded(raw)
        if not uploads:
            return await self.call(command, arguments)
        self._upload_waiters = waiters = []
        try:
            for key, raw in uploads:
                arguments[key] = await self.upload(raw)
            sent = self.call(command, arguments)
        finally:
            # The command is on its way (or failed): the next requests go,
            # in the order they came.
            self._upload_waiters = None
            for turn in waiters:
                turn.callback(None)
        return await sent

    def call(self, command, arguments):
        """:returns: a Deferred firing with ``command``'s reply message."""
        try:
            d = self.callRemote(command, **arguments)
        except amp.TooLong as error:
            return defer.fail(e.TransportError(f"{command.__name__}: a value is too long for AMP: {error}"))
        return d.addCallback(self._reply_message, command)

    def _reply_message(self, response, command):
        try:
            return codec.from_fields(command.reply_type, response)
        except ValueError as error:
            raise e.TransportError(f"malformed {command.__name__} reply: {error}") from None

    async def upload(self, raw: bytes) -> BlobRef:
        """Send ``raw`` as a Fragment sequence; :returns: the reference to it."""
        blob = self._next_blob
        self._next_blob += 1

        def send(offset, data):
            return self.callRemote(commands.Fragment, blob=blob, offset=offset, data=data)

        try:
            await fragments.upload(send, raw)
        except BaseException:
            if not self.closed.called:  # tell the receiver to drop what it holds of the value
                self.callRemote(commands.Fragment, blob=blob, data=b"", discard=True).addErrback(lambda _: None)
            raise
        return BlobRef(blob)


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, context):
        self.context = context

    def buildProtocol(self, addr):
        return MemberProtocol(self.context, "server")


@implementer(ITransport)
class AMPTransport:
    """
    Member RPCs as AMP commands over mutual TLS (or plain TCP when insecure).

    :param listen: ``"host:port"`` to listen on; port 0 picks a free port.
    :param cert: this member's certificate: a PEM file path or a
        ``cryptography`` certificate.
    :param key: its private key: a PEM file path or a ``cryptography`` key.
    :param ca: the cluster CA: a PEM file path, a certificate or a list of them.
    :param credentials: already loaded
        :class:`~txraft.transport.tls.TLSCredentials`; when given, ``cert``,
        ``key`` and ``ca`` are not used.
    :param acl: certificate names admitted (see :mod:`txraft.transport.tls`).
    :param peer_names: member id -> certificate name that member must carry.
    :param insecure: plain TCP, no authentication at all (a warning is logged).
    :param reactor: provides TCP, SSL and time; the global reactor when ``None``.
    :param max_message_bytes: largest encoded field sent or accepted.
    :param connect_timeout: seconds a connection attempt may take.
    :param initial_delay: seconds before the first reconnection attempt.
    :param max_delay: the longest wait between reconnection attempts.
    :param random: a ``random.Random`` for the reconnection jitter.
    :param connection_limits: the
        :class:`~txraft.transport.limits.ConnectionLimits` of the member port.

    :ivar connection_guard: the port's
        :class:`~txraft.transport.limits.ConnectionGuard` (its counts feed the metrics).

    :ivar address: the member id, ``host:port``; after :meth:`start` it has the
        port actually bound.
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
        credentials=None,
        acl=(),
        peer_names=None,
        insecure=False,
        reactor=None,
        max_message_bytes=MAX_MESSAGE_BYTES,
        connect_timeout=5.0,
        initial_delay=0.05,
        max_delay=2.0,
        random=None,
        connection_limits=MEMBER_LIMITS,
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
        self._acl = tuple(acl or ())
        if self.insecure:
            self._policy = None
            self._credentials = None
            self._tls_options = None
        else:
            if credentials is None:
                credentials = TLSCredentials.load(cert, key, ca)
            self._policy = AccessPolicy.build(acl, credentials.certificate, self.peer_names)
            self._credentials = credentials
            self._tls_options = credentials.options()
        self._retry_policy = retry_policy(initial_delay, max_delay, random or _random_module.Random())
        self._context = MemberContext(self._policy, max_message_bytes, reactor)
        self.connection_guard = ConnectionGuard("member", connection_limits, reactor)
        self._port = None
        self._links: Dict[str, PeerLink] = {}

    @classmethod
    def from_config(cls, config, reactor=None, credentials=None, **kwargs) -> "AMPTransport":
        """
        :param credentials: the member's
            :class:`~txraft.transport.tls.TLSCredentials` if already loaded;
            otherwise they are loaded from ``config.cert``, ``key`` and ``ca``.
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
            credentials=credentials,
            acl=config.acl,
            peer_names=config.peer_names,
            insecure=config.insecure,
            reactor=reactor,
            **kwargs,
        )

    def follow_configuration(self, configuration):
        """
        Admit the certificate names recorded in the membership
        ``configuration`` (a :class:`~txraft.core.membership.Configuration`)
        besides the ``acl`` given at construction, and require each member's
        recorded name of it: the ACL follows runtime membership changes.
        New connections see the change; established ones keep their check.
        """
        if self.insecure:
            return
        for member in configuration.members + (configuration.old or ()):
            if member.name:
                self.peer_names[member.id] = member.name
        acl = set(self._acl) | set(configuration.names())
        self._policy = AccessPolicy.build(sorted(acl), self._credentials.certificate, self.peer_names)
        self._context.policy = self._policy

    @property
    def handler(self):
        """The :class:`~txraft.interfaces.IRPCHandler` given to :meth:`start`; ``None`` after :meth:`stop`."""
        return self._context.handler

    # -- ITransport --------------------------------------------------------------

    def start(self, handler):
        """
        Listen for peers and deliver their requests to ``handler``.

        :returns: a Deferred firing with :attr:`address` once listening.
        """
        if self._context.stopping:
            return defer.fail(e.Stopped("this transport was stopped"))
        self._context.handler = handler
        endpoint = server_endpoint(self.reactor, self.host, self._listen_port, self._credentials,
                                   self.connection_guard)

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

        return endpoint.listen(_ServerFactory(self._context)).addCallback(listening)

    def send(self, peer, message):
        """
        Send a request from :mod:`txraft.messages` to member ``peer``.

        :returns: a cancellable Deferred firing with the reply message, or
            failing with the peer's :class:`~txraft.errors.RaftError` or a
            :class:`~txraft.errors.TransportError`.
        :raises TypeError: when ``message`` is not a member request.
        """
        if type(message) not in commands.COMMANDS:
            raise TypeError(f"cannot send {type(message).__name__}: not a member request")
        if self._context.stopping:
            return defer.fail(e.Stopped("this transport was stopped"))
        try:
            link = self._link(peer)
        except e.RaftError:
            return defer.fail()
        d = defer.Deferred.fromCoroutine(self._send(link, message))
        return d.addErrback(_as_transport_error, peer)

    def stop(self):
        """
        Stop listening, close every connection and stop reconnecting.

        :returns: a Deferred that fires when all of it is done.
        """
        self._context.stopping = True
        self._context.handler = None
        waits = []
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        for link in self._links.values():
            waits.append(link.stop())
        self._links.clear()
        for protocol in list(self._context.connections):
            waits.append(protocol.closed)
            protocol.transport.abortConnection()
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- internals ---------------------------------------------------------------

    def _link(self, peer) -> PeerLink:
        link = self._links.get(peer)
        if link is None:
            host, port = parse_host_port(peer, "peer")
            link = self._links[peer] = PeerLink(
                peer,
                client_endpoint(self.reactor, host, port, bind_host=self.host, timeout=self.connect_timeout),
                lambda link: MemberProtocol(self._context, "client", link.expected_name, link),
                expected_name=self.peer_names.get(peer),
                tls_options=self._tls_options,
                retry_policy=self._retry_policy,
                clock=self.reactor,
                member=self.address,
            )
            link.start()
        return link

    async def _send(self, link, message):
        protocol = await link.connection()
        return await protocol.send(message)
