"""
One member's HTTP API driven in memory (:mod:`txraft.testing.http`):
requests fed to the channel of a :class:`txraft.service.ClientCertificateSite`,
answers read from a string transport, the member stood in for by a stub whose
``append`` the test resolves.  This checks what reaches the transport for each
request, which the socket-level tests cannot see.
"""

import json

from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from txraft import errors
from txraft.kv import WriteResult
from txraft.testing.http import InMemoryAPI


def connect():
    """:returns: ``(member, channel, transport)`` for one open connection."""
    api = InMemoryAPI()
    return api.member, api.channel, api.transport


def put(channel, key, value=b"v" * 10):
    channel.dataReceived(b"PUT /v1/kv/%s HTTP/1.1\r\nHost: m1\r\nContent-Length: %d\r\n\r\n%s"
                         % (key, len(value), value))


def parse(raw):
    """:returns: ``(status, headers, body)`` of the one response in ``raw``."""
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_put_is_answered_once_its_append_is_applied():
    member, channel, transport = connect()
    put(channel, b"k")
    assert transport.value() == b""  # nothing before the member applies it
    [(command, d)] = member.appends
    d.callback(WriteResult(index=7))
    code, headers, body = parse(transport.value())
    assert code == 200
    assert json.loads(body) == {"index": 7} and body == json.dumps({"index": 7}).encode() + b"\n"
    assert headers[b"content-length"] == b"%d" % len(body)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"cache-control"] == b"no-store"
    channel.connectionLost(Failure(ConnectionError("test over")))


def test_a_refused_append_is_answered_429_with_retry_after():
    member, channel, transport = connect()
    put(channel, b"k")
    member.appends[0][1].errback(errors.Busy("full", retry_after=1.5))
    code, headers, body = parse(transport.value())
    assert code == 429 and headers[b"retry-after"] == b"2"
    assert json.loads(body)["retry_after"] == 1.5
    channel.connectionLost(Failure(ConnectionError("test over")))


def test_the_answer_to_a_client_that_has_gone_is_dropped_without_an_error():
    member, channel, transport = connect()
    put(channel, b"k")
    channel.connectionLost(Failure(ConnectionError("client went away")))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        member.appends[0][1].callback(WriteResult(index=7))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert transport.value() == b""
    assert [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.warn] == []


def test_a_connection_asks_its_transport_for_the_local_address_once():
    member, channel, transport = connect()
    for i in range(3):
        put(channel, b"k%d" % i)
        member.appends[-1][1].callback(WriteResult(index=i + 1))
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert transport.host_asked == 1
    channel.connectionLost(Failure(ConnectionError("test over")))


# -- the idle timeout ------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_sites_timeout():
    member, channel, transport = connect()
    idle = channel.timeOut
    assert idle == 60  # twisted.web's default for a Site
    member.reactor.advance(idle / 2)
    channel.dataReceived(b"PUT /v1/kv/k HTTP/1.1\r\n")  # a byte received restarts the count
    member.reactor.advance(idle - 1)
    assert not transport.disconnecting
    member.reactor.advance(1)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionError("timed out")))
    assert member.reactor.getDelayedCalls() == []


def test_a_request_in_hand_is_not_timed_out_and_idleness_counts_from_its_answer():
    member, channel, transport = connect()
    idle = channel.timeOut
    put(channel, b"k")
    member.reactor.advance(idle * 3)  # the member takes its time
    assert not transport.disconnecting
    member.appends[0][1].callback(WriteResult(index=1))
    member.reactor.advance(idle - 1)
    assert not transport.disconnecting
    member.reactor.advance(1)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionError("timed out")))


def test_requests_make_no_timer_of_their_own():
    member, channel, transport = connect()
    [timer] = member.reactor.getDelayedCalls()
    for i in range(3):
        put(channel, b"k%d" % i)
        member.reactor.advance(1)
        member.appends[-1][1].callback(WriteResult(index=i + 1))
        assert member.reactor.getDelayedCalls() == [timer]
    channel.connectionLost(Failure(ConnectionError("test over")))
    assert member.reactor.getDelayedCalls() == []


def test_a_shorter_timeout_set_later_applies_from_then():
    member, channel, transport = connect()
    member.reactor.advance(10)
    channel.setTimeout(5)
    member.reactor.advance(4.9)
    assert not transport.disconnecting
    member.reactor.advance(0.1)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionError("timed out")))
