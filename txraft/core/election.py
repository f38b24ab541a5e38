"""
Leader election: the election timer, pre-vote, asking for votes and granting
them.

Implements Raft paper sections 5.2 (leader election) and 5.4.1 (election
restriction: votes only for an up-to-date log), and from Ongaro's
dissertation section 9.6 (pre-vote) and the "disruptive servers" rule of the
paper's section 6 (leader stickiness).  Only voters of the configuration in
effect stand, are asked, and count (dissertation chapter 4): a learner or a
removed member never campaigns.  Part of :class:`~txraft.core.raft.RaftCore`.
"""

from __future__ import annotations

from typing import Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from txraft import errors
from txraft import messages as m
from txraft.core.roles import Candidate, PreVote
from txraft.core.shared import CoreState
from txraft.interfaces import IStorage


def candidate_is_up_to_date(request: m.RequestVote, storage: IStorage) -> bool:
    """
    The election restriction (Raft paper section 5.4.1): a candidate's log is
    at least as up-to-date as ours when its last term is later, or the same
    with an index at least as high.

    :param request: the :class:`~txraft.messages.RequestVote`.
    :param storage: our :class:`~txraft.interfaces.IStorage`.
    """
    last = storage.last_index
    return (request.last_log_term, request.last_log_index) >= (storage.term_at(last), last)


