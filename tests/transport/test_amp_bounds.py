"""
Issue 9, finding 1, over real sockets: a member certificate holder sends
``RequestVote`` (forced or not) and ``AppendToLog`` with terms of 2**62,
2**63 and 2**64-1 (and 2**64) to a real core behind the AMP transport.  Each
is refused with ``InvalidRequest``, logged with the sender's address and
certificate names, and nothing is stored.
"""

import pytest
from twisted.internet import reactor

from txraft import errors as e
from txraft import messages as m
from tests.core.harness import elect, make_core

from .conftest import bounded

HUGE = [2**62, 2**63, 2**64 - 1, 2**64]


async def core_behind_amp(members):
    client = await members.started(2)
    core = make_core(member="127.0.0.11:1", members=("127.0.0.11:1", client.address))
    server = await members.started(1, core)
    return core, client, server


def requests(term, sender):
    made = [
        m.RequestVote(term, sender, 0, 0, disrupt=False),
        m.RequestVote(term, sender, 0, 0, disrupt=True),
        m.AppendEntries(term, sender, 0, 0, (), 0),
    ]
    if term < 2**64:  # entries travel as msgpack, which cannot even encode 2**64
        made.append(m.AppendEntries(1, sender, 0, 0, (m.Entry(term, 1, data=b"x"),), 0))
    return made


@pytest.mark.parametrize("term", HUGE)
@bounded(20)
async def test_huge_terms_are_refused_over_amp_and_nothing_is_stored(members, logged, term):
    core, client, server = await core_behind_amp(members)
    for request in requests(term, client.address):
        with pytest.raises(e.InvalidRequest, match="below 2\\*\\*62"):
            await client.send(server.address, request)
        assert core.storage.hard_state == m.HardState(0, "") and core.storage.last_index == 0
    refusals = [line for line in logged if "refused a" in line and "below 2**62" in line]
    assert len(refusals) == len(requests(term, client.address))
    assert all("127.0.0.12:" in line and "member2" in line for line in refusals)
    # The connection stays usable for well-formed requests.
    reply = await client.send(server.address, m.RequestVote(5, client.address, 0, 0, disrupt=True))
    assert reply.granted and core.term == 5


@bounded(20)
async def test_a_huge_request_id_is_refused_over_amp(members):
    core, client, server = await core_behind_amp(members)
    with pytest.raises(e.InvalidRequest, match="below 2\\*\\*62"):
        await client.send(server.address, m.ForwardAppend(b"x", m.RequestId("s", 2**64 - 1, 0)))
    assert core.storage.last_index == 0


@bounded(20)
async def test_a_command_over_the_limit_through_the_member_append_rpc_is_refused(members):
    """Finding 4: a 4 MiB command through Append skipped the 1 MiB limit and was committed."""
    core, client, server = await core_behind_amp(members)
    elect(core)
    last = core.storage.last_index
    with pytest.raises(e.CommandTooLarge, match="above the limit of 1048576"):
        await client.send(server.address, m.ForwardAppend(b"x" * (4 << 20), m.RequestId("s", 1, 1)))
    assert core.storage.last_index == last
