"""
A member's HTTP API driven in memory: the site ``twistd raft`` serves
(:class:`txraft.service.ClientCertificateSite` with
:func:`txraft.http.create_api`), one connection on a string transport, and a
stub member whose appends wait until the caller resolves them.  No socket,
no TLS, no Raft: for tests and measurements of what the HTTP layer itself
does with each request::

    api = InMemoryAPI()
    api.channel.dataReceived(b"PUT /v1/kv/k HTTP/1.1\\r\\nHost: m1\\r\\nContent-Length: 1\\r\\n\\r\\nv")
    command, d = api.member.appends.pop()
    d.callback(WriteResult(index=1))
    api.transport.value()          # b"HTTP/1.1 200 OK\\r\\n..."
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import StringTransport

from txraft.messages import Role, Status

__all__ = ["StubMember", "CountingTransport", "InMemoryAPI"]


class StubMember:
    """
    Enough of :class:`txraft.member.Raft` for :func:`txraft.http.create_api`.

    :ivar reactor: a :class:`twisted.internet.task.Clock`, the site's too.
    :ivar appends: ``(command, Deferred)`` of every append not yet taken by
        the caller, oldest first; the caller fires the Deferred as the member
        would (a :class:`txraft.kv.WriteResult`, or a failure).
    """

    def __init__(self) -> None:
        self.reactor = task.Clock()
        self.appends: List[Tuple[bytes, defer.Deferred[Any]]] = []

    def append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.appends.append((command, d))
        return d

    def status(self) -> Status:
        return Status(id="m1", role=Role.LEADER, leader="m1", term=1, commit_index=1, applied_index=1,
                      last_index=1, members=("m1",))


class CountingTransport(StringTransport):
    """
    A string transport that counts the writes it is given and the times it
    is asked for its local address.
    """

    writes = 0
    host_asked = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes += 1
        super().writeSequence(data)

    def getHost(self) -> IAddress:
        self.host_asked += 1
        return super().getHost()


class InMemoryAPI:
    """
    One open connection to the key-value HTTP API of a :class:`StubMember`.

    :ivar member: the :class:`StubMember`.
    :ivar site: the :class:`txraft.service.ClientCertificateSite` (no client
        ACL, as for plain HTTP).
    :ivar channel: the connection's HTTP channel: feed it request bytes with
        ``dataReceived``.
    :ivar transport: its :class:`CountingTransport`: the answers written.
    """

    def __init__(self) -> None:
        from txraft.http import create_api
        from txraft.kv import KeyValueStore
        from txraft.service import ClientCertificateSite

        self.member = StubMember()
        self.site = ClientCertificateSite(create_api(self.member, KeyValueStore()),  # type: ignore[arg-type]
                                          reactor=self.member.reactor)
        client = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = self.site.buildProtocol(client)
        self.transport = CountingTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8001), peerAddress=client)
        self.channel.makeConnection(self.transport)
