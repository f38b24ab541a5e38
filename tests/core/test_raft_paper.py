"""
One test per rule of the Raft paper (Ongaro and Ousterhout 2014), each quoting
the rule it checks.  Several rules are ones the seed implementation broke; the
test says so.
"""

import random

import pytest
from twisted.internet.task import Clock

from txraft import errors
from txraft import messages as m
from txraft.core.quorum import majority, quorum_index
from txraft.storage.memory import MemoryStorage
from tests.core.harness import A, B, C, D, E, acknowledge, elect, entries, make_core, result_of


def follower_with_log(*terms, **kwargs):
    core = make_core(**kwargs)
    if terms:
        core.storage.append(entries(*terms))
        core.storage.save_hard_state(m.HardState(max(terms), ""))
    return core


# -- 5.1 terms ---------------------------------------------------------------


def test_stale_term_request_is_rejected():
    """5.1: "If a server receives a request with a stale term number, it rejects the request." """
    core = follower_with_log(1, 2)
    reply = result_of(core.receive(m.AppendEntries(1, B, 0, 0, (), 0)))
    assert reply == m.AppendEntriesReply(2, False)
    vote = result_of(core.receive(m.RequestVote(1, B, 10, 1)))
    assert vote == m.RequestVoteReply(2, False)
    assert core.leader == ""


def test_append_entries_with_higher_term_is_adopted():
    """5.1: "If one server's current term is smaller than the other's, then it updates
    its current term to the larger value."  (The seed's AppendToLog never adopted it.)"""
    core = follower_with_log(1)
    reply = result_of(core.receive(m.AppendEntries(5, B, 1, 1, (), 0)))
    assert reply.term == 5 and reply.success
    assert core.storage.hard_state == m.HardState(5, "")
    assert core.leader == B


def test_leader_steps_down_on_higher_term_reply():
    """5.1: "If a candidate or leader discovers that its term is out of date, it
    immediately reverts to follower state." """
    core = elect(make_core())
    core.clock.advance(0)  # the first replication batch goes out
    peer, request, d = core.transport.take(m.AppendEntries)[0]
    d.callback(m.AppendEntriesReply(request.term + 3, False))
    assert core.role == "follower"
    assert core.term == request.term + 3


# -- 5.2 leader election -------------------------------------------------------


def test_one_vote_per_term():
    """5.2: "Each server will vote for at most one candidate in a given term,
    on a first-come-first-served basis." """
    core = follower_with_log()
    assert result_of(core.receive(m.RequestVote(1, B, 0, 0))).granted
    assert not result_of(core.receive(m.RequestVote(1, C, 0, 0))).granted
    # Asking again for the same candidate is idempotent.
    assert result_of(core.receive(m.RequestVote(1, B, 0, 0))).granted
    assert core.storage.hard_state == m.HardState(1, B)


def test_vote_is_not_cleared_by_append_entries_in_the_same_term():
    """5.2: a vote lasts the whole term.  The seed cleared votedFor on every
    AppendToLog, which let a member vote twice in one term."""
    core = follower_with_log()
    assert result_of(core.receive(m.RequestVote(1, B, 0, 0))).granted
    result_of(core.receive(m.AppendEntries(1, B, 0, 0, (), 0)))
    assert core.voted_for == B
    assert not result_of(core.receive(m.RequestVote(1, C, 0, 0, disrupt=True))).granted


def test_vote_is_durable_before_the_reply_leaves():
    """Figure 2: "Updated on stable storage before responding to RPCs." """
    clock = Clock()
    core = make_core(storage=MemoryStorage(clock, fsync_delay=0.01), clock=clock)
    clock.advance(0.02)
    d = core.receive(m.RequestVote(1, B, 0, 0))
    assert not d.called, "the vote reply left before the vote was durable"
    clock.advance(0.01)
    assert result_of(d).granted
    # What a crash would leave behind holds the vote.
    assert core.storage.crash().hard_state == m.HardState(1, B)


def test_candidate_wins_with_a_majority():
    """5.2: "A candidate wins an election if it receives votes from a majority of
    the servers in the full cluster for the same term." """
    core = make_core(members=(A, B, C, D, E))
    core.start_election()
    requests = core.transport.take(m.RequestVote)
    assert {peer for peer, _, _ in requests} == {B, C, D, E}
    requests[0][2].callback(m.RequestVoteReply(1, True))
    assert core.role == "candidate"  # 2 of 5
    requests[1][2].callback(m.RequestVoteReply(1, False))
    requests[2][2].callback(m.RequestVoteReply(1, True))
    assert core.role == "leader"  # 3 of 5


