"""The one encoding of txraft's values: round trips, and bad input never builds a bad message."""

import io

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txraft import codec
from txraft import messages as m

ints = st.integers(min_value=0, max_value=m.NUMBER_LIMIT - 1)
ids = st.text(min_size=1, max_size=30)
request_ids = st.builds(m.RequestId, st.text(max_size=32), ints, ints)
entries = st.builds(m.Entry, ints, ints, st.sampled_from(list(m.EntryKind)), st.binary(max_size=200),
                    st.none() | request_ids)
values = st.one_of(
    entries,
    st.builds(m.HardState, ints, st.text(max_size=30)),
    st.builds(m.SnapshotMeta, ints, ints),
    st.builds(m.RequestVote, ints, ids, ints, ints, st.booleans(), st.booleans()),
    st.builds(m.RequestVoteReply, ints, st.booleans()),
    st.builds(m.AppendEntries, ints, ids, ints, ints, st.lists(entries, max_size=5).map(tuple), ints),
    st.builds(m.AppendEntriesReply, ints, st.booleans(), ints, ints, ints),
    st.builds(m.InstallSnapshot, ints, ids, ints, ints, ints, st.binary(max_size=300), st.booleans()),
    st.builds(m.InstallSnapshotReply, ints, ints),
    st.builds(m.ForwardAppend, st.binary(max_size=100), request_ids),
    st.builds(m.ForwardAppendReply, ints, ints),
    st.builds(m.GetMembersReply, st.lists(ids, max_size=5).map(tuple)),
    st.builds(m.GetLeaderReply, st.text(max_size=30)),
    st.just(m.GetMembers()), st.just(m.GetLeader()), st.just(m.ReadIndex()),
    st.builds(m.ReadIndexReply, ints),
    st.builds(m.TimeoutNow, ints, ids), st.builds(m.TimeoutNowReply, ints),
    st.builds(m.ChangeMembers, st.sampled_from(["add", "remove", "promote"]), ids, st.text(max_size=20),
              st.booleans()),
    st.builds(m.ChangeMembersReply, ints, ints),
    st.builds(m.TransferLeadership, st.text(max_size=30)), st.builds(m.TransferLeadershipReply, ids),
)


@given(values)
def test_every_value_round_trips(value):
    assert codec.decode(codec.encode(value)) == value


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_value_error(data):
    try:
        value = codec.decode(data)
    except ValueError:
        return
    # Whatever decodes is a well-formed value that encodes back the same way.
    assert codec.decode(codec.encode(value)) == value


@settings(max_examples=300)
@given(values, st.data())
def test_a_field_of_the_wrong_type_is_refused_with_its_name(value, data):
    raw = codec.to_wire(value)
    if len(raw) < 2:
        return
    position = data.draw(st.integers(min_value=1, max_value=len(raw) - 1))
    original = raw[position]
    replacement = data.draw(st.one_of(st.just(-1), st.just("text"), st.just(b"bytes"), st.just([1, 2]),
                                      st.just(None), st.just(1.5)))
    if type(replacement) is type(original) or (original is None and replacement is None):
        return
    raw[position] = replacement
    try:
        decoded = codec.from_wire(raw)
    except ValueError:
        return
    # A few fields accept more than one shape (a missing request id is None):
    # then the result must still be a proper value of the same type.
    assert type(decoded) is type(value)


@pytest.mark.parametrize("raw, message", [
    ([99], "unknown message tag"),
    ([], "non-empty array"),
    ([10, 1, "a", 0, 0, False], "fields"),
    ([2, -1, ""], "non-negative"),
    ([1, 1, 1, 7, b"", None], "unknown entry kind"),
])
def test_malformed_values_name_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        codec.decode(msgpack.packb(raw, use_bin_type=True))


# -- the format written by earlier releases -------------------------------------
#
# Bytes captured from the encoder of the commit before the schema moved into
# the codec: logs and snapshots written then must still open.

MAIN_RECORDS = [
    (m.Entry(3, 7, m.EntryKind.COMMAND, b"set x 1", m.RequestId("s1", 4, 2)),
     b"\x96\x01\x03\x07\x00\xc4\x07set x 1\x93\xa2s1\x04\x02"),
    (m.Entry(2, 1, m.EntryKind.NOOP), b"\x96\x01\x02\x01\x01\xc4\x00\xc0"),
    (m.HardState(5, "127.0.0.1:7001"), b"\x93\x02\x05\xae127.0.0.1:7001"),
    (m.SnapshotMeta(100, 4), b"\x93\x03d\x04"),
]

# write_header(f, table, ["127.0.0.1:7001", "127.0.0.2:7002"]) where the table
# admitted RequestId("s1", 1, 1) at 5, ("s1", 3, 1) at 6 and ("ab", 2, 2) at 7.
MAIN_SNAPSHOT_HEADER = (
    b"TXRS\x00\x00\x00C\x82\xa8sessions\x92\x94\xa2ab\x01\x91\x02\x07\x94\xa2s1\x00\x92\x01\x03\x06"
    b"\xa7members\x92\xae127.0.0.1:7001\xae127.0.0.2:7002"
)


