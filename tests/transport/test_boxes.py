"""
The member commands' boxes and arguments do less work per value than AMP's
own, and must stay indistinguishable from them on the wire.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from txraft.transport import commands

keys = st.binary(min_size=1, max_size=amp.MAX_KEY_LENGTH)
values = st.binary(max_size=300)


@given(st.dictionaries(st.sampled_from(sorted(commands._KEYS)) | keys, values, max_size=12))
def test_a_box_serializes_to_the_bytes_amp_would_send(items):
    assert commands.Box(items).serialize() == amp.AmpBox(items).serialize()


@pytest.mark.parametrize("items, error", [
    ({b"k": "text"}, TypeError),
    ({b"k": b"v" * (amp.MAX_VALUE_LENGTH + 1)}, amp.TooLong),
    ({b"k" * (amp.MAX_KEY_LENGTH + 1): b"v"}, amp.TooLong),
])
def test_a_box_amp_would_refuse_is_refused_the_same_way(items, error):
    box = commands.Box()
    dict.update(box, items)
    with pytest.raises(error):
        box.serialize()


def test_arguments_travel_as_amps_own_would_carry_them():
    box = commands.RequestVote.makeArguments(
        {"term": 7, "candidate": "127.0.0.1:7001", "last_log_index": 12, "last_log_term": 6, "pre_vote": True,
         "disrupt": False}, None)
    assert isinstance(box, commands.Box)
    assert box == {b"term": b"7", b"candidate": b"127.0.0.1:7001", b"last_log_index": b"12",
                   b"last_log_term": b"6", b"pre_vote": b"True", b"disrupt": b"False"}
    assert commands.RequestVote.parseArguments(box, None) == {
        "term": 7, "candidate": "127.0.0.1:7001", "last_log_index": 12, "last_log_term": 6, "pre_vote": True,
        "disrupt": False}


def test_an_unknown_or_missing_argument_is_refused():
    with pytest.raises(amp.InvalidSignature, match="nonsense"):
        commands.Leader.makeArguments({"nonsense": 1}, None)
    with pytest.raises(KeyError):
        commands.RequestVote.makeArguments({"term": 7}, None)
    with pytest.raises(KeyError):
        commands.RequestVote.parseArguments(commands.Box({b"term": b"7"}), None)


def test_a_command_made_without_a_required_argument_is_refused():
    with pytest.raises(amp.InvalidSignature, match="forgot candidate, last_log_index"):
        commands.RequestVote(term=7, last_log_term=1, pre_vote=False, disrupt=False)
    assert commands.Fragment(blob=1, data=b"").structured == {"blob": 1, "data": b""}  # optional ones may be left out