def test_duplicate_vote_replies_count_once():
    """5.2: votes come from distinct servers; a duplicated reply is not a second vote."""
    core = make_core(members=(A, B, C, D, E))
    core.start_election()
    requests = core.transport.take(m.RequestVote)
    reply = m.RequestVoteReply(1, True)
    requests[0][2].callback(reply)
    core.receive_reply(requests[0][0], requests[0][1], reply)  # the same voter again
    assert core.role == "candidate"


def test_election_timeout_is_randomized():
    """5.2: "Raft uses randomized election timeouts", here 2*heartbeat plus up to one heartbeat."""
    delays = set()
    for seed in range(20):
        core = make_core(rng=random.Random(seed))
        (timer,) = core.clock.getDelayedCalls()  # the election timer
        delay = timer.getTime() - core.clock.seconds()
        assert 0.2 <= delay <= 0.3
        delays.add(round(delay, 6))
    assert len(delays) > 10


def test_follower_stands_for_election_after_the_timeout():
    """5.2: "If a follower receives no communication over a period of time called the
    election timeout, then it assumes there is no viable leader." """
    core = make_core()
    core.clock.advance(0.31)
    # First a pre-vote round (dissertation 9.6): nothing changes yet.
    pre_votes = core.transport.take(m.RequestVote)
    assert [r.pre_vote for _, r, _ in pre_votes] == [True, True]
    assert core.term == 0 and core.storage.hard_state == m.HardState(0, "")
    pre_votes[0][2].callback(m.RequestVoteReply(0, True))
    assert core.role == "candidate" and core.term == 1
    votes = core.transport.take(m.RequestVote)
    assert len(votes) == 2 and not any(r.pre_vote for _, r, _ in votes)


def test_a_member_that_cannot_win_never_raises_its_term():
    """Dissertation 9.6 (PreVote): "a candidate would first ask other servers whether its
    log was up-to-date enough to get their vote" -- so a member cut off from the others
    does not inflate its term and depose the leader when it returns."""
    core = make_core()
    for _ in range(20):
        core.clock.advance(0.31)
        for _, request, d in core.transport.take(m.RequestVote):
            assert request.pre_vote
            d.errback(errors.TransportError("unreachable"))
    assert core.term == 0 and core.role == "follower"


def test_pre_vote_changes_nothing_on_the_receiver():
    """9.6: a pre-vote is answered as the vote would be, without adopting the term or voting."""
    core = follower_with_log(1, 1)
    reply = result_of(core.receive(m.RequestVote(5, B, 2, 1, pre_vote=True)))
    assert reply == m.RequestVoteReply(1, True)
    assert core.storage.hard_state == m.HardState(1, "")
    stale = result_of(core.receive(m.RequestVote(5, B, 1, 1, pre_vote=True)))
    assert not stale.granted
    result_of(core.receive(m.AppendEntries(1, C, 2, 1, (), 0)))  # a live leader
    assert not result_of(core.receive(m.RequestVote(5, B, 2, 1, pre_vote=True))).granted


def test_leader_heard_recently_is_not_deposed_by_a_vote_request():
    """Section 6 (disruptive servers): "if a server receives a RequestVote RPC within
    the minimum election timeout of hearing from a current leader, it does not update
    its term or grant its vote."  A forced election (start_election) passes."""
    core = follower_with_log()
    result_of(core.receive(m.AppendEntries(1, B, 0, 0, (), 0)))
    reply = result_of(core.receive(m.RequestVote(2, C, 10, 1)))
    assert reply == m.RequestVoteReply(1, False) and core.term == 1
    reply = result_of(core.receive(m.RequestVote(2, C, 10, 1, disrupt=True)))
    assert reply == m.RequestVoteReply(2, True)


# -- 5.3 log replication -------------------------------------------------------


def test_append_rejected_when_prev_entry_is_missing_with_hint():
    """5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries."  The reply carries where to resume."""
    core = follower_with_log(1, 1)
    reply = result_of(core.receive(m.AppendEntries(2, B, 5, 2, entries(2, start=6), 0)))
    assert not reply.success and reply.conflict_index == 3
    assert core.storage.last_index == 2


def test_conflict_hint_names_the_first_index_of_the_conflicting_term():
    """5.3 (after Figure 8): "the follower can include the term of the conflicting entry
    and the first index it stores for that term." """
    core = follower_with_log(1, 2, 2, 2)
    reply = result_of(core.receive(m.AppendEntries(3, B, 4, 3, (), 0)))
    assert (reply.success, reply.conflict_term, reply.conflict_index) == (False, 2, 2)


