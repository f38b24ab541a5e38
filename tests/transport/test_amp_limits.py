"""
What a peer can make a member hold while it reads (issue 9, finding 4): boxes
are refused as soon as they have more keys or bytes than any txraft box,
fragments draw on one budget shared by all connections and are dropped when
they stop arriving, entries decode in proportion to their size, and AMP's
built-in commands (``StartTLS``) are not answered.
"""

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from txraft import codec
from txraft import errors as e
from txraft import messages as m
from txraft.transport import amp as member_amp
from txraft.transport import commands
from txraft.transport.amp import MAX_BOX_BYTES, MAX_BOX_KEYS, MemberContext, MemberProtocol

from .conftest import Recorder
from .test_amp_memory import LIMIT, Pair


def pair_of(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def on_string_transport(context=None):
    context = context or MemberContext(None, LIMIT)
    context.handler = Recorder()
    protocol = MemberProtocol(context, "server")
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_max_box_keys_is_the_most_any_txraft_box_has():
    assert MAX_BOX_KEYS == len(commands.InstallSnapshot.arguments) + 2  # + _ask and _command


def test_a_box_is_refused_as_soon_as_a_key_too_many_arrives():
    server, transport = on_string_transport()
    keys = b"".join(pair_of(b"k%d" % i) + pair_of(b"v") for i in range(MAX_BOX_KEYS))
    server.dataReceived(keys)
    assert not transport.disconnecting
    server.dataReceived(pair_of(b"one-more"))  # the box is not finished: no empty key yet
    assert transport.disconnecting
    # Whatever else arrives is ignored, not parsed into a box.
    server.dataReceived(pair_of(b"v" * 60000) * 10 + pair_of(b""))
    assert server.context.handler.received == []


def test_a_key_repeated_does_not_count_twice_but_its_bytes_do():
    server, transport = on_string_transport()
    value = b"v" * 60000
    server.dataReceived(pair_of(b"k") + pair_of(value))
    server.dataReceived(pair_of(b"k") + pair_of(value))
    assert not transport.disconnecting
    while not transport.disconnecting:
        server.dataReceived(pair_of(b"k") + pair_of(value))
    assert server._box_bytes > MAX_BOX_BYTES - 60000


def test_the_issue_box_of_5120_keys_of_60_kib_is_refused_after_a_few():
    server, transport = on_string_transport()
    sent = 0
    for i in range(5120):
        server.dataReceived(pair_of(b"k%d" % i) + pair_of(b"x" * 60 * 1024))
        sent += 1
        if transport.disconnecting:
            break
    assert transport.disconnecting and sent <= 3


def test_start_tls_and_other_amp_builtins_are_not_answered():
    pair = Pair()
    answer = pair.outcome(pair.client.callRemote(amp.StartTLS))
    assert answer.check(amp.UnknownRemoteError) and "unknown command" in answer.getErrorMessage()
    assert pair.server_io.disconnected


def test_connections_share_one_fragment_budget():
    context = MemberContext(None, 200 * 1024)
    first, second, third = (MemberProtocol(context, "server") for _ in range(3))
    assert context.fragment_budget.limit == 400 * 1024
    first._fragments.add(1, b"x" * 200 * 1024, 0)
    second._fragments.add(1, b"x" * 150 * 1024, 0)
    with pytest.raises(e.InvalidRequest, match="pending on this member's connections"):
        third._fragments.add(1, b"x" * 60 * 1024, 0)
    first._fragments.clear()
    assert context.fragment_budget.used == 150 * 1024
    third._fragments.add(1, b"x" * 60 * 1024, 0)


def test_fragments_that_stop_arriving_are_dropped_and_a_closed_connection_releases_them():
    clock = task.Clock()
    context = MemberContext(None, LIMIT, clock)
    server, transport = on_string_transport(context)
    server._fragment(blob=1, data=b"x" * 1000, offset=0)
    clock.advance(member_amp.FRAGMENT_IDLE_TIMEOUT - 1)
    server._fragment(blob=1, data=b"x" * 1000, offset=1000)  # still arriving
    clock.advance(member_amp.FRAGMENT_IDLE_TIMEOUT - 1)
    assert server._fragments.total == 2000
    clock.advance(2)
    assert server._fragments.total == 0 and context.fragment_budget.used == 0
    assert not clock.getDelayedCalls()
    server._fragment(blob=2, data=b"x" * 1000, offset=0)
    server.connectionLost(Failure(ConnectionDone()))
    assert context.fragment_budget.used == 0 and not clock.getDelayedCalls()


@pytest.mark.parametrize("raw", [
    msgpack.packb([[]] * 100_000),
    msgpack.packb([[[]] * 6] * 10_000),
    msgpack.packb([[1, 1, 1, 0, b"", [[]] * 3]] * 1000),
    msgpack.packb([[1, 1, 1, 0, [0] * 10, None]]),
    b"\x91" * 100_000,
], ids=["empty-arrays", "arrays-of-empty-arrays", "nested-request-ids", "list-for-data", "deep"])
def test_entries_that_are_no_entries_are_refused_before_they_are_built(raw):
    with pytest.raises(ValueError):
        codec.unpack_entries(raw)


def test_entries_decode_as_before():
    entries = (m.Entry(2, 1, m.EntryKind.NOOP), m.Entry(2, 2, data=b"x", request_id=m.RequestId("s", 3, 1)))
    raw = msgpack.packb(codec.ENTRIES.dump(entries), use_bin_type=True)
    assert codec.ENTRIES.load(codec.unpack_entries(raw), "entries") == entries
    with pytest.raises(ValueError, match="truncated"):
        codec.unpack_entries(raw[:-1])
    with pytest.raises(ValueError, match="extra data"):
        codec.unpack_entries(raw + b"\xc0")


def test_the_issue_8_mib_of_empty_arrays_costs_about_its_size():
    """8 MiB of empty arrays as entries took 643 MiB (75x) before; now nothing is built."""
    import tracemalloc

    raw = msgpack.packb([[]] * (8 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            codec.unpack_entries(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(raw)  # the unpacker's copy of the bytes, and nothing per entry


def test_an_empty_box_closes_the_connection_instead_of_raising():
    """Found by tests/test_fuzz.py: AMP raised NoEmptyBoxes out of dataReceived."""
    server, transport = on_string_transport()
    server.dataReceived(b"\x00\x00")
    assert transport.disconnecting


class _Boxes:
    def __init__(self):
        self.received = []

    def ampBoxReceived(self, box):
        self.received.append(dict(box))


@given(st.lists(st.dictionaries(st.binary(min_size=1, max_size=255), st.binary(max_size=300), max_size=6),
                max_size=5),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=50))
def test_boxes_arriving_in_any_pieces_are_read_whole_and_in_order(boxes, cuts):
    server, transport = on_string_transport()
    server.boxReceiver = collector = _Boxes()
    stream = b"".join(amp.AmpBox(box).serialize() for box in boxes)
    offset, pieces = 0, iter(cuts * (len(stream) + 1))
    while offset < len(stream):
        step = next(pieces)
        server.dataReceived(stream[offset:offset + step])
        offset += step
    assert collector.received == boxes
    assert not transport.disconnecting


def test_a_key_over_255_bytes_closes_the_connection():
    server, transport = on_string_transport()
    server.boxReceiver = collector = _Boxes()
    server.dataReceived(pair_of(b"k" * 256))
    assert transport.disconnecting and collector.received == []
