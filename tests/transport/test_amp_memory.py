"""
The member protocol in memory (no sockets, no TLS): fragmentation of large
values, its limits, protocol violations, and the bytes on the wire.

Two :class:`MemberProtocol` instances are joined with ``twisted.test.iosim``;
``pump.flush()`` delivers everything in flight, both ways, until nothing moves,
so each exchange completes synchronously.  The real-socket tests beside this
file cover TLS, links and reconnection.
"""

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from txraft import errors as e
from txraft import messages as m
from txraft.transport import commands, fragments
from txraft.transport.amp import MemberContext, MemberProtocol
from txraft.transport.arguments import BlobRef

from .bad_commands import BadlyTypedVote, Bogus, RawEntries
from .conftest import Recorder

KiB = 1024
LIMIT = fragments.MAX_MESSAGE_BYTES


class Pair:
    """A client and a server MemberProtocol joined in memory."""

    def __init__(self, handler=None, server_limit=LIMIT, client_limit=LIMIT):
        self.handler = handler or Recorder()
        server_context = MemberContext(None, server_limit)
        server_context.handler = self.handler
        self.server = MemberProtocol(server_context, "server")
        self.client = MemberProtocol(MemberContext(None, client_limit), "client")
        self.server_io = iosim.makeFakeServer(self.server)
        self.client_io = iosim.makeFakeClient(self.client)
        self.pump = iosim.connect(self.server, self.server_io, self.client, self.client_io)

    def outcome(self, d):
        """Deliver everything, then :returns: the result of Deferred (or coroutine) ``d``; a Failure if it failed."""
        results = []
        # Listen before delivering: AMP drops the connection over an error
        # answer nobody listens for.
        defer.ensureDeferred(d).addBoth(results.append)
        self.pump.flush()
        assert results, "no answer arrived"
        return results[0]

    def send(self, message):
        """:returns: the reply to ``message``; raises what the call failed with."""
        return self._raising(self.outcome(self.client.send(message)))

    def call(self, command, arguments):
        """:returns: the reply message of ``command`` sent with the wire forms ``arguments``."""
        return self._raising(self.outcome(self.client.call(command, arguments)))

    @staticmethod
    def _raising(result):
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def fragment(self, **arguments):
        return self.outcome(self.client.callRemote(commands.Fragment, **arguments))


class RecordingReassembly(fragments.Reassembly):
    def __init__(self, *args):
        super().__init__(*args)
        self.added = []

    def add(self, blob, data, offset=None):
        self.added.append((blob, offset, len(data)))
        super().add(blob, data, offset)


def record_fragments(protocol):
    protocol._fragments = RecordingReassembly(protocol._fragments.max_message, protocol._fragments.max_pending)
    return protocol._fragments


# -- fragmentation ---------------------------------------------------------------


def test_a_large_value_is_split_into_fragments_and_reassembled():
    pair = Pair()
    received = record_fragments(pair.server)
    command = bytes(range(256)) * 800  # 200 KiB
    reply = pair.send(m.ForwardAppend(command, m.RequestId("s", 1, 1)))
    assert reply == m.ForwardAppendReply(3, len(command))
    assert pair.handler.received == [m.ForwardAppend(command, m.RequestId("s", 1, 1))]
    size = fragments.FRAGMENT_SIZE
    assert received.added == [(0, offset, min(size, len(command) - offset)) for offset in range(0, len(command), size)]
    assert received.total == 0  # consumed by the command


def test_a_small_value_travels_inline():
    pair = Pair()
    received = record_fragments(pair.server)
    pair.send(m.ForwardAppend(b"x" * fragments.FRAGMENT_SIZE, m.RequestId("s", 1, 1)))
    assert received.added == []


def test_a_large_batch_of_entries_is_reassembled():
    pair = Pair()
    entries = tuple(m.Entry(2, i, data=bytes([i % 256]) * 1000, request_id=m.RequestId("s", i, 1))
                    for i in range(1, 301))
    request = m.AppendEntries(2, "127.0.0.12:7002", 0, 0, entries, 0)
    assert pair.send(request).match_index == 300
    assert pair.handler.received == [request]


def test_requests_sent_while_a_large_one_uploads_arrive_after_it_in_order():
    # A leader pipelines AppendEntries; one that overtook a fragmented one
    # would reach the follower as a gap in its log, be refused, and make the
    # leader send everything again.
    pair = Pair()
    big = tuple(m.Entry(2, i, data=b"x" * 1000) for i in range(1, 201))  # about 200 KiB: fragmented
    requests = [m.AppendEntries(2, "127.0.0.12:7002", 0, 0, big, 0),
                m.AppendEntries(2, "127.0.0.12:7002", 200, 2, (m.Entry(2, 201, data=b"y"),), 0),
                m.AppendEntries(2, "127.0.0.12:7002", 201, 2, (), 0),
                m.AppendEntries(2, "127.0.0.12:7002", 0, 0, big, 0),
                m.AppendEntries(2, "127.0.0.12:7002", 201, 2, (), 0)]
    sent = [defer.ensureDeferred(pair.client.send(request)) for request in requests]
    pair.pump.flush()
    assert all(d.called for d in sent)
    assert pair.handler.received == requests


