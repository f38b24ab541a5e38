"""
Membership changes in the core (Raft dissertation chapter 4, the Raft paper's
section 6): configurations in the log, joint consensus, learners, removal and
leadership transfer (dissertation 3.10), one rule per test.
"""

import io

import pytest
from twisted.internet import defer

from txraft import errors
from txraft import messages as m
from txraft.core.membership import Configuration, Member
from txraft.core.snapshot_header import read_header, write_header
from txraft.core.sessions import SessionTable
from txraft.storage.memory import MemoryStorage
from tests.core.harness import A, B, C, D, E, acknowledge, elect, make_core, result_of


def config(*voters, learners=()):
    return Configuration.of([Member(v) for v in voters] + [Member(x, voter=False) for x in learners])


def config_entry(index, configuration, term=1):
    return m.Entry(term, index, m.EntryKind.CONFIG, configuration.encode())


def commit_own_term(core, silent=()):
    """Acknowledge the new leader's no-op from every peer but ``silent``, so it has committed in its term."""
    for _ in range(2):
        core.clock.advance(0)
        for peer, request, _ in core.transport.take(m.AppendEntries):
            if peer not in silent:
                acknowledge(core, peer, request, core.storage.last_index)
    assert core.storage.term_at(core.commit_index) == core.term


def replicate_all(core, rounds=4):
    """Let every peer acknowledge everything the leader sends, a few rounds over."""
    for _ in range(rounds):
        core.clock.advance(0)
        for peer, request, _ in core.transport.take(m.AppendEntries):
            acknowledge(core, peer, request, request.prev_index + len(request.entries))


# -- the configuration value -----------------------------------------------------------


def test_a_joint_configuration_needs_a_majority_of_both_sets():
    """4.3: "Agreement (for elections and entry commitment) requires separate
    majorities from both the old and new configurations." """
    joint = Configuration(config(B, C, D).members, old=config(A, B, C).members)
    assert joint.has_majority({B, C})
    assert joint.has_majority({A, B, D})
    assert not joint.has_majority({A, D})  # a majority of neither set
    assert not joint.has_majority({A, B})  # old yes, new no
    assert not joint.has_majority({C, D})  # new yes, old no
    assert joint.quorum_index({A: 9, B: 5, C: 1, D: 9}) == 5


def test_learners_never_count_towards_a_majority():
    configuration = config(A, B, learners=(C, D, E))
    assert not configuration.has_majority({A, C, D, E})
    assert configuration.has_majority({A, B})
    assert configuration.quorum_index({A: 7, B: 1, C: 7, D: 7, E: 7}) == 1


@pytest.mark.parametrize("data, message", [
    (b"\xc1", "msgpack"),
    (Configuration((Member(A), Member(A))).encode(), "appears twice"),
    (b"\x81\xa7members\x91\x93\xa1a\xa0\xc3", "promote"),
    (b"\x80", "map with members"),
])
def test_a_malformed_configuration_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        Configuration.decode(data)


def test_the_snapshot_header_carries_the_configuration():
    joint = Configuration(config(B, C, learners=(D,)).members, old=config(A, B).members)
    written = io.BytesIO()
    write_header(written, SessionTable(), joint.ids, joint)
    written.seek(0)
    _, read = read_header(written)
    assert read == joint


# -- configurations in the log ----------------------------------------------------------


def test_a_configuration_takes_effect_when_appended_and_is_undone_when_overwritten():
    """4.1: "a server always uses the latest configuration in its log,
    regardless of whether the entry is committed." """
    core = make_core()
    grown = config(A, B, C, D)
    core.receive(m.AppendEntries(1, B, 0, 0, (config_entry(1, grown),), 0))
    assert core.configuration == grown and core.members == (A, B, C, D)
    # A leader of term 2 overwrites the uncommitted entry: the change is undone.
    core.receive(m.AppendEntries(2, C, 0, 0, (m.Entry(2, 1, m.EntryKind.NOOP),), 0))
    assert core.configuration == config(A, B, C)


def test_a_restarted_member_takes_its_configuration_from_the_log():
    storage = MemoryStorage()
    core = make_core(storage=storage)
    core.receive(m.AppendEntries(1, B, 0, 0, (config_entry(1, config(A, B, D)),), 0))
    core.stop()
    again = make_core(storage=storage, members=(A, B, C))
    assert again.configuration == config(A, B, D)


