"""
Leadership transfer (Raft dissertation section 3.10).

The leader stops accepting new commands, brings the chosen voter's log up to
date, then sends it TimeoutNow; the target stands for election at once,
without a pre-vote and past its peers' leader stickiness, and wins because its
log is complete.  If leadership has not moved within an election timeout the
leader takes commands again.  Part of :class:`~txraft.core.raft.RaftCore`.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from txraft import errors
from txraft import messages as m
from txraft.core.roles import Leader
from txraft.core.shared import CoreState


class Transfer:
    """
    A leadership transfer under way.

    :ivar target: the voter leadership goes to.
    :ivar deferred: fires when this member stops leading; fails with
        :class:`~txraft.errors.Timeout` when the transfer gives up.
    :ivar timer: the DelayedCall that gives up.
    :ivar sent: whether TimeoutNow went out.
    """

    __slots__ = ("target", "deferred", "timer", "sent")

    def __init__(self, target: str, deferred: defer.Deferred[None], timer: IDelayedCall) -> None:
        self.target = target
        self.deferred = deferred
        self.timer = timer
        self.sent = False

    def finish(self, error: Optional[BaseException] = None) -> None:
        """Cancel the timer and fire the Deferred (with ``error``, or success)."""
        if self.timer.active():
            self.timer.cancel()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)


class LeadershipTransfer(CoreState):
    """The leadership-transfer half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    def transfer_leadership(self, to: Optional[str] = None) -> defer.Deferred[str]:
        """
        Hand leadership to the voter ``to``, or to the most up-to-date voter:
        here if this member leads, otherwise through the leader it knows.

        :returns: a Deferred firing with the target's id once the leader has
            stepped down (on the leader), or once the leader has accepted the
            request (elsewhere).
        :raises NotLeader: (through the Deferred) when no leader is known.
        :raises MembershipError: when ``to`` is this member's leader itself,
            not a voter, or when no other voter exists.
        """
        if self._role_of_term(Leader, self.term) is not None:
            try:
                target, d = self._start_transfer(to)
            except errors.RaftError:
                return defer.fail()
            return d.addCallback(lambda _: target)
        if not self.leader or self.role is m.Role.STOPPED:
            return defer.fail(errors.NotLeader(self.leader))
        forwarded = self._call(self.leader, m.TransferLeadership(to or ""))
        return forwarded.addCallback(lambda reply: reply.to)

    def _handle_transfer_leadership(self, req: m.TransferLeadership) -> m.TransferLeadershipReply:
        target, d = self._start_transfer(req.to or None)
        d.addErrback(lambda _: None)  # the asking member watches for the new leader itself
        return m.TransferLeadershipReply(target)

    def _choose_successor(self, leader: Leader, to: Optional[str]) -> str:
        voters = self._voting_peers()
        if to is not None:
            if to == self.id:
                raise errors.MembershipError(f"{to} already leads")
            if to not in self.configuration.ids:
                raise errors.UnknownMember(f"{to} is not a member")
            if to not in voters:
                raise errors.MembershipError(f"{to} is a learner; only a voter can lead")
            return to
        if not voters:
            raise errors.MembershipError("no other voter to hand leadership to")
        # The most up-to-date voter; ties go to the lowest id, for replays.
        return max(voters, key=lambda peer: (leader.progress[peer].match_index, [-ord(c) for c in peer]))

    def _start_transfer(self, to: Optional[str]) -> Tuple[str, defer.Deferred[None]]:
        leader = self._role_of_term(Leader, self.term)
        if leader is None:
            raise errors.NotLeader(self.leader)
        if leader.transfer is not None:
            raise errors.ChangeInProgress(f"leadership is already being handed to {leader.transfer.target}")
        target = self._choose_successor(leader, to)
        timer = self.clock.callLater(self.config.election_base, self._transfer_expired, leader)
        leader.transfer = Transfer(target, defer.Deferred(), timer)
        self.log.info("{member} hands leadership to {target}", member=self.id, target=target)
        self._send_timeout_now_if_ready(leader)
        if not leader.transfer.sent:
            self._replicate(leader, target)
        return target, leader.transfer.deferred

    def _transfer_expired(self, leader: Leader) -> None:
        transfer = leader.transfer
        if self.state is not leader or transfer is None:
            return
        leader.transfer = None
        self.log.info("{member}: handing leadership to {target} timed out; leading on",
                      member=self.id, target=transfer.target)
        transfer.finish(errors.Timeout(f"leadership did not move to {transfer.target} within an election timeout"))

    def _send_timeout_now_if_ready(self, leader: Leader) -> None:
        transfer = leader.transfer
        if transfer is None or transfer.sent:
            return
        progress = leader.progress.get(transfer.target)
        if progress is not None and progress.match_index >= self.storage.last_index:
            transfer.sent = True
            self._send(transfer.target, m.TimeoutNow(leader.term, self.id))

    def _hand_over(self, leader: Leader) -> None:
        """Leaving leadership for good: tell the most up-to-date voter to stand now, if it is up to date."""
        try:
            target = self._choose_successor(leader, None)
        except errors.MembershipError:
            return
        if leader.progress[target].match_index >= self.storage.last_index:
            self._send(target, m.TimeoutNow(leader.term, self.id))

    def _on_timeout_now_reply(self, peer: str, request: m.TimeoutNow, reply: m.TimeoutNowReply) -> None:
        self._adopt_newer_term(reply)

    def _handle_timeout_now(self, req: m.TimeoutNow) -> m.TimeoutNowReply:
        if req.term < self.term or not self.configuration.is_voter(self.id):
            return m.TimeoutNowReply(self.term)
        self.log.info("{member} stands for election: {leader} hands over", member=self.id, leader=req.leader)
        self._become_candidate(disrupt=True)
        return m.TimeoutNowReply(self.term)