def test_conflicting_entries_are_replaced():
    """5.3: "If an existing entry conflicts with a new one (same index but different
    terms), delete the existing entry and all that follow it." """
    core = follower_with_log(1, 1, 1, 1)
    reply = result_of(core.receive(m.AppendEntries(2, B, 2, 1, entries(2, start=3), 0)))
    assert reply.success and reply.match_index == 3
    assert [core.storage.term_at(i) for i in range(1, 4)] == [1, 1, 2]
    assert core.storage.last_index == 3


def test_reordered_append_does_not_truncate_matching_entries():
    """5.3: entries are deleted only on a conflict; an older, delayed request whose
    entries already match must not cut off what a newer one added."""
    core = follower_with_log()
    result_of(core.receive(m.AppendEntries(1, B, 0, 0, entries(1, 1, 1), 0)))
    reply = result_of(core.receive(m.AppendEntries(1, B, 0, 0, entries(1), 0)))
    assert reply.success and reply.match_index == 1
    assert core.storage.last_index == 3


def test_follower_commit_is_bounded_by_the_last_new_entry():
    """Figure 2: "If leaderCommit > commitIndex, set commitIndex =
    min(leaderCommit, index of last new entry)." """
    core = follower_with_log(1, 1, 1, 1)  # entries 3 and 4 are not yet verified
    result_of(core.receive(m.AppendEntries(1, B, 2, 1, (), 10)))
    assert core.commit_index == 2
    assert sorted(core.client.applied) == [1, 2]


def test_new_leader_appends_a_no_op_of_its_term():
    """Section 8: "each leader commit a blank no-op entry into the log at the start of its term." """
    core = follower_with_log(1, 1)
    elect(core)
    last = core.storage.entries(3, 4)[0]
    assert (last.index, last.term, last.kind) == (3, core.term, m.EntryKind.NOOP)


def test_leader_batches_proposals_of_one_turn_into_one_request():
    """Replication: commands proposed together travel in one AppendEntries, not ten
    at a time as in the seed."""
    core = elect(make_core())
    core.clock.advance(0)
    for peer, request, d in core.transport.take(m.AppendEntries):
        d.callback(m.AppendEntriesReply(request.term, True, match_index=request.prev_index + len(request.entries)))
    core.transport.take()
    for i in range(50):
        core.propose(b"c%d" % i, None)
    core.clock.advance(0)
    sent = core.transport.take(m.AppendEntries)
    assert len(sent) == 2
    assert all(len(request.entries) == 50 for _, request, _ in sent)


# -- 5.4 safety ------------------------------------------------------------------


def test_vote_denied_to_a_candidate_with_an_older_last_term():
    """5.4.1: "If the logs have last entries with different terms, then the log with
    the later term is more up-to-date." """
    core = follower_with_log(1, 3)
    assert not result_of(core.receive(m.RequestVote(4, B, 10, 2))).granted
    assert result_of(core.receive(m.RequestVote(5, C, 1, 3))).granted is False  # shorter, same last term
    assert result_of(core.receive(m.RequestVote(6, B, 2, 3))).granted


def test_leader_does_not_commit_an_old_term_entry_by_counting_replicas():
    """5.4.2 / Figure 8: "Raft never commits log entries from previous terms by counting
    replicas.  Only log entries from the leader's current term are committed by counting
    replicas."  (The seed's commit rule did not check the term.)"""
    core = follower_with_log(1, 2)  # entry 2 is from term 2, never committed
    core.storage.save_hard_state(m.HardState(3, ""))
    elect(core)  # term 4, no-op at index 3
    # B holds entry 2 (an old term) but not the no-op.
    acknowledge(core, B, m.AppendEntries(core.term, A, 2, 2, (), 0), match_index=2)
    assert core.progress_of(B).match_index == 2
    assert core.commit_index == 0
    noop = core.storage.entries(3, 4)
    acknowledge(core, B, m.AppendEntries(core.term, A, 2, 2, tuple(noop), 0), match_index=3)
    assert core.commit_index == 3  # committing the no-op commits entry 2 with it


def test_leader_counts_itself_only_after_its_own_write_is_durable():
    """Durability: a leader may send before its fsync, but counts itself towards the
    quorum only once its own copy is durable."""
    clock = Clock()
    core = make_core(storage=MemoryStorage(clock, fsync_delay=0.05), clock=clock)
    clock.advance(0.31)  # election timeout: a pre-vote round first
    for peer, message, d in core.transport.take(m.RequestVote):
        d.callback(m.RequestVoteReply(0, True))
    assert core.role == "candidate" and not core.transport.sent  # own vote not durable yet
    clock.advance(0.05)
    for peer, message, d in core.transport.take(m.RequestVote):
        d.callback(m.RequestVoteReply(message.term, True))
    assert core.role == "leader"
    clock.advance(0.06)
    core.propose(b"x", None)
    clock.advance(0)
    acknowledge(core, B, m.AppendEntries(core.term, A, 1, core.term, tuple(core.storage.entries(2, 3)), 0),
                match_index=2)
    assert core.commit_index == 1  # the no-op; entry 2 is not durable here yet
    clock.advance(0.05)
    assert core.commit_index == 2


