"""
Roles as objects, observers and the public entry points of the core: a reply or
timer of an earlier role cannot touch the next one, and everything a member
API needs is reachable without private calls.
"""

import pytest
from zope.interface.verify import verifyObject

from txraft import errors
from txraft import messages as m
from txraft.core.observers import Observers, RaftObserver
from txraft.interfaces import IRaftObserver
from txraft.proposals import Proposals
from tests.core.harness import A, B, C, acknowledge, elect, make_core, result_of


class Recorder(RaftObserver):
    def __init__(self):
        self.events = []

    def applied(self, entry, outcome):
        self.events.append(("applied", entry.index, outcome))

    def applied_through(self, index):
        self.events.append(("applied_through", index))

    def leader_changed(self, leader, term):
        self.events.append(("leader_changed", leader, term))


def test_observer_implementations_provide_the_interface():
    verifyObject(IRaftObserver, RaftObserver())
    verifyObject(IRaftObserver, Observers())
    verifyObject(IRaftObserver, Recorder())
    verifyObject(IRaftObserver, Proposals(make_core(), None, None, "session"))


def test_a_reply_to_an_earlier_leadership_changes_nothing():
    """Role state is made on entering the role: an AppendEntries reply from a
    leadership this member has since lost does not touch the next one's progress."""
    core = elect(make_core())
    core.clock.advance(0)
    old = core.transport.take(m.AppendEntries)
    core.receive_reply(C, m.RequestVote(core.term, A, 0, 0), m.RequestVoteReply(core.term + 1, False))
    assert core.role == "follower"
    elect(core)
    (peer, request, _), = [s for s in old if s[0] == B]
    acknowledge(core, B, request, match_index=request.prev_index + len(request.entries))
    assert core.progress_of(B).match_index == 0


def test_stepping_down_drops_the_leader_state():
    core = elect(make_core())
    assert core.progress_of(B) is not None
    core.receive(m.AppendEntries(core.term + 1, B, 0, 0, (), 0))
    assert core.role == "follower" and core.leader == B
    assert core.progress_of(B) is None
    assert core.clock.getDelayedCalls() and all(
        call.func.__name__ != "_on_heartbeat" for call in core.clock.getDelayedCalls())


def test_propose_on_a_follower_forwards_to_the_leader():
    """The seed's Append RPC: any member accepts a command and hands it to the leader."""
    core = make_core()
    with pytest.raises(errors.NotLeader):
        result_of(core.propose(b"x", None))  # no leader known
    result_of(core.receive(m.AppendEntries(1, B, 0, 0, (), 0)))
    d = core.propose(b"x", None)
    (peer, request, reply), = core.transport.take(m.ForwardAppend)
    assert peer == B and request.command == b"x"
    reply.callback(m.ForwardAppendReply(1, 5))
    assert result_of(d) == (1, 5)


def test_observers_hear_applies_and_leader_changes_and_one_that_raises_is_contained():
    core = make_core(members=(A,))
    calls = []
    core.client.leader_changed = lambda me, leader: calls.append((me, leader))

    class Broken(RaftObserver):
        def leader_changed(self, leader, term):
            raise RuntimeError("observer bug")

    recorder = Recorder()
    core.add_observer(Broken())
    core.add_observer(recorder)
    core.start_election()
    core.clock.advance(0)
    assert core.role == "leader"
    result_of(core.propose(b"x", None))
    core.clock.advance(0)
    assert calls == [(A, A)], "the application hears of the leader once, through the observers"
    assert ("leader_changed", A, 1) in recorder.events
    assert ("applied", 2, 2) in recorder.events  # apply() returns the index
    assert recorder.events[-1] == ("applied_through", 2)
