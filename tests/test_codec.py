"""The one encoding of txraft's values: round trips, and bad input never builds a bad message."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txraft import codec
from txraft import messages as m

ints = st.integers(min_value=0, max_value=2 ** 63 - 1)
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
