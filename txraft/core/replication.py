"""
Log replication: placing client commands in the leader's log (a follower
forwards them), the leader sending AppendEntries and committing by counting
replicas, and the follower accepting or refusing them.

Implements Raft paper sections 5.3 (log replication, the consistency check,
the conflict hint after Figure 8), 5.4.2 (only entries of the current term are
committed by counting replicas) and 8 (the leader's no-op), plus the
dissertation's check-quorum (section 6.2).  Part of
:class:`~txraft.core.raft.RaftCore`.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, overload

from twisted.internet import defer

from txraft import errors
from txraft import messages as m
from txraft.core import quorum
from txraft.core.membership import Configuration
from txraft.core.progress import Progress
from txraft.core.roles import Follower, Leader
from txraft.core.shared import CoreState
from txraft.interfaces import IStorage


@overload
def committable(matches: Iterable[int], term: int, storage: IStorage, configuration: None = None) -> int: ...


@overload
def committable(matches: Mapping[str, int], term: int, storage: IStorage, configuration: Configuration) -> int: ...


def committable(matches: Any, term: int, storage: IStorage, configuration: Optional[Configuration] = None) -> int:
    """
    The commit rule of Raft paper section 5.4.2 (Figure 8): the highest index
    stored on a majority is committed only if its entry is of the leader's
    current term; earlier entries are committed along with it.

    :param matches: the highest index each member (the leader included) is
        known to have stored durably: a list, or a dict by member id when
        ``configuration`` says whose count (its voters, a majority of each
        set while joint).
    :param int term: the leader's term.
    :param storage: the leader's :class:`~txraft.interfaces.IStorage`.
    :param configuration: a :class:`~txraft.core.membership.Configuration`, or ``None``.
    :returns: the index that may be committed, or 0.
    """
    if configuration is None:
        candidate = quorum.quorum_index(matches)
    else:
        candidate = configuration.quorum_index(matches)
    return candidate if candidate and storage.term_at(candidate) == term else 0


class Replication(CoreState):
    """The replication half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    #: Commands refused with :class:`~txraft.errors.Busy` by this member as leader.
    busy_refusals = 0

    def progress_of(self, peer: str) -> Optional[Progress]:
        """
        :returns: what this member, as leader, knows of ``peer``'s log (a
            :class:`~txraft.core.progress.Progress`, to read only), or ``None``
            when it does not lead.
        """
        leader = self._role_of_term(Leader, self.term)
        return leader.progress.get(peer) if leader is not None else None

    # -- leader: appending -------------------------------------------------------

    def propose(self, command: bytes, request_id: Optional[m.RequestId]) -> defer.Deferred[Tuple[int, int]]:
        """
        Append a client command to the log: here if this member leads,
        otherwise through the leader it knows (a ForwardAppend request).

        :param bytes command: the command.
        :param request_id: its :class:`~txraft.messages.RequestId`, or ``None``.
        :returns: a Deferred firing with ``(term, index)`` where the leader
            placed the command (at once on the leader).
        :raises NotLeader: (through the Deferred) when no leader is known, or
            the one asked no longer leads.
        :raises CommandTooLarge: (through the Deferred) when ``command`` is over
            ``config.max_command_bytes``; the leader checks again.
        :raises Busy: (through the Deferred) when the leader holds as much
            uncommitted work as it may (nothing was stored).
        """
        try:
            self._check_command(command)
        except errors.InvalidRequest:
            return defer.fail()
        if self._role_of_term(Leader, self.term) is not None:
            try:
                return defer.succeed(self.place(command, request_id))
            except errors.Busy as busy:
                return defer.fail(busy)
            except errors.NotLeader:
                return defer.fail()
        if not self.leader or self.role is m.Role.STOPPED:
            return defer.fail(errors.NotLeader(self.leader))
        if self.removed():
            return defer.fail(errors.MembershipError(f"{self.id} was removed from the cluster"))
        # A None request id comes only from tests over the memory transport:
        # the member API always gives one, and the AMP codec refuses None.
        d = self._call(self.leader, m.ForwardAppend(command, request_id))  # type: ignore[arg-type]
        return d.addCallback(lambda reply: (reply.term, reply.index))

    def _check_command(self, command: bytes) -> None:
        limit = self.config.max_command_bytes
        if len(command) > limit:
            raise errors.CommandTooLarge(f"command of {len(command)} bytes is above the limit of {limit}")

    def uncommitted(self) -> Tuple[int, int]:
        """:returns: ``(entries, bytes)`` of commands this leader placed and has not committed; ``(0, 0)`` off lead."""
        leader = self._role_of_term(Leader, self.term)
        if leader is None:
            return 0, 0
        return len(leader.uncommitted), leader.uncommitted_bytes

    def refusal(self, size: int) -> Optional[errors.Busy]:
        """
        Backpressure (etcd's ``MaxUncommittedEntriesSize``): whether this
        leader must refuse a command of ``size`` bytes now, because it already
        holds the configured uncommitted entries or bytes, or has spent
        ``config.turn_budget`` seconds of this reactor turn placing commands.
        A command is always admitted when nothing is uncommitted, however
        large.  Nothing to check off lead: the leader checks forwarded
        commands itself.

        :returns: the :class:`~txraft.errors.Busy` to fail it with, or ``None``.
        """
        leader = self._role_of_term(Leader, self.term)
        if leader is None or not leader.uncommitted:
            return None
        config = self.config
        if (len(leader.uncommitted) >= config.max_uncommitted_entries
                or leader.uncommitted_bytes + size > config.max_uncommitted_bytes):
            return errors.Busy(
                f"the leader holds {len(leader.uncommitted)} uncommitted commands "
                f"({leader.uncommitted_bytes} bytes), its limit; retry later",
                retry_after=config.heartbeat)
        if leader.turn_start is not None and self.clock.seconds() - leader.turn_start > config.turn_budget:
            # This reactor turn has placed commands for its whole budget: a
            # longer turn would delay heartbeats (and so cost the leadership).
            return errors.Busy("the leader has placed as many commands as it may in one turn; retry later",
                               retry_after=config.heartbeat)
        return None

    def check_admission(self, size: int) -> None:
        """:raises Busy: when :meth:`refusal` says so (and counts the refusal)."""
        busy = self.refusal(size)
        if busy is not None:
            self.busy_refusals += 1
            raise busy

    def place(self, command: bytes, request_id: Optional[m.RequestId]) -> Tuple[int, int]:
        """
        Append a command to the leader's log, the one place where every
        command enters it (:meth:`propose` here, a follower's ForwardAppend;
        the member's pending appends call it, or :meth:`place_many`, directly
        on the leader, without a Deferred).

        :returns: ``(term, index)``.
        :raises NotLeader: off lead.
        :raises CommandTooLarge: when ``command`` is over ``config.max_command_bytes``.
        :raises Busy: beyond the uncommitted bounds (nothing stored).
        """
        placed, refused = self.place_many(((command, request_id),))
        if refused is not None:
            raise refused
        return placed[0]

    def place_many(
        self, commands: Iterable[Tuple[bytes, Optional[m.RequestId]]],
    ) -> Tuple[List[Tuple[int, int]], Optional[errors.RaftError]]:
        """
        :meth:`place` each command in turn, in one write to the log, until
        one is refused; the rest are not looked at.

        :returns: ``(placed, refused)``: the ``(term, index)`` of each command
            placed, in order, and the error that refused the next one
            (``NotLeader``, ``CommandTooLarge`` or ``Busy``), or ``None``.
        """
        leader = self._role_of_term(Leader, self.term)
        if leader is None:
            return [], errors.NotLeader(self.leader)
        if leader.transfer is not None:
            # Handing over: commands wait for the next leader (dissertation 3.10).
            return [], errors.NotLeader("", f"leadership is being handed to {leader.transfer.target}")
        term, index = self.term, self.storage.last_index
        entries: List[m.Entry] = []
        refused: Optional[errors.RaftError] = None
        for command, request_id in commands:
            try:
                self._check_command(command)
                self.check_admission(len(command))
            except errors.RaftError as error:
                refused = error
                break
            index += 1
            entries.append(m.Entry(term, index, m.EntryKind.COMMAND, command, request_id))
            leader.uncommitted.append((index, len(command)))
            leader.uncommitted_bytes += len(command)
            if leader.turn_start is None:
                leader.turn_start = self.clock.seconds()
        if entries:
            self._append_own(leader, entries)
        return [(term, entry.index) for entry in entries], refused

    def _append_own(self, leader: Leader, entries: Sequence[m.Entry]) -> None:
        written = self.storage.append(entries)
        if leader.own_awaited:
            # Writes become durable in order: waiting for the latest one
            # once the awaited one is durable covers those in between, so
            # a group commit of many appends costs one or two commit checks
            # instead of one per append.
            leader.own_latest = (written, entries[-1].index)
        else:
            leader.own_awaited = True
            written.addCallback(self._on_own_durable, leader, entries[-1].index)
        self._log_appended(entries)
        self._schedule_broadcast(leader)

    def _on_own_durable(self, _: object, leader: Leader, index: int) -> None:
        leader.own_awaited = False
        if self.state is not leader:
            return
        if index > leader.own_durable:
            leader.own_durable = index
        latest, leader.own_latest = leader.own_latest, None
        if latest is not None:
            leader.own_awaited = True
            latest[0].addCallback(self._on_own_durable, leader, latest[1])
        self._maybe_commit(leader)

    def _maybe_commit(self, leader: Leader) -> None:
        matches = {peer: p.match_index for peer, p in leader.progress.items()}
        matches[self.id] = leader.own_durable
        index = committable(matches, leader.term, self.storage, self.configuration)
        if index > self.commit_index:
            leader.release_committed(index)
            self._advance_commit(index)
            self._schedule_broadcast(leader, commit=True)
            self._check_reads(leader)
            self._reconfigure_after_commit(leader)

    # -- leader: sending ----------------------------------------------------------------

    def _schedule_broadcast(self, leader: Leader, commit: bool = False) -> None:
        """
        Send what followers lack at the end of this reactor turn, so that
        everything proposed in one turn travels in one batch.  With
        ``commit``, followers that have nothing to receive still get an empty
        request carrying the new commit index.
        """
        leader.commit_news = leader.commit_news or commit
        if leader.broadcast_call is None or not leader.broadcast_call.active():
            leader.broadcast_call = self.clock.callLater(0, self._broadcast, leader)

    def _broadcast(self, leader: Leader) -> None:
        leader.broadcast_call = None
        leader.turn_start = None
        commit, leader.commit_news = leader.commit_news, False
        if self.state is not leader:
            return
        for peer in list(leader.progress):
            if (not self._replicate(leader, peer) and commit
                    and peer in leader.progress and leader.progress[peer].sent_commit < self.commit_index):
                # Nothing to send, and nothing sent yet carried this commit
                # index (a request sent since it advanced did: no need).
                self._send_append(leader, peer, heartbeat=True)

    def _on_heartbeat(self, leader: Leader) -> None:
        if self.state is not leader:
            return
        now = self.clock.seconds()
        # Check quorum: a leader cut off from a majority steps down, so that
        # clients are redirected instead of waiting on it.
        recent = {peer for peer, p in leader.progress.items()
                  if now - p.last_reply <= self.config.election_base * 2}
        recent.add(self.id)
        if not self.configuration.has_majority(recent):
            self.log.info("{member} lost contact with a quorum; stepping down", member=self.id)
            self._become_follower(self.term, "")
            return
        leader.round += 1
        for peer in list(leader.progress):
            if not self._replicate(leader, peer):
                self._send_append(leader, peer, heartbeat=True)

    def _replicate(self, leader: Leader, peer: str) -> bool:
        """Send what ``peer`` lacks, within the in-flight limit. :returns: whether anything was sent."""
        progress = leader.progress.get(peer)
        if progress is None:
            return False
        if progress.snapshot is not None:
            if progress.snapshot_request is None:
                self._send_snapshot_chunk(leader, progress)
                return True
            return False
        sent = False
        limit = 1 if progress.probing else self.config.max_inflight
        while progress.inflight < limit and progress.next_index <= self.storage.last_index:
            if not self._send_append(leader, peer):
                break
            sent = True
            if progress.snapshot is not None or progress.probing:
                break
        return sent

    def _send_append(self, leader: Leader, peer: str, heartbeat: bool = False) -> bool:
        """Send one AppendEntries to ``peer``. :returns: whether a request went out."""
        progress = leader.progress[peer]
        storage = self.storage
        prev_index = progress.next_index - 1
        prev_term = storage.term_at(prev_index)
        if prev_term is None or progress.next_index < storage.first_index:
            if heartbeat:
                return False
            self._start_snapshot(leader, progress)
            return True
        entries: Tuple[m.Entry, ...] = ()
        if not heartbeat and progress.next_index <= storage.last_index:
            high = min(storage.last_index + 1, progress.next_index + m.MAX_ENTRIES)
            entries = tuple(storage.entries(progress.next_index, high, self.config.max_batch_bytes))
        if not entries and not heartbeat:
            return False
        request = m.AppendEntries(leader.term, self.id, prev_index, prev_term, entries, self.commit_index)
        progress.sent_commit = self.commit_index
        if entries:
            progress.inflight += 1
            if not progress.probing:
                progress.next_index = entries[-1].index + 1
        leader.sent_rounds[id(request)] = (request, leader.round)
        self._send(peer, request)
        return True

    # -- leader: replies -------------------------------------------------------------------

    def _progress_for_reply(
        self, peer: str, request: Union[m.AppendEntries, m.InstallSnapshot],
        reply: Optional[Union[m.AppendEntriesReply, m.InstallSnapshotReply]] = None,
    ) -> Tuple[Optional[Leader], Optional[Progress]]:
        """
        Find what a reply (or failure) to ``request`` is about; a ``reply`` of
        a later term makes us follow it, and one in time counts as contact
        (check quorum).

        :returns: the current leader state and ``peer``'s progress, or
            ``(None, None)`` for a stale request or after stepping down.
        """
        if reply is not None and self._adopt_newer_term(reply):
            return None, None
        leader = self._role_of_term(Leader, request.term)
        if leader is None or peer not in leader.progress:
            return None, None
        progress = leader.progress[peer]
        if reply is not None:
            progress.last_reply = self.clock.seconds()
        return leader, progress

    def _on_append_failure(self, peer: str, request: m.AppendEntries, failure: object) -> None:
        leader, progress = self._progress_for_reply(peer, request)
        if leader is None:
            return
        assert progress is not None
        leader.sent_rounds.pop(id(request), None)
        if not request.entries:
            return
        progress.inflight = max(0, progress.inflight - 1)
        # We no longer know what arrived: fall back to probing from the match point.
        progress.probing = True
        progress.next_index = progress.match_index + 1

    def _on_append_reply(self, peer: str, request: m.AppendEntries, reply: m.AppendEntriesReply) -> None:
        leader, progress = self._progress_for_reply(peer, request, reply)
        if leader is None:
            return
        assert progress is not None
        sent = leader.sent_rounds.pop(id(request), None)
        if sent is not None and sent[0] is request:
            progress.acked_round = max(progress.acked_round, sent[1])
        if request.entries:
            progress.inflight = max(0, progress.inflight - 1)
        if reply.success:
            matched = reply.match_index > progress.match_index
            if matched:
                progress.match_index = reply.match_index
                self._maybe_commit(leader)
                if self.state is not leader:
                    return
            if progress.probing and request.entries:
                progress.probing = False
            progress.next_index = max(progress.next_index, progress.match_index + 1)
            if matched:
                # A transfer waiting for this log, or a learner that caught up.
                self._send_timeout_now_if_ready(leader)
                self._reconfigure_after_commit(leader)
                if self.state is not leader:
                    return
        elif request.prev_index >= progress.match_index:
            if reply.conflict_index and reply.conflict_index <= progress.match_index:
                # The follower no longer holds entries it acknowledged: its
                # disk was lost or wiped.  Stop counting them, or we would
                # never send what it now lacks.
                self.log.warn("{member}: {peer} lost acknowledged entries after {index}",
                              member=self.id, peer=peer, index=reply.conflict_index - 1)
                progress.match_index = reply.conflict_index - 1
            progress.next_index = self._next_after_conflict(reply, request, progress)
            progress.probing = True
        self._check_reads(leader)
        self._replicate(leader, peer)

    def _next_after_conflict(self, reply: m.AppendEntriesReply, request: m.AppendEntries,
                             progress: Progress) -> int:
        if reply.conflict_term:
            # Skip past our last entry of the follower's conflicting term, if any.
            index = min(request.prev_index, self.storage.last_index)
            while index >= self.storage.first_index and (self.storage.term_at(index) or 0) > reply.conflict_term:
                index -= 1
            if self.storage.term_at(index) == reply.conflict_term:
                candidate = index + 1
            else:
                candidate = reply.conflict_index
        else:
            candidate = reply.conflict_index or request.prev_index
        candidate = min(candidate, request.prev_index)
        return max(candidate, progress.match_index + 1)

    # -- follower ----------------------------------------------------------------------------

    def _accept_leader(self, term: int, leader: str) -> None:
        """A valid leader of ``term`` spoke: follow it (and adopt its term)."""
        state = self.state
        if term > self.term or not isinstance(state, Follower) or self.leader != leader:
            if isinstance(state, Leader) and term == self.term:
                self._fail(f"two leaders in term {term}: {self.id} and {leader}")
            self._become_follower(term, leader)
        else:
            state.leader_contact = self.clock.seconds()
            self._reset_election_timer()

    def _validate_append(self, req: m.AppendEntries) -> None:
        self._check_sender(req.leader, "leader")
        self._validate_configuration_entries(req.entries)
        expected = req.prev_index + 1
        previous_term = req.prev_term
        for entry in req.entries:
            if entry.index != expected:
                raise errors.InvalidRequest(
                    f"entry index {entry.index} does not follow {expected - 1}")
            if entry.term < previous_term or entry.term > req.term:
                raise errors.InvalidRequest(
                    f"entry {entry.index} has term {entry.term}, outside {previous_term}..{req.term}")
            previous_term = entry.term
            expected += 1
        if req.prev_index == 0 and req.prev_term != 0:
            raise errors.InvalidRequest("prev_term must be 0 when prev_index is 0")

    def _handle_append_entries(
            self, req: m.AppendEntries) -> Union[m.AppendEntriesReply, defer.Deferred[m.AppendEntriesReply]]:
        self._validate_append(req)
        if req.term < self.term:
            return m.AppendEntriesReply(self.term, False)
        self._accept_leader(req.term, req.leader)
        storage = self.storage
        prev_index, entries = req.prev_index, req.entries
        snapshot_index = storage.first_index - 1
        if prev_index < snapshot_index:
            # Entries up to our snapshot are committed and therefore match.
            skip = snapshot_index - prev_index
            if skip > len(entries):
                return self._reply_when_durable(
                    m.AppendEntriesReply(self.term, True, match_index=prev_index + len(entries)))
            prev_index, entries = snapshot_index, entries[skip:]
        elif prev_index > storage.last_index:
            return self._reply_when_durable(
                m.AppendEntriesReply(self.term, False, conflict_index=storage.last_index + 1))
        else:
            local = storage.term_at(prev_index)
            if local != req.prev_term:
                assert local is not None, "storage knows the term of every index from its snapshot's to its last"
                # Hint the first index of the conflicting term so the leader
                # can skip it in one round trip.
                first = prev_index
                while first - 1 > snapshot_index and storage.term_at(first - 1) == local:
                    first -= 1
                return self._reply_when_durable(m.AppendEntriesReply(
                    self.term, False, conflict_index=first, conflict_term=local))
        # prev matches; find the first entry we do not already hold.
        new = None
        for position, entry in enumerate(entries):
            existing = storage.term_at(entry.index)
            if existing != entry.term:
                if existing is not None and entry.index <= self.commit_index:
                    self._fail(f"leader {req.leader} would overwrite committed entry {entry.index}")
                new = entries[position:]
                break
        if new:
            storage.append(new)
            self._log_appended(new)
        match = req.prev_index + len(req.entries)
        if req.leader_commit > self.commit_index:
            self._advance_commit(min(req.leader_commit, match))
        return self._reply_when_durable(m.AppendEntriesReply(self.term, True, match_index=match))