def test_majority_is_strict():
    """5.2: a quorum is a majority of the full cluster (the seed's (n+1)/2 let 2 of 4 decide)."""
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    assert quorum_index([5, 5, 1, 1]) == 1
    assert quorum_index([5, 5, 5, 1]) == 5


def test_overwriting_a_committed_entry_stops_the_member():
    """5.4 (state machine safety): a committed entry is never replaced; a member asked
    to do so has broken state and must stop rather than go on voting."""
    core = follower_with_log()
    result_of(core.receive(m.AppendEntries(1, B, 0, 0, entries(1, 1), 2)))
    assert core.commit_index == 2
    d = core.receive(m.AppendEntries(2, C, 1, 1, entries(2, start=2), 2))
    with pytest.raises(errors.InvariantViolation):
        result_of(d)
    assert core.role == "stopped"
    assert core.storage.term_at(2) == 1


# -- 7 snapshots ----------------------------------------------------------------


def test_snapshot_chunks_out_of_order_are_refused_with_the_expected_offset():
    """Section 7: chunks are written "at given offset"; one that does not continue the
    file tells the leader where to resume, and nothing is installed until done."""
    leader = follower_with_log(1, 1, 1, snapshot_threshold=1)
    result_of(leader.receive(m.AppendEntries(1, B, 3, 1, (), 3)))  # commits and snapshots 1..3
    source = leader.storage.open_snapshot()
    data = source.read(0, source.size)
    core = make_core(member=B, members=(A, B, C))
    first = result_of(core.receive(m.InstallSnapshot(1, A, 3, 1, 0, data[:10], False)))
    assert first.next_offset == 10
    skipped = result_of(core.receive(m.InstallSnapshot(1, A, 3, 1, 20, data[20:], True)))
    assert skipped.next_offset == 10
    assert core.applied_index == 0 and core.storage.open_snapshot() is None
    done = result_of(core.receive(m.InstallSnapshot(1, A, 3, 1, 10, data[10:], True)))
    assert done.next_offset == len(data)
    assert core.applied_index == 3 and core.commit_index == 3
    assert core.client.applied == leader.client.applied


def test_snapshot_keeps_the_log_after_a_matching_last_entry():
    """Section 7: "If existing log entry has same index and term as snapshot's last
    included entry, retain log entries following it and reply." """
    leader = follower_with_log(1, 1, snapshot_threshold=1)
    result_of(leader.receive(m.AppendEntries(1, B, 2, 1, (), 2)))  # commits and snapshots 1..2
    data = leader.storage.open_snapshot().read(0, 10 ** 6)
    core = follower_with_log(1, 1, 1, 1, member=B)
    result_of(core.receive(m.AppendEntries(1, A, 4, 1, (), 0)))  # A leads term 1
    result_of(core.receive(m.InstallSnapshot(1, A, 2, 1, 0, data, True)))
    assert core.storage.first_index == 3 and core.storage.last_index == 4


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("request_", [
    m.AppendEntries(1, B, 0, 0, entries(1, start=2), 0),  # does not follow prev_index
    m.AppendEntries(1, B, 0, 0, entries(2), 0),  # entry term above the request's
    m.AppendEntries(2, B, 0, 0, entries(2, 1), 0),  # terms decrease along the log
    m.AppendEntries(1, B, 0, 3, (), 0),  # prev_term for index 0
    m.AppendEntries(1, "", 0, 0, entries(1), 0),  # no leader named
    m.RequestVote(1, A, 0, 0),  # claims to be the receiver itself
    m.AppendEntries(1, B, -5, 0, (), 0),  # negative index
    m.AppendEntries(1, B, 0, 0, (), -1),  # negative commit
    m.RequestVote(2, B, -1, 0),  # negative last index
    m.InstallSnapshot(1, B, 3, 1, -10, b"x", True),  # negative offset
])
def test_malformed_requests_are_refused_and_change_nothing(request_):
    """Malformed RPC arguments get a clear error and never touch the log."""
    core = follower_with_log(1)
    before = (core.storage.hard_state, core.storage.last_index, core.storage.version)
    with pytest.raises(errors.InvalidRequest):
        result_of(core.receive(request_))
    assert (core.storage.hard_state, core.storage.last_index, core.storage.version) == before
    assert core.role == "follower"
