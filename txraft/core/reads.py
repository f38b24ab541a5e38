"""
Linearizable reads without a log write: ReadIndex.

Implements Ongaro's dissertation section 6.4: the leader records its commit
index, confirms with one heartbeat round acknowledged by a quorum that it
still leads (shared by every read of one reactor turn), and answers once it
has committed an entry of its own term.  A follower asks the leader for the
index.  Part of :class:`~txraft.core.raft.RaftCore`.
"""

from __future__ import annotations

from twisted.internet import defer

from txraft import errors
from txraft import messages as m
from txraft.core.roles import Leader
from txraft.core.shared import CoreState


class Reads(CoreState):
    """The ReadIndex half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    def read_index(self) -> defer.Deferred[int]:
        """
        Learn a commit index that includes every write acknowledged before the
        call, from this member if it leads, otherwise from the leader it knows.

        :returns: a Deferred firing with the index, once the leader has
            confirmed with a quorum that it still leads.
        :raises NotLeader: (through the Deferred) when no leader is known.
        """
        if self._role_of_term(Leader, self.term) is not None or self.state.role is m.Role.STOPPED \
                or not self.leader:
            return self._read_index_locally()
        return self._call(self.leader, m.ReadIndex()).addCallback(lambda reply: reply.index)

    def _read_index_locally(self) -> defer.Deferred[int]:
        leader = self._role_of_term(Leader, self.term)
        if leader is None:
            return defer.fail(errors.NotLeader(self.leader))
        if leader.read_call is None:
            # Reads that arrive in one reactor turn share one heartbeat round.
            leader.round += 1
            leader.read_call = self.clock.callLater(0, self._confirm_leadership, leader)
        return leader.reads.wait(leader.round)

    def _handle_read_index(self, req: m.ReadIndex) -> defer.Deferred[m.ReadIndexReply]:
        return self._read_index_locally().addCallback(m.ReadIndexReply)

    def _confirm_leadership(self, leader: Leader) -> None:
        leader.read_call = None
        if self.state is not leader:
            return
        for peer in list(leader.progress):
            self._send_append(leader, peer, heartbeat=True)
        self._check_reads(leader)

    def _check_reads(self, leader: Leader) -> None:
        if not leader.reads or self.state is not leader:
            return
        # The leader must have committed an entry of its term first, so that
        # its commit index is at least every earlier leader's.
        if self.storage.term_at(self.commit_index) != leader.term:
            return
        rounds = {peer: p.acked_round for peer, p in leader.progress.items()}
        rounds[self.id] = leader.round
        confirmed = self.configuration.quorum_index(rounds)
        leader.reads.release_through(confirmed, self.commit_index)
