"""
The HTTP API reads bodies within its limit (issue 9, finding 3): a body
declared or received above ``max_body_bytes`` gets a JSON 413 at once and the
connection is closed; nothing beyond the limit is stored and the resource is
never called.  Real sockets on loopback.
"""

import json

import pytest
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.web.resource import Resource

from txraft.http import BoundedRequest
from txraft.service import ClientCertificateSite
from tests.test_http import bounded

LIMIT = 64 * 1024


class Recording(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []

    def render(self, request):
        self.bodies.append(request.content.read())
        return b"ok"


class MeasuredRequest(BoundedRequest):
    """Records the most bytes any request ever held in its content file."""

    most = 0

    def handleContentChunk(self, data):
        super().handleContentChunk(data)
        if self.content is not None:
            MeasuredRequest.most = max(MeasuredRequest.most, self.content.tell())


class Client(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(self.received)


@pytest.fixture
def site():
    MeasuredRequest.most = 0
    made = ClientCertificateSite(Recording(), reactor=reactor, max_body_bytes=LIMIT)
    made.requestFactory = MeasuredRequest
    return made


async def serve(site):
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    client = Client()
    await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    return port, client


def status_and_error(response):
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)["error"]


@bounded(10)
async def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_read(site):
    port, client = await serve(site)
    try:
        client.transport.write(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                               b"Expect: 100-continue\r\n\r\n" % (300 << 20))
        response = await client.lost  # closed by the server, not by the client
        code, error = status_and_error(response)
        assert code == 413 and str(300 << 20) in error and str(LIMIT) in error
        assert b"100 Continue" not in response
        assert site.resource.bodies == [] and MeasuredRequest.most == 0
    finally:
        await port.stopListening()


@bounded(10)
async def test_chunks_over_the_limit_are_refused_as_soon_as_they_pass_it(site):
    port, client = await serve(site)
    try:
        client.transport.write(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        for _ in range(64):  # 1 MiB, if it were all read
            client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = await client.lost
        code, error = status_and_error(response)
        assert code == 413 and str(LIMIT) in error
        assert site.resource.bodies == []
        assert MeasuredRequest.most <= LIMIT
    finally:
        await port.stopListening()


@bounded(10)
async def test_a_body_within_the_limit_is_served(site):
    port, client = await serve(site)
    try:
        body = b"y" * LIMIT
        client.transport.write(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        response = await client.lost
        assert response.startswith(b"HTTP/1.1 200") and site.resource.bodies == [body]
    finally:
        await port.stopListening()