@pytest.mark.parametrize("value, data", MAIN_RECORDS, ids=lambda v: type(v).__name__)
def test_records_written_before_decode_and_encode_the_same(value, data):
    assert codec.decode(data) == value
    assert codec.encode(value) == data


def test_a_snapshot_header_written_before_still_reads():
    from txraft.core.sessions import SessionTable
    from txraft.core.snapshot_header import read_header, write_header

    fileobj = io.BytesIO(MAIN_SNAPSHOT_HEADER + b"application data")
    sessions, configuration = read_header(fileobj)
    # Written before configurations were recorded: the members are the voters.
    assert configuration.ids == ("127.0.0.1:7001", "127.0.0.2:7002")
    assert configuration.voters == {"127.0.0.1:7001", "127.0.0.2:7002"} and not configuration.joint
    assert fileobj.read() == b"application data"
    assert sessions.applied(m.RequestId("s1", 1, 1)) and sessions.applied(m.RequestId("s1", 3, 1))
    assert not sessions.applied(m.RequestId("s1", 2, 1))
    assert sessions.applied(m.RequestId("ab", 2, 2)) and not sessions.applied(m.RequestId("ab", 3, 2))
    # And the same table is written as the same bytes.
    table = SessionTable()
    for rid, index in ((m.RequestId("s1", 1, 1), 5), (m.RequestId("s1", 3, 1), 6), (m.RequestId("ab", 2, 2), 7)):
        table.admit(rid, index)
    written = io.BytesIO()
    write_header(written, table, ["127.0.0.1:7001", "127.0.0.2:7002"])
    assert written.getvalue() == MAIN_SNAPSHOT_HEADER


@pytest.mark.parametrize("data, message", [
    (b"", "txraft header"),
    (b"TXRX\x00\x00\x00\x00", "txraft header"),
    (MAIN_SNAPSHOT_HEADER[:20], "truncated"),
    (b"TXRS\x00\x00\x00\x02\xc1\xc1", "msgpack"),
    (codec.SNAPSHOT_HEADER_MAGIC + b"\x00\x00\x00\x01\x90", "map of sessions and members"),
    (codec.encode_snapshot_header({}, []), "sessions must be a list"),
    (codec.encode_snapshot_header([], [1]), "members must be a list of strings"),
])
def test_a_malformed_snapshot_header_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        codec.decode_snapshot_header(io.BytesIO(data))


# -- the schema -------------------------------------------------------------------


def test_the_schema_is_read_from_the_message_dataclasses():
    assert codec.fields(m.RequestVote) == (
        ("term", codec.UINT), ("candidate", codec.TEXT), ("last_log_index", codec.UINT),
        ("last_log_term", codec.UINT), ("disrupt", codec.FLAG), ("pre_vote", codec.FLAG),
    )
    assert codec.fields(m.AppendEntries)[4] == ("entries", codec.ENTRIES)
    assert codec.fields(m.ForwardAppend) == (("command", codec.BYTES), ("request_id", codec.REQUEST_ID))
    assert codec.fields(m.Entry)[4] == ("request_id", codec.OPTIONAL_REQUEST_ID)
    assert codec.fields(m.GetMembersReply) == (("members", codec.TEXTS),)
    with pytest.raises(TypeError):
        codec.fields(dict)


@given(values)
def test_fields_round_trip(value):
    assert codec.from_fields(type(value), codec.to_fields(value)) == value


@pytest.mark.parametrize("cls, fields, message", [
    (m.RequestVoteReply, {"term": 1}, "RequestVoteReply.granted is missing"),
    (m.RequestVoteReply, {"term": True, "granted": True}, "RequestVoteReply.term must be a non-negative"),
    (m.ForwardAppend, {"command": b"x", "request_id": None}, "RequestId"),
    (m.ForwardAppend, {"command": b"x", "request_id": ["s", -1, 0]}, "non-negative"),
    (m.ForwardAppend, {"command": "x", "request_id": ["s", 1, 0]}, "ForwardAppend.command must be bytes"),
    (m.GetMembersReply, {"members": ["a", 2]}, "list of strings"),
    (m.AppendEntries, {"term": 1, "leader": "a", "prev_index": 0, "prev_term": 0, "leader_commit": 0,
                       "entries": [[2, 1, ""]]}, "only entries"),
])
def test_from_fields_checks_every_field(cls, fields, message):
    with pytest.raises(ValueError, match=message):
        codec.from_fields(cls, fields)