def test_a_malformed_configuration_entry_from_a_leader_is_refused_and_not_stored():
    core = make_core()
    bad = m.Entry(1, 1, m.EntryKind.CONFIG, b"\xc1")
    failure = []
    core.receive(m.AppendEntries(1, B, 0, 0, (bad,), 0)).addErrback(failure.append)
    assert failure and failure[0].check(errors.InvalidRequest)
    assert core.storage.last_index == 0


# -- learners ------------------------------------------------------------------------------


def test_learners_are_not_asked_for_pre_votes_or_votes_and_do_not_count():
    core = make_core(members=config(A, B, learners=(C,)))
    core.clock.advance(10)  # election timeout: pre-vote
    asked = {peer for peer, _, _ in core.transport.sent}
    assert asked == {B}
    core.transport.take()
    core.start_election()
    requests = core.transport.take(m.RequestVote)
    assert {peer for peer, _, _ in requests} == {B}
    # A learner's vote, had it been given, does not make a leader.
    core.receive_reply(C, requests[0][1], m.RequestVoteReply(core.term, True))
    assert core.role == "candidate"
    core.receive_reply(B, requests[0][1], m.RequestVoteReply(core.term, True))
    assert core.role == "leader"


def test_a_learner_never_stands_for_election():
    core = make_core(member=C, members=config(A, B, learners=(C,)))
    core.clock.advance(10)
    assert core.transport.sent == [] and core.role == "follower"
    with pytest.raises(errors.MembershipError, match="not a voter"):
        core.start_election()


def test_a_leader_commits_without_waiting_for_learners():
    core = elect(make_core(members=config(A, B, learners=(C,))))
    for peer, request, _ in core.transport.take(m.AppendEntries):
        if peer == B:
            acknowledge(core, peer, request, 1)
    assert core.commit_index == 1


# -- proposing changes ----------------------------------------------------------------------


def test_a_leader_that_has_not_committed_in_its_term_refuses_a_change():
    """4.1 (the bug in single-server changes): a leader may not propose a
    change until it has committed an entry of its own term."""
    core = elect(make_core())
    with pytest.raises(errors.LeaderNotReady):
        core.propose_members(config(A, B, C, D).members)
    commit_own_term(core)
    core.propose_members(config(A, B, C, D).members)


def test_a_change_of_voters_goes_through_a_joint_configuration_and_leaves_it_on_its_own():
    core = elect(make_core())
    commit_own_term(core)
    term, index = core.propose_members(config(A, B, D).members)
    joint = core.configuration
    assert joint.joint and joint.old == config(A, B, C).members and joint.members == config(A, B, D).members
    assert set(core.peers) == {B, C, D}
    done = core.wait_for_change(term, index)
    replicate_all(core)
    assert core.configuration == config(A, B, D)
    assert core.commit_index == core.configuration_index
    assert result_of(done) == config(A, B, D)
    assert set(core.peers) == {B, D}


def test_a_change_of_learners_alone_takes_one_step():
    core = elect(make_core())
    commit_own_term(core)
    core.propose_members(config(A, B, C, learners=(D,)).members)
    assert not core.configuration.joint


def test_only_one_change_at_a_time():
    core = elect(make_core())
    commit_own_term(core)
    core.propose_members(config(A, B, C, learners=(D,)).members)
    with pytest.raises(errors.ChangeInProgress):
        core.propose_members(config(A, B, C).members)


@pytest.mark.parametrize("action, member, error, message", [
    ("add", B, errors.MembershipError, "already a member"),
    ("remove", D, errors.UnknownMember, "not a member"),
    ("promote", D, errors.UnknownMember, "not a member"),
    ("promote", B, errors.MembershipError, "already a voter"),
    ("jump", B, errors.InvalidRequest, "unknown membership action"),
])
def test_bad_changes_are_refused_and_change_nothing(action, member, error, message):
    core = elect(make_core())
    commit_own_term(core)
    before = (core.configuration, core.storage.last_index)
    with pytest.raises(error, match=message):
        result_of(core.change_members(action, member))
    assert (core.configuration, core.storage.last_index) == before


def test_removing_the_last_voter_is_refused():
    core = elect(make_core(members=(A,)))
    core.clock.advance(1)
    with pytest.raises(errors.MembershipError, match="without a voter"):
        result_of(core.change_members("remove", A))


def test_a_learner_that_has_not_caught_up_cannot_be_promoted():
    core = elect(make_core(members=config(A, B, C, learners=(D,)), auto_promote=False))
    commit_own_term(core, silent=(D,))
    with pytest.raises(errors.MembershipError, match="not caught up"):
        result_of(core.change_members("promote", D))


