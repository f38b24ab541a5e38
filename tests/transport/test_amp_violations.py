"""Protocol violations close only the offending connection; peer failures and cancellation."""

import pytest
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp

from txraft import errors as e
from txraft import messages as m
from txraft.config import parse_host_port
from txraft.transport.tls import TLSCredentials

from .bad_commands import BadlyTypedVote, Bogus
from .conftest import Recorder, bounded


class Raw(Protocol):
    """Writes ``payload`` once connected and records what comes back."""

    def __init__(self, payload):
        self.payload = payload
        self.received = b""
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


def tls_endpoint(pki, address, name="member2", source="127.0.0.12"):
    host, port = parse_host_port(address)
    options = TLSCredentials.load(**pki.files(name)).options()
    tcp = endpoints.TCP4ClientEndpoint(reactor, host, port, bindAddress=(source, 0))
    return endpoints.wrapClientTLS(options, tcp)


class Lost(amp.AMP):
    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


async def assert_member_still_serves(client, server):
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)


@bounded(10)
async def test_garbage_bytes_close_only_that_connection(members, pki):
    handler = Recorder()
    server = await members.started(1, handler)
    member = await members.started(3)
    await assert_member_still_serves(member, server)
    raw = Raw(b"\xff\xff" + b"this is not AMP" * 100)
    await tls_endpoint(pki, server.address).connect(Factory.forProtocol(lambda: raw))
    await raw.lost
    await assert_member_still_serves(member, server)
    assert handler.received == [m.ReadIndex(), m.ReadIndex()]


@bounded(10)
async def test_plain_bytes_to_a_tls_member_close_only_that_connection(members):
    server = await members.started(1)
    member = await members.started(3)
    host, port = parse_host_port(server.address)
    raw = Raw(b"GET / HTTP/1.0\r\n\r\n")
    await endpoints.TCP4ClientEndpoint(reactor, host, port).connect(Factory.forProtocol(lambda: raw))
    await raw.lost
    await assert_member_still_serves(member, server)


@pytest.mark.parametrize(
    "command, arguments",
    [
        (Bogus, {}),
        (BadlyTypedVote, dict(term="two", candidate="x", last_log_index=0, last_log_term=0, disrupt=False,
                              pre_vote=False)),
    ],
    ids=["unknown-command", "wrong-argument-type"],
)
@bounded(10)
async def test_a_bad_amp_box_gets_an_error_and_its_connection_closes(members, pki, command, arguments):
    handler = Recorder()
    server = await members.started(1, handler)
    member = await members.started(3)
    await assert_member_still_serves(member, server)
    bad = Lost()
    await tls_endpoint(pki, server.address).connect(Factory.forProtocol(lambda: bad))
    with pytest.raises(amp.UnknownRemoteError) as raised:
        await bad.callRemote(command, **arguments)
    assert "bad request" in str(raised.value)
    await bad.lost
    await assert_member_still_serves(member, server)
    assert handler.received == [m.ReadIndex(), m.ReadIndex()]


@bounded(10)
async def test_a_down_peer_fails_fast_with_transport_error(members):
    client = await members.started(2)
    # Nobody listens on 127.0.0.19:1.
    with pytest.raises(e.TransportError):
        await client.send("127.0.0.19:1", m.ReadIndex())
    # While the link backs off, calls fail at once instead of queueing.
    d = client.send("127.0.0.19:1", m.ReadIndex())
    assert d.called
    with pytest.raises(e.TransportError):
        await d


@bounded(10)
async def test_calls_in_flight_fail_with_transport_error_when_the_connection_drops(members):
    arrived = defer.Deferred()

    def hold(message):
        arrived.callback(None)
        return defer.Deferred()  # never answered

    server = await members.started(1, Recorder(hold))
    client = await members.started(2)
    pending = client.send(server.address, m.ReadIndex())
    await arrived
    for protocol in list(server._context.connections):
        protocol.transport.abortConnection()
    with pytest.raises(e.TransportError):
        await pending


@bounded(10)
async def test_send_can_be_cancelled_and_the_connection_still_works(members):
    replies = {m.ReadIndex: defer.Deferred()}

    def respond(message):
        if isinstance(message, m.ReadIndex):
            return replies[m.ReadIndex]
        return m.GetLeaderReply("x")

    server = await members.started(1, Recorder(respond))
    client = await members.started(2)
    pending = client.send(server.address, m.ReadIndex())
    pending.cancel()
    with pytest.raises(defer.CancelledError):
        await pending
    # The abandoned call's late reply is ignored.
    assert await client.send(server.address, m.GetLeader()) == m.GetLeaderReply("x")
    replies[m.ReadIndex].callback(m.ReadIndexReply(1))
    assert await client.send(server.address, m.GetLeader()) == m.GetLeaderReply("x")


@bounded(10)
async def test_send_times_out_with_add_timeout(members):
    server = await members.started(1, Recorder(lambda message: defer.Deferred()))
    client = await members.started(2)
    with pytest.raises(defer.TimeoutError):
        await client.send(server.address, m.ReadIndex()).addTimeout(0.2, reactor)


@bounded(10)
async def test_cancelling_a_large_send_mid_upload(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    await client.send(server.address, m.ReadIndex())
    pending = client.send(server.address, m.ForwardAppend(b"x" * (8 * 1024 * 1024), m.RequestId("s", 1, 1)))
    reactor.callLater(0.005, pending.cancel)
    with pytest.raises(defer.CancelledError):
        await pending
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
    # The abandoned fragments were discarded on the receiver.
    (accepted,) = [p for p in server._context.connections if p.side == "server"]
    assert accepted._fragments.total == 0


@bounded(10)
async def test_send_after_stop_fails_with_stopped(members):
    client = await members.started(2)
    await client.stop()
    with pytest.raises(e.Stopped):
        await client.send("127.0.0.11:7001", m.ReadIndex())
