"""ReadIndex (Raft dissertation section 6.4): linearizable reads without a log write."""

import pytest

from txraft import errors
from txraft import messages as m
from tests.core.harness import elect, make_core, result_of


def ack_all(core, kind=m.AppendEntries, only=None):
    for peer, request, d in core.transport.take(kind):
        if only is None or peer in only:
            d.callback(m.AppendEntriesReply(request.term, True,
                                            match_index=request.prev_index + len(request.entries)))


def test_read_waits_for_a_quorum_to_confirm_leadership():
    """6.4: "the leader needs to check whether it has been deposed ... by exchanging
    heartbeat messages with a majority of the cluster" before it serves a read."""
    core = elect(make_core())
    core.clock.advance(0)
    ack_all(core)  # the no-op commits
    assert core.commit_index == 1
    core.clock.advance(0)  # followers hear of the commit
    ack_all(core)
    reads = [core.read_index() for _ in range(10)]
    core.clock.advance(0)
    heartbeats = core.transport.take(m.AppendEntries)
    assert len(heartbeats) == 2, "reads of one turn share one heartbeat round"
    assert not any(d.called for d in reads)
    peer, request, d = heartbeats[0]
    d.callback(m.AppendEntriesReply(request.term, True, match_index=request.prev_index))
    assert [result_of(d) for d in reads] == [1] * 10


def test_read_waits_until_the_leader_commits_an_entry_of_its_term():
    """6.4: "the leader must have at least one committed entry from its term"."""
    core = elect(make_core())
    read = core.read_index()
    core.clock.advance(0)
    for peer, request, d in list(core.transport.sent):
        if isinstance(request, m.AppendEntries) and not request.entries:
            core.transport.sent.remove((peer, request, d))
            d.callback(m.AppendEntriesReply(request.term, True, match_index=request.prev_index))
    assert not read.called
    ack_all(core)  # now the no-op commits, with the heartbeat round already confirmed
    assert result_of(read) == 1


def test_read_on_a_follower_fails_with_not_leader():
    core = make_core()
    with pytest.raises(errors.NotLeader):
        result_of(core.read_index())


def test_pending_reads_fail_when_the_leader_steps_down():
    core = elect(make_core())
    read = core.read_index()
    core.clock.advance(0)
    peer, request, d = core.transport.take(m.AppendEntries)[0]
    d.callback(m.AppendEntriesReply(request.term + 1, False))
    with pytest.raises(errors.NotLeader):
        result_of(read)