class Election(CoreState):
    """The election half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    _election_call: Optional[IDelayedCall] = None
    _exhaustion_logged: Optional[int] = None  # the term whose exhaustion was logged
    _election_due: Optional[float] = None  # clock time the election timer is due; None once it has fired

    # -- the timer -------------------------------------------------------------

    def _reset_election_timer(self) -> None:
        self._cancel_election_timer()
        delay = self.config.election_base + self.rng.uniform(0, self.config.heartbeat)
        self._election_due = self.clock.seconds() + delay
        self._election_call = self.clock.callLater(delay, self._on_election_timeout)

    def _cancel_election_timer(self) -> None:
        if self._election_call is not None and self._election_call.active():
            self._election_call.cancel()
        self._election_call = None

    def _on_election_timeout(self) -> None:
        self._election_call = None
        if not self.state.campaigns or not self.may_stand():
            return
        due, self._election_due = self._election_due, None
        if due is not None and self.clock.seconds() - due > self.config.heartbeat / 2:
            # The timer fired late: this process stalled, and the leader's
            # heartbeats may be waiting, unread, in our sockets (a reactor
            # runs due timers before it reads).  Read them first: wait one
            # turn (once); a message from the leader meanwhile resets the timer.
            self._election_call = self.clock.callLater(0, self._on_election_timeout)
            return
        self._start_pre_vote()

    def start_election(self) -> None:
        """
        Stand for election now, even if a leader is alive (the seed's
        StartElection): no pre-vote, and voters set aside leader stickiness.

        :raises Stopped: when the member is stopped.
        """
        if self.state.role is m.Role.STOPPED:
            raise errors.Stopped(f"member {self.id} is stopped")
        if self._term_exhausted():
            raise errors.RaftError(f"member {self.id} is at term {self.term}, the last a member may use")
        if not self.may_stand():
            raise errors.MembershipError(f"member {self.id} is not a voter; it cannot stand for election")
        self._become_candidate(disrupt=True)

    def _last_log_term(self) -> int:
        """The term of the last entry in the log (of the snapshot when there is none; 0 before any)."""
        term = self.storage.term_at(self.storage.last_index)
        assert term is not None, "storage knows the term of its last index"
        return term

    # -- pre-vote (dissertation 9.6) ----------------------------------------------

    def _term_exhausted(self) -> bool:
        """:returns: whether the next term would reach :data:`~txraft.messages.NUMBER_LIMIT` (logged once)."""
        if self.term + 1 < m.NUMBER_LIMIT:
            return False
        if self._exhaustion_logged == self.term:
            return True
        self._exhaustion_logged = self.term
        self.log.error("{member} cannot stand for election: term {term} is the last a member may use "
                       "(see docs/operations.md, 'A term out of range')", member=self.id, term=self.term)
        return True

    def _start_pre_vote(self) -> None:
        """
        Ask whether a majority would vote for us before raising the term.  A
        member that cannot win (cut off, or with a stale log) never raises its
        term, so when it returns it cannot force a healthy leader to step down.
        """
        if self._term_exhausted():
            return
        self._set_leader("")
        self._reset_election_timer()
        assert self.state.campaigns, "a leader or a stopped member starts no pre-vote"
        round_ = self.state.pre_vote = PreVote(self.term + 1, self.id)
        if self.configuration.has_majority(round_.granted):
            self._become_candidate(disrupt=False)
            return
        request = m.RequestVote(round_.term, self.id, self.storage.last_index, self._last_log_term(),
                                pre_vote=True)
        for peer in self._voting_peers():
            self._send(peer, request)

    def _on_pre_vote_reply(self, peer: str, request: m.RequestVote, reply: m.RequestVoteReply) -> None:
        state = self.state
        if not state.campaigns or state.pre_vote is None or state.pre_vote.term != request.term:
            return
        if reply.granted:
            state.pre_vote.granted.add(peer)
            if self.configuration.has_majority(state.pre_vote.granted):
                self._become_candidate(disrupt=False)
        elif reply.term > self.term:
            # A newer term exists; following it cannot hurt anyone.
            self._become_follower(reply.term, "")

    # -- votes (5.2) -----------------------------------------------------------------

    def _become_candidate(self, disrupt: bool) -> None:
        if self._term_exhausted():
            return
        term = self.term + 1
        self.storage.save_hard_state(m.HardState(term, self.id))
        candidate = Candidate(term, self.id)
        self._enter(candidate)
        self._set_leader("")
        self.log.debug("{member} campaigns in term {term}", member=self.id, term=term)
        self._reset_election_timer()
        request = m.RequestVote(term, self.id, self.storage.last_index, self._last_log_term(), disrupt)
        # The vote for ourselves must be durable before we ask for others'.
        self.storage.durable().addCallback(lambda _: self._ask_for_votes(candidate, request))

    def _ask_for_votes(self, candidate: Candidate, request: m.RequestVote) -> None:
        if self.state is not candidate:
            return
        if self.configuration.has_majority(candidate.votes):
            self._become_leader()
            return
        for peer in self._voting_peers():
            self._send(peer, request)

    def _on_vote_reply(self, peer: str, request: m.RequestVote, reply: m.RequestVoteReply) -> None:
        if reply.term > self.term:
            self._become_follower(reply.term, "")
            return
        candidate = self._role_of_term(Candidate, request.term)
        if candidate is None or not reply.granted:
            return
        candidate.votes.add(peer)
        if self.configuration.has_majority(candidate.votes):
            self._become_leader()

    def _on_vote_reply_or_pre_vote(self, peer: str, request: m.RequestVote, reply: m.RequestVoteReply) -> None:
        if request.pre_vote:
            self._on_pre_vote_reply(peer, request, reply)
        else:
            self._on_vote_reply(peer, request, reply)

    # -- granting votes -----------------------------------------------------------------

    def _heard_from_leader_recently(self) -> bool:
        return self.state.heard_from_leader_within(self.clock.seconds(), self.config.election_base)

    def _handle_request_vote(
            self, req: m.RequestVote) -> Union[m.RequestVoteReply, defer.Deferred[m.RequestVoteReply]]:
        self._check_sender(req.candidate, "candidate")
        # Votes are granted whatever this member's own configuration says:
        # a member promoted by an entry it has not received yet must still be
        # able to vote (dissertation 4.1), and candidates neither ask nor
        # count members that are not voters in their configuration.
        if req.term < self.term:
            return m.RequestVoteReply(self.term, False)
        if req.pre_vote:
            # Answer as we would vote, but change nothing.
            free = req.term > self.term or self.voted_for in ("", req.candidate)
            granted = (candidate_is_up_to_date(req, self.storage) and free
                       and not self._heard_from_leader_recently())
            return m.RequestVoteReply(self.term, granted)
        # Only a member of our configuration may set stickiness aside: a
        # removed member cannot depose the leader even by a forced election.
        disrupt = req.disrupt and req.candidate in self.configuration.ids
        if req.term > self.term and not disrupt and self._heard_from_leader_recently():
            # We heard from a live leader moments ago: a member that lost
            # contact must not depose it (Raft paper section 6, disruptive servers).
            return m.RequestVoteReply(self.term, False)
        if req.term > self.term:
            self._become_follower(req.term, "")
        granted = candidate_is_up_to_date(req, self.storage) and self.voted_for in ("", req.candidate)
        if granted:
            if self.voted_for != req.candidate:
                self.storage.save_hard_state(m.HardState(self.term, req.candidate))
            self._reset_election_timer()
        return self._reply_when_durable(m.RequestVoteReply(self.term, granted))
