"""
Membership changes at run time: which configuration is in effect, proposing
a change, leaving a joint configuration, promoting learners that caught up,
and a leader stepping down once it is no longer part of the cluster.

Implements Raft dissertation chapter 4 with joint consensus (section 4.3,
the Raft paper's section 6):

- a configuration takes effect on a member as soon as its entry is in the
  member's log, committed or not (4.1), and is undone if that entry is
  overwritten;
- a change that alters the voters goes through a joint configuration (old and
  new voters must both form a majority), which the leader leaves on its own
  once the joint entry commits; a change of learners alone takes one step;
- one change at a time, and only from a leader that has committed an entry of
  its own term (the fix of section 4.1's bug with single-server changes);
- learners receive the log but neither vote nor count; a learner added to
  become a voter is promoted once it has caught up (4.2.1);
- a leader that is not a voter of the configuration it committed steps down,
  handing over to the most up-to-date voter (4.2.2).

Part of :class:`~txraft.core.raft.RaftCore`; the values are
:mod:`txraft.core.membership`'s.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Tuple

from twisted.internet import defer

from txraft import errors
from txraft import messages as m
from txraft.core.membership import Configuration, Member
from txraft.core.progress import Progress
from txraft.core.roles import Leader
from txraft.core.shared import CoreState


class Reconfiguration(CoreState):
    """The membership half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    def _init_configurations(self, bootstrap: Configuration) -> None:
        #: ``(index, Configuration)`` in effect at the snapshot (or the bootstrap at 0).
        self._base_configuration: Tuple[int, Configuration] = (0, bootstrap)
        #: ``[(index, Configuration)]`` of CONFIG entries in the log after it, in order.
        self._configurations: List[Tuple[int, Configuration]] = []
        #: ``[(term, index, Deferred)]`` waiting for a change to complete.
        self._change_waiters: List[Tuple[int, int, defer.Deferred[Configuration]]] = []
        #: Indexes of configuration entries this leader appended on its own
        #: (promoting a learner, and leaving that joint configuration).
        self._automatic: Set[int] = set()

    # -- the configuration in effect ----------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """The :class:`~txraft.core.membership.Configuration` in effect: the latest in the log."""
        return (self._configurations[-1] if self._configurations else self._base_configuration)[1]

    @property
    def configuration_index(self) -> int:
        """Index of the entry that holds :attr:`configuration` (0: the bootstrap one)."""
        return (self._configurations[-1] if self._configurations else self._base_configuration)[0]

    def configuration_at(self, index: int) -> Configuration:
        """:returns: the configuration in effect after the entry at ``index``."""
        found = self._base_configuration[1]
        for at, configuration in self._configurations:
            if at > index:
                break
            found = configuration
        return found

    @property
    def members(self) -> Tuple[str, ...]:
        """Ids of every member of the configuration (learners and a joint one's old members too)."""
        return self.configuration.ids

    @property
    def peers(self) -> Tuple[str, ...]:
        """:attr:`members` other than this one: whom a leader replicates to."""
        return tuple(i for i in self.configuration.ids if i != self.id)

    def removed(self) -> bool:
        """:returns: whether this member's configuration no longer lists it (an empty one: not yet added)."""
        return bool(self.configuration.members) and self.id not in self.configuration.ids

    def _voting_peers(self) -> List[str]:
        return sorted(i for i in self.configuration.voters if i != self.id)

    def may_stand(self) -> bool:
        """
        :returns: whether this member may stand for election: it votes in
            the configuration in effect or, while that one is not known to be
            committed, in the one before it.  The second case keeps a cluster
            live when a member holding an uncommitted configuration that
            removes it has the most complete log, so that no other member
            can win without it (the leader that proposed the change crashed).
            Its votes are counted by the configuration in effect, so it is as
            safe as any candidate; learners never stand.
        """
        if self.configuration.is_voter(self.id):
            return True
        return (self.configuration_index > self.commit_index
                and self.configuration_at(self.configuration_index - 1).is_voter(self.id))

    def change_in_flight(self) -> bool:
        """:returns: whether a configuration is uncommitted, or joint (a change is half done)."""
        return self.configuration.joint or self.configuration_index > self.commit_index

    # -- following the log -------------------------------------------------------------

    def _load_configurations(self, index: int, configuration: Configuration) -> None:
        """Take ``configuration`` as in effect at ``index`` (a snapshot) and read the rest from the log."""
        self._base_configuration = (index, configuration)
        self._configurations = []
        storage = self.storage
        low = max(index + 1, storage.first_index)
        while low <= storage.last_index:
            batch = storage.entries(low, storage.last_index + 1, 1024 * 1024)
            self._note_configurations(batch)
            low = batch[-1].index + 1
        self._configuration_changed()

    def _note_configurations(self, entries: Iterable[m.Entry]) -> None:
        for entry in entries:
            if entry.kind == m.EntryKind.CONFIG:
                try:
                    configuration = Configuration.decode(entry.data)
                except ValueError as e:
                    self._fail(f"configuration entry {entry.index} is malformed: {e}")
                self._configurations.append((entry.index, configuration))

    def _log_appended(self, entries: Sequence[m.Entry]) -> None:
        """``entries`` were written to the log, replacing any from their first index on."""
        if not entries:
            return
        before = self.configuration
        first = entries[0].index
        while self._configurations and self._configurations[-1][0] >= first:
            self._configurations.pop()
        self._note_configurations(entries)
        if self.configuration != before:
            self._configuration_changed()

    def _fold_configurations(self, index: int) -> None:
        """The log up to ``index`` is compacted: configurations before it live in the snapshot."""
        base = self._base_configuration
        while self._configurations and self._configurations[0][0] <= index:
            base = self._configurations.pop(0)
        self._base_configuration = base

    def _configuration_changed(self) -> None:
        configuration = self.configuration
        self.log.info("{member} configuration at {index}: {members}", member=self.id,
                      index=self.configuration_index, members=configuration.describe())
        leader = self._role_of_term(Leader, self.term)
        if leader is not None:
            self._sync_progress(leader)
        self.observers.configuration_changed(configuration)

    def _replication_targets(self) -> Set[str]:
        """
        Whom a leader sends the log to: the members of the configuration and,
        until it commits, those of the one before, so that a member being
        removed learns it (and stops) rather than wait on a leader that
        forgot it.
        """
        targets = set(self.configuration.ids)
        if self.configuration_index > self.commit_index:
            targets |= set(self.configuration_at(self.configuration_index - 1).ids)
        targets.discard(self.id)
        return targets

    def _sync_progress(self, leader: Leader) -> None:
        now = self.clock.seconds()
        targets = self._replication_targets()
        for peer in list(leader.progress):
            if peer not in targets:
                leader.progress.pop(peer).close_snapshot()
        for peer in sorted(targets - set(leader.progress)):
            leader.progress[peer] = Progress(peer, self.storage.last_index + 1, now)

    def _validate_configuration_entries(self, entries: Sequence[m.Entry]) -> None:
        for entry in entries:
            if entry.kind == m.EntryKind.CONFIG:
                try:
                    Configuration.decode(entry.data)
                except ValueError as e:
                    raise errors.InvalidRequest(f"entry {entry.index}: {e}") from None

    # -- proposing changes (on the leader) -------------------------------------------------

    def change_members(self, action: str, member_id: str, name: str = "",
                       voter: bool = True) -> defer.Deferred[Tuple[int, int]]:
        """
        Ask for one membership change: here if this member leads, otherwise
        through the leader it knows (a ChangeMembers request).

        :param str action: ``"add"``, ``"remove"``, ``"promote"`` or ``"replace"``
            (remove ``member_id``, add ``name`` ... see :meth:`propose_members`).
        :returns: a Deferred firing with ``(term, index)`` of the entry that
            starts the change.
        """
        if self._role_of_term(Leader, self.term) is not None:
            return defer.maybeDeferred(self._change_here, action, member_id, name, voter)
        if not self.leader or self.role is m.Role.STOPPED:
            return defer.fail(errors.NotLeader(self.leader))
        d = self._call(self.leader, m.ChangeMembers(action, member_id, name, voter))
        return d.addCallback(lambda reply: (reply.term, reply.index))

    def _handle_change_members(self, req: m.ChangeMembers) -> defer.Deferred[m.ChangeMembersReply]:
        # A member that does not lead passes it on (a new member's --join may
        # name any member).
        d = self.change_members(req.action, req.member, req.name, req.voter)
        return d.addCallback(lambda placed: m.ChangeMembersReply(*placed))

    def _change_here(self, action: str, member_id: str, name: str, voter: bool) -> Tuple[int, int]:
        self._check_can_change()
        members = {member.id: member for member in self.configuration.members}
        current = members.get(member_id)
        if action == "add":
            if current is not None:
                raise errors.MembershipError(f"{member_id} is already a member")
            # Everyone joins as a learner; a voter-to-be is promoted once
            # caught up, by the leader or (without auto_promote) explicitly.
            members[member_id] = Member(member_id, name, False, promote=voter and self.config.auto_promote)
        elif action == "remove":
            if current is None:
                raise errors.UnknownMember(f"{member_id} is not a member")
            del members[member_id]
        elif action == "promote":
            if current is None:
                raise errors.UnknownMember(f"{member_id} is not a member")
            if current.voter:
                raise errors.MembershipError(f"{member_id} is already a voter")
            if not self._caught_up(member_id):
                raise errors.MembershipError(f"{member_id} has not caught up with the leader's log yet")
            members[member_id] = Member(member_id, current.name, True)
        else:
            raise errors.InvalidRequest(f"unknown membership action {action!r}")
        return self.propose_members(members.values())

    def _check_can_change(self) -> Leader:
        leader = self._role_of_term(Leader, self.term)
        if leader is None:
            raise errors.NotLeader(self.leader)
        if leader.transfer is not None:
            raise errors.ChangeInProgress("a leadership transfer is under way")
        if self.storage.term_at(self.commit_index) != self.term:
            # Dissertation 4.1, the fix to single-server changes: a leader
            # must first commit an entry of its term, or a change of an
            # earlier leader that it never saw could be overruled.
            raise errors.LeaderNotReady("the leader has not committed an entry of its term yet")
        if self.change_in_flight():
            if self.configuration_index in self._automatic:
                # No caller waits on it, and it is over in a round trip or two:
                # the member API asks again rather than refuse.
                raise errors.LeaderNotReady(f"a learner is being promoted ({self.configuration.describe()})")
            raise errors.ChangeInProgress(
                f"a membership change is in progress ({self.configuration.describe()})")
        return leader

    def propose_members(self, members: Iterable[Member], automatic: bool = False) -> Tuple[int, int]:
        """
        Propose ``members`` (an iterable of :class:`Member`) as the cluster's
        configuration, through a joint configuration when the voters change.

        :returns: ``(term, index)`` of the entry proposed.
        :raises NotLeader: when this member does not lead.
        :raises ChangeInProgress: when a change is under way, or this leader
            has not committed an entry of its term.
        :raises MembershipError: when no voter would remain.
        """
        leader = self._check_can_change()
        target = Configuration.of(members)
        if not target.voters:
            raise errors.MembershipError("the change would leave the cluster without a voter")
        current = self.configuration
        if target == current:
            raise errors.MembershipError("the configuration would not change")
        if target.voters != current.voters:
            target = Configuration(target.members, old=current.members)
        placed = self._append_configuration(leader, target)
        if automatic:
            self._automatic.add(placed[1])
        return placed

    def _append_configuration(self, leader: Leader, configuration: Configuration) -> Tuple[int, int]:
        entry = m.Entry(self.term, self.storage.last_index + 1, m.EntryKind.CONFIG, configuration.encode())
        self._append_own(leader, [entry])
        return entry.term, entry.index

    # -- waiting for a change -----------------------------------------------------------------

    def wait_for_change(self, term: int, index: int) -> defer.Deferred[Configuration]:
        """
        :returns: a Deferred firing once the change started by the entry
            ``(term, index)`` is committed and, if joint, left; failing with
            :class:`~txraft.errors.MembershipError` when that entry was lost
            to a change of leader.
        """
        d: defer.Deferred[Configuration] = defer.Deferred()
        self._change_waiters.append((term, index, d))
        self._release_change_waiters()
        return d

    def _release_change_waiters(self) -> None:
        if not self._change_waiters:
            return
        committed_index = max(i for i, _ in [self._base_configuration] + self._configurations
                              if i <= self.applied_index)
        committed = self.configuration_at(self.applied_index)
        waiting = []
        for term, index, d in self._change_waiters:
            if d.called:
                continue  # cancelled by its caller
            if index > self.applied_index:
                waiting.append((term, index, d))
            elif index >= self.storage.first_index and self.storage.term_at(index) != term:
                d.errback(errors.MembershipError(
                    f"the change proposed at {index} in term {term} was lost with a change of leader"))
            elif committed_index >= index and not committed.joint:
                d.callback(committed)
            else:
                waiting.append((term, index, d))
        self._change_waiters = waiting

    def _fail_change_waiters(self, error: BaseException) -> None:
        waiters, self._change_waiters = self._change_waiters, []
        for _, _, d in waiters:
            if not d.called:
                d.errback(error)

    # -- the leader after a commit ---------------------------------------------------------------

    def _reconfigure_after_commit(self, leader: Leader) -> None:
        """Finish what a commit makes possible: leave a joint configuration, step down, promote."""
        if self.state is not leader or self.configuration_index > self.commit_index:
            return
        if len(leader.progress) != len(self._replication_targets()):
            self._sync_progress(leader)  # the members a committed change removed
        configuration = self.configuration
        if configuration.joint:
            joint_index = self.configuration_index
            _, index = self._append_configuration(leader, configuration.leave_joint())
            if joint_index in self._automatic:
                self._automatic.add(index)
        elif not configuration.is_voter(self.id):
            self.log.info("{member} is no longer a voter; stepping down", member=self.id)
            self._hand_over(leader)
            self._become_follower(self.term, "")
        else:
            self._maybe_promote(leader)

    def _caught_up(self, member_id: str) -> bool:
        progress = self.progress_of(member_id)
        return progress is not None and progress.snapshot is None and progress.match_index >= self.commit_index

    def _maybe_promote(self, leader: Leader) -> None:
        if self.change_in_flight() or leader.transfer is not None \
                or self.storage.term_at(self.commit_index) != self.term:
            return
        members = self.configuration.members
        for member in members:
            if not member.voter and member.promote and self._caught_up(member.id):
                self.log.info("{member} promotes {learner}: caught up", member=self.id, learner=member.id)
                promoted = [Member(x.id, x.name, True) if x is member else x for x in members]
                self.propose_members(promoted, automatic=True)
                return
