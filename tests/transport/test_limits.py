"""
Connection limits on real sockets (issue 9, finding 2): sockets that never
start TLS, or never send a request, are closed after a deadline; connections
over the cap of a port or of one source address are closed at accept; both
are counted for the metrics.  The member port and the HTTPS API alike.
"""

import pytest
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.web import resource

from txraft import messages as m
from txraft.service import ClientCertificateSite
from txraft.transport.limits import ConnectionGuard, ConnectionLimits
from txraft.transport.tls import TLSCredentials, server_endpoint

from .conftest import Recorder, bounded

QUICK = dict(handshake_timeout=0.3, idle_timeout=0.3)


class Idle(protocol.Protocol):
    """A client that connects and says nothing."""

    def __init__(self):
        self.made = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def connectionLost(self, reason):
        self.lost.callback(None)


async def idle_socket(address, source="127.0.0.50"):
    host, port = address.rsplit(":", 1)
    client = Idle()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port), bindAddress=(source, 0))
    await endpoints.connectProtocol(endpoint, client)
    return client


async def until(condition, seconds=5.0):
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    assert condition()


@pytest.mark.parametrize("insecure", [False, True], ids=["tls", "plain"])
@bounded(20)
async def test_member_port_closes_sockets_that_never_become_peer_links(members, insecure):
    server = await members.started(1, connection_limits=ConnectionLimits(16, 16, **QUICK), insecure=insecure)
    sockets = [await idle_socket(server.address) for _ in range(5)]
    await defer.gatherResults([s.lost for s in sockets])
    guard = server.connection_guard
    assert guard.timed_out == ({"handshake": 5, "idle": 0} if not insecure else {"handshake": 0, "idle": 5})
    await until(lambda: guard.open == 0)


@bounded(20)
async def test_an_established_peer_link_outlives_the_deadlines(members):
    server = await members.started(1, Recorder(), connection_limits=ConnectionLimits(16, 16, **QUICK))
    clock = server.connection_guard.clock = task.Clock()
    client = await members.started(2)
    await client.send(server.address, m.GetLeader())
    clock.advance(3600)  # every deadline passes; a peer link must stay
    assert server.connection_guard.timed_out == {"handshake": 0, "idle": 0}
    assert server.connection_guard.open == 1
    await client.send(server.address, m.GetLeader())


@bounded(20)
async def test_a_peer_link_with_nothing_to_send_is_not_closed_as_idle(members):
    server = await members.started(1, Recorder(), connection_limits=ConnectionLimits(16, 16, **QUICK))
    clock = server.connection_guard.clock = task.Clock()
    client = await members.started(2)
    handler = server.handler
    await client._link(server.address).connection()  # connected and admitted; no request sent
    await until(lambda: server.connection_guard.open == 1 and all(
        c.heard for c in server._context.connections))
    clock.advance(3600)
    assert server.connection_guard.timed_out == {"handshake": 0, "idle": 0}
    assert handler.received == []  # the greeting never reaches the Raft core
    await client.send(server.address, m.GetLeader())


@bounded(20)
async def test_member_port_refuses_connections_over_its_caps_at_accept(members):
    server = await members.started(1, connection_limits=ConnectionLimits(3, 2, handshake_timeout=30))
    guard = server.connection_guard
    first = [await idle_socket(server.address, "127.0.0.50") for _ in range(2)]
    await until(lambda: guard.open == 2)
    over_source = await idle_socket(server.address, "127.0.0.50")
    await over_source.lost  # closed at once, not after the 30 s deadline
    assert guard.refused == {"port": 0, "source": 1}
    third = await idle_socket(server.address, "127.0.0.51")
    await until(lambda: guard.open == 3)
    over_port = await idle_socket(server.address, "127.0.0.52")
    await over_port.lost
    assert guard.refused == {"port": 1, "source": 1}
    for s in first + [third]:
        assert not s.lost.called
        s.made.result.transport.loseConnection()
    await defer.gatherResults([s.lost for s in first + [third]])
    await until(lambda: guard.open == 0)
    # Counted for /metrics.
    text = metrics_text(guard)
    assert 'txraft_connections_refused_total{port="member",reason="source"} 1.0' in text
    assert 'txraft_connections_refused_total{port="member",reason="port"} 1.0' in text
    assert 'txraft_connections_open{port="member"} 0.0' in text


def metrics_text(guard):
    from prometheus_client import CollectorRegistry, generate_latest

    from txraft.metrics import _connection_families

    class Collector:
        def collect(self):
            return _connection_families([guard])

    registry = CollectorRegistry()
    registry.register(Collector())
    return generate_latest(registry).decode()


@bounded(20)
async def test_https_port_has_the_same_deadline_and_caps(pki):
    credentials = TLSCredentials.load(**pki.files("member1"))
    guard = ConnectionGuard("http", ConnectionLimits(2, 1, handshake_timeout=0.3), reactor)
    site = ClientCertificateSite(resource.Resource(), client_acl=["client"], reactor=reactor)
    port = await server_endpoint(reactor, "127.0.0.11", 0, credentials, guard).listen(site)
    try:
        address = f"127.0.0.11:{port.getHost().port}"
        idle = await idle_socket(address, "127.0.0.50")
        refused = await idle_socket(address, "127.0.0.50")
        await refused.lost
        assert guard.refused["source"] == 1 and not idle.lost.called
        await idle.lost
        assert guard.timed_out["handshake"] == 1
        assert 'txraft_connections_timed_out_total{port="http",stage="handshake"} 1.0' in metrics_text(guard)
    finally:
        await port.stopListening()
        await site.close_connections()


@bounded(20)
async def test_an_admitted_peer_sending_a_box_of_too_many_keys_is_cut_off_over_tls(members, logged):
    """Finding 4 on real sockets: one never-finished box of 5,120 keys of 60 KiB grew a member by 300 MiB."""
    import struct

    from txraft.transport.amp import MAX_BOX_BYTES

    server = await members.started(1, Recorder())
    client = await members.started(2)
    link = await client._link(server.address).connection()
    value = struct.pack(">H", 60 * 1024) + b"x" * (60 * 1024)
    for i in range(5120):
        if link.closed.called:
            break
        link.transport.write(struct.pack(">H", 6) + b"k%05d" % i + value)
        if i % 8 == 7:
            await task.deferLater(reactor, 0, lambda: None)  # let the server read
    await link.closed
    assert i < 5120
    # Three keys of 60 KiB already pass the byte limit of a box.
    assert any(f"a box of more than {MAX_BOX_BYTES} bytes" in line and "member2" in line for line in logged)