def test_a_learner_added_as_voter_is_promoted_once_caught_up():
    """4.2.1: new servers join as non-voting members until they have caught up."""
    core = elect(make_core())
    commit_own_term(core)
    result_of(core.change_members("add", D))
    assert core.configuration.member(D) == Member(D, "", False, promote=True)
    replicate_all(core, rounds=8)
    assert core.configuration == config(A, B, C, D) and not core.change_in_flight()


# -- removal ------------------------------------------------------------------------------------


def test_a_leader_removed_by_its_own_change_steps_down_once_it_commits_and_hands_over():
    """4.2.2: the leader manages the cluster until C_new commits, without
    counting itself, then steps down."""
    core = elect(make_core())
    commit_own_term(core)
    core.propose_members(config(B, C).members)
    replicate_all(core, rounds=3)
    assert core.role == "follower" and core.configuration == config(B, C)
    handed = core.transport.take(m.TimeoutNow)
    assert [peer for peer, _, _ in handed] in ([B], [C])
    # It is no voter now: it never stands again.
    core.clock.advance(10)
    assert not core.transport.take(m.RequestVote)


def test_a_removed_leader_does_not_count_itself_for_the_new_configuration():
    core = elect(make_core())
    commit_own_term(core)
    core.propose_members(config(B, C).members)
    replicate_all(core, rounds=1)  # the joint configuration commits; C_new is appended
    assert core.configuration == config(B, C) and core.role == "leader"
    last = core.storage.last_index
    core.clock.advance(0)
    for peer, request, _ in core.transport.take(m.AppendEntries):
        if peer == B:
            acknowledge(core, peer, request, last)
    # A and B hold C_new, but A's own copy does not count: {B} is no majority of {B, C}.
    assert core.commit_index < last and core.role == "leader"


# -- leadership transfer ---------------------------------------------------------------------


def test_transfer_sends_timeout_now_once_the_target_is_up_to_date_and_refuses_commands_meanwhile():
    """3.10: the leader stops accepting client requests, brings the target up to
    date, then sends TimeoutNow."""
    core = elect(make_core())
    commit_own_term(core)
    done = core.transfer_leadership(C)
    assert core.transport.take(m.TimeoutNow)[0][0] == C  # C already matched everything
    with pytest.raises(errors.NotLeader, match="handed to"):
        result_of(core.propose(b"x", None))
    with pytest.raises(errors.ChangeInProgress):
        core.propose_members(config(A, B).members)
    core.receive(m.AppendEntries(core.term + 1, C, core.storage.last_index,
                                 core.term, (), core.commit_index))
    assert core.role == "follower" and result_of(done) == C


def test_a_transfer_that_does_not_complete_within_an_election_timeout_gives_up():
    core = elect(make_core())
    commit_own_term(core)
    failures = []
    core.transfer_leadership(B).addErrback(failures.append)
    core.clock.advance(core.config.election_base + 0.01)
    assert failures and failures[0].check(errors.Timeout)
    assert core.role == "leader"
    core.propose(b"x", None)  # commands are accepted again


def test_transfer_without_a_target_picks_the_most_up_to_date_voter():
    core = elect(make_core(members=config(A, B, C, learners=(D,))))
    core.clock.advance(0)
    for peer, request, _ in core.transport.take(m.AppendEntries):
        if peer in (C, D):
            acknowledge(core, peer, request, 1)
    core.transfer_leadership(None)
    assert core.leader == A and core.state.transfer.target == C


@pytest.mark.parametrize("to, error, message", [
    (A, errors.MembershipError, "already leads"),
    (E, errors.UnknownMember, "not a member"),
    (D, errors.MembershipError, "learner"),
])
def test_transfer_to_a_member_that_cannot_lead_is_refused(to, error, message):
    core = elect(make_core(members=config(A, B, C, learners=(D,))))
    with pytest.raises(error, match=message):
        result_of(core.transfer_leadership(to))
    assert core.state.transfer is None


def test_timeout_now_makes_a_voter_stand_at_once_past_leader_stickiness():
    core = make_core(member=B)
    core.receive(m.AppendEntries(1, A, 0, 0, (), 0))
    core.transport.take()
    result_of(core.receive(m.TimeoutNow(1, A)))
    assert core.role == "candidate" and core.term == 2
    (_, request, _), = core.transport.take(m.RequestVote)[:1]
    assert request.disrupt and not request.pre_vote


def test_a_learner_ignores_timeout_now():
    core = make_core(member=C, members=config(A, B, learners=(C,)))
    result_of(core.receive(m.TimeoutNow(1, A)))
    assert core.role == "follower" and core.term == 0
