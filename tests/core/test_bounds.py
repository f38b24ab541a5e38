"""
Numbers from peers are bounded (issue 9, finding 1): a term, index or offset
of 2**62 or more is refused with ``InvalidRequest`` before anything is
stored, whichever transport brought it, so no RPC can push a member to a term
it cannot store; and a member at the last usable term stops campaigning
instead of failing inside the core.
"""

import pytest

from txraft import errors
from txraft import messages as m
from tests.core.harness import B, elect, make_core, result_of

HUGE = [2**62, 2**63, 2**64 - 1, 2**64]


def refused(core, request):
    before = (core.storage.hard_state, core.storage.last_index)
    with pytest.raises(errors.InvalidRequest, match="must be below 2\\*\\*62"):
        result_of(core.receive(request))
    assert (core.storage.hard_state, core.storage.last_index) == before
    assert core.role == "follower" and core.leader == ""


@pytest.mark.parametrize("term", HUGE)
@pytest.mark.parametrize("disrupt", [False, True])
def test_request_vote_with_a_huge_term_is_refused(term, disrupt):
    refused(make_core(), m.RequestVote(term, B, 0, 0, disrupt=disrupt))


@pytest.mark.parametrize("number", HUGE)
def test_request_vote_with_a_huge_last_log_number_is_refused(number):
    refused(make_core(), m.RequestVote(3, B, number, number))


@pytest.mark.parametrize("term", HUGE)
def test_append_entries_with_a_huge_term_is_refused(term):
    refused(make_core(), m.AppendEntries(term, B, 0, 0, (), 0))
    refused(make_core(), m.AppendEntries(2, B, 0, 0, (m.Entry(term, 1),), 0))


@pytest.mark.parametrize("index", HUGE)
def test_append_entries_with_huge_indexes_are_refused(index):
    refused(make_core(), m.AppendEntries(2, B, index, 1, (), 0))
    refused(make_core(), m.AppendEntries(2, B, 0, 0, (), index))


def test_the_largest_usable_term_is_accepted():
    core = make_core()
    core.storage.save_hard_state(m.HardState(m.NUMBER_LIMIT - 2**31, ""))
    reply = result_of(core.receive(m.RequestVote(m.NUMBER_LIMIT - 1, B, 0, 0, disrupt=True)))
    assert reply.granted and core.term == m.NUMBER_LIMIT - 1


@pytest.mark.parametrize("disrupt", [False, True])
def test_no_single_request_raises_the_term_by_more_than_2_to_the_32(disrupt):
    """One forced RequestVote must not take a cluster to its last usable term."""
    core = make_core()
    with pytest.raises(errors.InvalidRequest, match="more than 2\\*\\*32 above this member's term 0"):
        result_of(core.receive(m.RequestVote(2**32 + 1, B, 0, 0, disrupt=disrupt)))
    with pytest.raises(errors.InvalidRequest, match="more than 2\\*\\*32"):
        result_of(core.receive(m.AppendEntries(2**32 + 1, B, 0, 0, (), 0)))
    assert core.term == 0
    assert result_of(core.receive(m.RequestVote(2**32, B, 0, 0, disrupt=True))).granted
    assert core.term == 2**32


def test_a_reply_with_a_term_far_above_ours_is_ignored():
    core = make_core()
    core.start_election()
    [(peer, request, d)] = core.transport.take(m.RequestVote)[:1]
    d.callback(m.RequestVoteReply(2**40, False))
    assert core.term == request.term and core.role == "candidate"


def test_a_member_at_the_last_usable_term_does_not_campaign():
    from twisted.logger import Logger

    core = make_core()
    events = []
    core.log = Logger(observer=events.append)
    core.storage.save_hard_state(m.HardState(m.NUMBER_LIMIT - 1, ""))
    core.clock.advance(10)  # election timeouts pass
    assert len([e for e in events if "cannot stand for election" in e["log_format"]]) == 1
    assert core.term == m.NUMBER_LIMIT - 1 and core.role == "follower"
    assert not core.transport.sent
    with pytest.raises(errors.RaftError, match="the last a member may use"):
        core.start_election()
    assert core.term == m.NUMBER_LIMIT - 1


def test_a_leader_still_commits_at_the_last_usable_term():
    core = make_core()
    core.storage.save_hard_state(m.HardState(m.NUMBER_LIMIT - 2, ""))
    elect(core)
    assert core.role == "leader" and core.term == m.NUMBER_LIMIT - 1


# -- one command-size limit (finding 4) ------------------------------------------------


def test_the_leader_refuses_a_forwarded_command_over_the_limit_before_storing_it():
    core = elect(make_core(max_command_bytes=1024))
    last = core.storage.last_index
    with pytest.raises(errors.CommandTooLarge, match="1025 bytes is above the limit of 1024"):
        result_of(core.receive(m.ForwardAppend(b"x" * 1025, m.RequestId("s", 1, 1))))
    assert core.storage.last_index == last
    assert result_of(core.receive(m.ForwardAppend(b"x" * 1024, m.RequestId("s", 2, 1)))) == m.ForwardAppendReply(core.term, last + 1)


def test_propose_refuses_a_command_over_the_limit_on_a_follower_without_forwarding_it():
    core = make_core(max_command_bytes=1024)
    core.leader = B
    with pytest.raises(errors.CommandTooLarge):
        result_of(core.propose(b"x" * 1025, None))
    assert not core.transport.sent


def test_append_over_the_limit_fails_at_once_on_every_member_and_nothing_is_stored():
    from txraft.testing import SafetyChecker, SimulatedCluster

    cluster = SimulatedCluster(3, seed=1, checker=SafetyChecker())  # the default limit, 1 MiB
    cluster.start()
    leader = cluster.wait_for_leader()
    lasts = {i: cluster.members[i].status().last_index for i in cluster.ids}
    for member_id in cluster.ids:
        box = []
        cluster.members[member_id].append(b"x" * ((1 << 20) + 1)).addBoth(box.append)
        cluster.run(0.5)
        assert len(box) == 1 and box[0].check(errors.CommandTooLarge), (member_id, leader)
    assert {i: cluster.members[i].status().last_index for i in cluster.ids} == lasts


def test_more_entries_than_one_request_may_carry_are_refused_and_never_sent():
    core = make_core()
    many = tuple(m.Entry(1, i) for i in range(1, m.MAX_ENTRIES + 2))
    refused_request = m.AppendEntries(1, B, 0, 0, many, 0)
    with pytest.raises(errors.InvalidRequest, match="more than the 65536"):
        result_of(core.receive(refused_request))
    assert core.storage.last_index == 0
    leader = elect(make_core(max_batch_bytes=1 << 30))
    leader.storage.append(tuple(m.Entry(leader.term, i) for i in range(2, m.MAX_ENTRIES + 10)))
    leader.clock.advance(0)
    sent = [message for _, message, _ in leader.transport.take(m.AppendEntries) if message.entries]
    assert sent and max(len(message.entries) for message in sent) <= m.MAX_ENTRIES