def test_at_most_a_window_of_fragments_is_unacknowledged():
    pair = Pair()
    received = record_fragments(pair.server)
    d = defer.ensureDeferred(pair.client.send(m.ForwardAppend(b"x" * (1024 * KiB), m.RequestId("s", 1, 1))))
    pair.pump.pump()  # the client's first writes reach the server; no answer has come back yet
    assert len(received.added) == fragments.FRAGMENT_WINDOW
    pair.pump.flush()
    assert len(received.added) == -(-1024 * KiB // fragments.FRAGMENT_SIZE)
    assert d.called


def test_a_sender_refuses_a_value_over_its_limit_before_writing():
    pair = Pair(client_limit=100 * KiB)
    pair.pump.flush()
    sent_before = len(pair.client_io.stream)
    with pytest.raises(e.InvalidRequest, match="limit"):
        pair.send(m.ForwardAppend(b"x" * (100 * KiB + 1), m.RequestId("s", 1, 1)))
    assert len(pair.client_io.stream) == sent_before
    assert pair.handler.received == []


def test_a_receiver_refuses_fragments_over_its_limit_and_keeps_serving():
    pair = Pair(server_limit=100 * KiB)
    with pytest.raises(e.InvalidRequest, match="limit"):
        pair.send(m.ForwardAppend(b"x" * (200 * KiB), m.RequestId("s", 1, 1)))
    assert pair.handler.received == []
    assert pair.server._fragments.total == 0
    assert pair.send(m.ReadIndex()) == m.ReadIndexReply(42)


def test_a_duplicated_fragment_is_refused_and_its_value_dropped():
    pair = Pair()
    assert pair.fragment(blob=7, offset=0, data=b"a" * 10) == {}
    duplicate = pair.fragment(blob=7, offset=0, data=b"a" * 10)
    assert duplicate.check(e.InvalidRequest) and "offset 0" in duplicate.getErrorMessage()
    assert pair.server._fragments.total == 0
    # The dropped value cannot be used; the connection still can.
    with pytest.raises(e.TransportError, match="not received"):
        pair.call(commands.Append, {"command": BlobRef(7), "request_id": ["s", 1, 1]})
    assert pair.send(m.ReadIndex()) == m.ReadIndexReply(42)


def test_a_fragment_out_of_order_is_refused():
    pair = Pair()
    assert pair.fragment(blob=1, offset=0, data=b"a" * 10) == {}
    skipped = pair.fragment(blob=1, offset=20, data=b"c" * 10)
    assert skipped.check(e.InvalidRequest)
    late = pair.fragment(blob=2, offset=10, data=b"b" * 10)  # the first fragment of 2 never came
    assert late.check(e.InvalidRequest)
    assert pair.server._fragments.total == 0


def test_fragments_without_offsets_from_older_senders_are_still_reassembled():
    pair = Pair()
    pair.fragment(blob=3, data=b"ab")
    pair.fragment(blob=3, data=b"cd")
    reply = pair.call(commands.Append, {"command": BlobRef(3), "request_id": ["s", 1, 1]})
    assert reply == m.ForwardAppendReply(3, 4)
    assert pair.handler.received[0].command == b"abcd"


# -- protocol violations ---------------------------------------------------------


@pytest.mark.parametrize(
    "command, arguments",
    [
        (Bogus, {}),
        (BadlyTypedVote, dict(term="two", candidate="x", last_log_index=0, last_log_term=0, disrupt=False,
                              pre_vote=False)),
        (RawEntries, dict(term=1, leader="x", prev_index=0, prev_term=0, entries=b"#not a blob", leader_commit=0)),
    ],
    ids=["unknown-command", "wrong-argument-type", "malformed-blob"],
)
def test_a_box_amp_cannot_parse_gets_an_error_and_closes_the_connection(command, arguments):
    pair = Pair()
    answer = pair.outcome(pair.client.callRemote(command, **arguments))
    assert answer.check(amp.UnknownRemoteError) and "bad request" in answer.getErrorMessage()
    assert pair.server_io.disconnected
    assert pair.handler.received == []


def on_string_transport(side, handler=None):
    """:returns: a MemberProtocol connected to a StringTransport, and the transport."""
    context = MemberContext(None, LIMIT)
    context.handler = handler
    protocol = MemberProtocol(context, side)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_garbage_bytes_close_the_connection():
    handler = Recorder()
    server, transport = on_string_transport("server", handler)
    assert server.context.connections == {server}
    server.dataReceived(b"\xff\xff" + b"this is not AMP" * 100)
    assert transport.disconnecting
    assert handler.received == []


@pytest.mark.parametrize(
    "command, arguments, message",
    [
        (commands.RequestVote, dict(term=-1, candidate="x", last_log_index=0, last_log_term=0, disrupt=False,
                                    pre_vote=False), "RequestVote.term"),
        (RawEntries, dict(term=1, leader="x", prev_index=0, prev_term=0, entries=b"=\xc1", leader_commit=0),
         "AppendToLog.entries"),
        (RawEntries, dict(term=1, leader="x", prev_index=0, prev_term=0,
                          entries=b"=\x91\x96\x02\x01\x01\x00\xc4\x00\xc0", leader_commit=0), "only entries"),
        (RawEntries, dict(term=1, leader="x", prev_index=0, prev_term=0, entries=b"=\x92" + b"\x90" * 20,
                          leader_commit=0), "an entry must be an array of 6 values"),
        (commands.Append, dict(command=b"x", request_id=["s", 1]), "RequestId has 3 fields"),
    ],
    ids=["negative-term", "entries-not-msgpack", "entries-not-entries", "empty-arrays", "short-request-id"],
)
def test_a_value_that_parses_but_is_malformed_is_an_invalid_request_and_the_connection_stays(
    command, arguments, message
):
    pair = Pair()
    answer = pair.outcome(pair.client.callRemote(command, **arguments))
    assert answer.check(e.InvalidRequest) and message in answer.getErrorMessage()
    assert not pair.server_io.disconnecting
    assert pair.handler.received == []
    assert pair.send(m.ReadIndex()) == m.ReadIndexReply(42)


def test_a_malformed_reply_is_a_transport_error():
    pair = Pair(Recorder(lambda message: m.ReadIndexReply(-1)))
    with pytest.raises(e.TransportError, match="malformed ReadIndex reply"):
        pair.send(m.ReadIndex())


# -- the bytes on the wire ---------------------------------------------------------

# Captured from the transport of the commit before the AMP arguments were
# generated from the codec's schema: members of both versions understand
# each other.
WIRE_REQUESTS = [
    (
        m.AppendEntries(
            5, "127.0.0.12:7002", 9, 4,
            (m.Entry(5, 10, m.EntryKind.NOOP), m.Entry(5, 11, data=b"set x 1", request_id=m.RequestId("s1", 3, 2))),
            8,
        ),
        b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x0bAppendToLog\x00\x07entries\x00\x1e=\x92\x96\x01\x05\n\x01"
        b"\xc4\x00\xc0\x96\x01\x05\x0b\x00\xc4\x07set x 1\x93\xa2s1\x03\x02\x00\x06leader\x00\x0f127.0.0.12:7002"
        b"\x00\rleader_commit\x00\x018\x00\nprev_index\x00\x019\x00\tprev_term\x00\x014\x00\x04term\x00\x015\x00\x00",
    ),
    (
        m.ForwardAppend(b"cmd", m.RequestId("sess", 7, 5)),
        b"\x00\x04_ask\x00\x012\x00\x08_command\x00\x06Append\x00\x07command\x00\x04=cmd\x00\nrequest_id\x00\x08"
        b"\x93\xa4sess\x07\x05\x00\x00",
    ),
    (
        m.RequestVote(5, "127.0.0.12:7002", 10, 4, disrupt=True),
        b"\x00\x04_ask\x00\x013\x00\x08_command\x00\x0bRequestVote\x00\tcandidate\x00\x0f127.0.0.12:7002\x00\x07"
        b"disrupt\x00\x04True\x00\x0elast_log_index\x00\x0210\x00\rlast_log_term\x00\x014\x00\x08pre_vote\x00\x05"
        b"False\x00\x04term\x00\x015\x00\x00",
    ),
]


def test_requests_are_sent_as_before():
    client, transport = on_string_transport("client")
    for message, _ in WIRE_REQUESTS:
        defer.ensureDeferred(client.send(message)).addErrback(lambda _: None)
    assert transport.value() == b"".join(data for _, data in WIRE_REQUESTS)
    client.connectionLost(Failure(ConnectionError("test over")))


def test_requests_sent_as_before_are_understood():
    handler = Recorder()
    server, transport = on_string_transport("server", handler)
    server.dataReceived(b"".join(data for _, data in WIRE_REQUESTS))
    assert handler.received == [message for message, _ in WIRE_REQUESTS]
    assert not transport.disconnecting
    assert b"_error" not in transport.value()