@pytest.mark.parametrize("number", [2**62, 2**63, 2**64 - 1, 2**64])
@pytest.mark.parametrize("cls, field", [
    (m.RequestVote, "term"), (m.RequestVote, "last_log_index"), (m.AppendEntries, "term"),
    (m.AppendEntries, "prev_index"), (m.AppendEntries, "leader_commit"), (m.InstallSnapshot, "offset"),
    (m.HardState, "term"), (m.Entry, "index"),
])
def test_numbers_from_2_to_the_62_are_refused_wherever_they_come_from(cls, field, number):
    value = {m.RequestVote: m.RequestVote(1, "a", 0, 0), m.AppendEntries: m.AppendEntries(1, "a", 0, 0, (), 0),
             m.InstallSnapshot: m.InstallSnapshot(1, "a", 1, 1, 0, b"", True), m.HardState: m.HardState(1, ""),
             m.Entry: m.Entry(1, 1)}[cls]
    fields = codec.to_fields(value)
    fields[field] = number
    with pytest.raises(codec.OutOfRange, match=f"{cls.__name__}.{field} must be a non-negative integer below 2\\*\\*62"):
        codec.from_fields(cls, fields)
    raw = codec.to_wire(value)
    raw[1 + [name for name, _ in codec.fields(cls)].index(field)] = number
    if number < 2**64:  # msgpack holds 64-bit integers at most
        with pytest.raises(codec.OutOfRange):
            codec.decode(msgpack.packb(raw))
    fields[field] = m.NUMBER_LIMIT - 1
    assert getattr(codec.from_fields(cls, fields), field) == m.NUMBER_LIMIT - 1


@given(st.lists(entries, max_size=40))
def test_packed_entries_are_the_msgpack_of_their_wire_form(batch):
    # The AMP transport sends entries packed once each; a follower must read
    # exactly what the general encoding would have produced.
    raw = codec.pack_entries(batch)
    assert raw == msgpack.packb([codec.to_wire(entry) for entry in batch], use_bin_type=True)
    assert codec._load_entries(codec.unpack_entries(raw), "entries") == tuple(batch)


def test_an_array_of_over_65535_entries_has_the_long_header():
    header = codec.pack_entries([m.Entry(1, 1)] * 70000)[:5]
    assert header == b"\xdd" + (70000).to_bytes(4, "big")


@given(st.lists(entries, min_size=1, max_size=20))
def test_entries_read_from_a_peer_are_written_in_the_bytes_they_came_in(batch):
    # A follower stores what the leader sent without encoding it again, so
    # the bytes it keeps for an entry must be that entry's bytes in the
    # message, and they must decode to the entry.
    raw = codec.pack_entries(batch)
    loaded = codec._load_entries(codec.unpack_entries(raw), "entries")
    assert b"".join(codec.encode(entry) for entry in loaded) == raw[len(raw) - sum(map(len, map(codec.encode, batch))):]
    for entry in loaded:
        assert codec.decode(codec.encode(entry)) == entry


def test_a_peers_longer_encoding_is_kept_as_it_came_and_still_decodes():
    # Integers at their widest (uint64) and a 16-bit array header for one entry:
    # valid msgpack, not what this codec writes.
    entry = b"\x96\x01\xcf" + (7).to_bytes(8, "big") + b"\xcf" + (9).to_bytes(8, "big") + b"\x00\xc4\x01x\xc0"
    raw = b"\xdc\x00\x01" + entry
    (loaded,) = codec._load_entries(codec.unpack_entries(raw), "entries")
    assert loaded == m.Entry(7, 9, m.EntryKind.COMMAND, b"x")
    assert codec.encode(loaded) == entry
    assert codec.decode(codec.encode(loaded)) == loaded


@pytest.mark.parametrize("item, message", [
    ([1, 1, 1, 99, b"", None], "unknown entry kind"),
    ([1, 1, -1, 0, b"", None], "non-negative"),
    ([1, 1, 1, 0, "text", None], "bytes"),
    ([1, 1, 1, 0, b"", ["s", 1]], "request id"),
    ([1, 1, 1, 0, b"", [1, 1, 1]], "string"),
    ([1, True, 1, 0, b"", None], "non-negative"),
])
def test_a_malformed_entry_from_a_peer_is_named(item, message):
    raw = msgpack.packb([item], use_bin_type=True)
    with pytest.raises(ValueError, match=message):
        codec.from_fields(m.AppendEntries, {"term": 1, "leader": "a", "prev_index": 0, "prev_term": 0,
                                            "leader_commit": 0, "entries": codec.unpack_entries(raw)})


@given(entries)
def test_an_entry_packed_once_is_encoded_as_its_schema_says(entry):
    # packed_entry spells out the Entry schema for speed; it must not drift from it.
    assert codec.packed_entry(entry) == msgpack.packb(codec.to_wire(entry), use_bin_type=True)


@given(values)
def test_pack_is_msgpacks_packb(value):
    wire = codec.to_wire(value)
    assert codec.pack(wire) == msgpack.packb(wire, use_bin_type=True)


def test_pack_after_a_failed_pack_carries_nothing_of_it():
    with pytest.raises(TypeError):
        codec.pack([1, b"x" * 1000, object()])
    assert codec.pack([2]) == b"\x91\x02"
