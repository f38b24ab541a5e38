"""
The Raft protocol state machine of one member.

:class:`RaftCore` implements the Raft paper (Ongaro and Ousterhout, "In Search
of an Understandable Consensus Algorithm", 2014): leader election (section
5.2), log replication (5.3), the safety rules (5.4), snapshots (7) and the
client rules of the dissertation (6.3 deduplication, 6.4 ReadIndex).

It owns no socket, file, clock or random generator: time comes from an
injected ``IReactorTime``, randomness from an injected ``random.Random``,
persistence goes through an :class:`~txraft.interfaces.IStorage` and messages
through an :class:`~txraft.interfaces.ITransport`.  Given the same inputs it
takes the same steps, which is what lets :mod:`txraft.testing` replay a
failing schedule from its seed.

The durability rule: no reply that depends on the term, the vote or the log
leaves before storage reports those writes durable, and a leader counts itself
towards a commit quorum only for entries it has made durable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft import errors
from txraft import messages as m
from txraft.core.progress import Progress
from txraft.core.quorum import majority, quorum_index
from txraft.core.sessions import SessionTable
from txraft.core.snapshot_header import read_header, write_header
from txraft.interfaces import IRPCHandler

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"
STOPPED = "stopped"

#: Marks the outcome of an entry the session table recognised as a duplicate.
DUPLICATE = object()


@dataclass(frozen=True)
class Status:
    """A member's view of the cluster at one moment."""

    id: str
    role: str
    leader: str
    term: int
    commit_index: int
    applied_index: int
    last_index: int
    members: Tuple[str, ...]


def _check_non_negative(message):
    """Terms, indexes and offsets are never negative, whatever transport brought them."""
    for item in dataclasses.fields(message):
        value = getattr(message, item.name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise errors.InvalidRequest(
                f"{type(message).__name__}.{item.name} must not be negative, got {value}")


@implementer(IRPCHandler)
class RaftCore:
    """
    One Raft member's protocol state.

    :param str member_id: this member's id.
    :param members: ids of every member, this one included.
    :param storage: an :class:`~txraft.interfaces.IStorage`, already open.
    :param transport: an :class:`~txraft.interfaces.ITransport`.
    :param client: the :class:`~txraft.interfaces.IRaftClient`.
    :param clock: an ``IReactorTime``.
    :param rng: a ``random.Random`` for election timeouts.
    :param config: a :class:`~txraft.config.RaftConfig` (timing and sizes).
    """

    log = Logger()

    def __init__(self, member_id, members, storage, transport, client, clock, rng, config):
        self.id = member_id
        self.members = tuple(sorted(set(members) | {member_id}))
        self.peers = tuple(p for p in self.members if p != member_id)
        self.storage = storage
        self.transport = transport
        self.client = client
        self.clock = clock
        self.rng = rng
        self.config = config
        self.quorum = majority(len(self.members))

        self.role = FOLLOWER
        self.leader = ""
        # Invariant: applied_index <= commit_index <= storage.last_index
        # (a follower learns commit only up to entries it has matched).
        self.commit_index = 0
        self.applied_index = 0
        self.sessions = SessionTable()

        # Candidate state.
        self._votes = set()
        self._pre_votes = set()
        self._pre_vote_term = None  # term a pre-vote round is asking about
        # Leader state.
        self._progress = {}
        self._own_durable = 0  # highest own entry known durable in this term
        self._heartbeat = None
        self._round = 0  # heartbeat round, for ReadIndex
        self._reads = []  # [(round, Deferred)] waiting for a quorum to confirm the round
        self._read_call = None
        self._broadcast_call = None
        self._commit_news = False  # the next broadcast must carry a new commit index

        self._election_call = None
        self._leader_contact = None  # clock time a valid leader was last heard from

        self._snapshotting = False
        self._snapshot_index = 0  # index of the latest snapshot in storage
        self._incoming = None  # [writer, next_offset] of a snapshot being received
        # Randomized so that members do not all snapshot at once (seed rule).
        threshold = config.snapshot_threshold
        self._snapshot_threshold = threshold + rng.randint(0, threshold >> 3)

        #: Called as f(entry, outcome) after each command entry is applied;
        #: outcome is the apply() result, an ApplyError, or DUPLICATE.
        self.on_apply = []
        #: Called as f(leader) when the known leader changes.
        self.on_leader_change = []
        #: Called as f(meta) after the application is restored from a snapshot.
        self.on_restore = []
        #: Called as f(meta) once a snapshot of this member's own state is durable.
        self.on_snapshot = []
        #: Called as f(applied_index) after each batch of applies.
        self.on_applied = []

    # -- lifecycle -------------------------------------------------------

    @property
    def term(self):
        return self.storage.hard_state.term

    @property
    def voted_for(self):
        return self.storage.hard_state.voted_for

    @property
    def snapshot_index(self):
        """Index of the latest snapshot in storage (0: none)."""
        return self._snapshot_index

    def start(self):
        """Restore the application from the latest snapshot and start the election timer."""
        source = self.storage.open_snapshot()
        if source is not None:
            try:
                self._restore_from(source)
            finally:
                source.close()
        self._become_follower(self.term, "")

    def stop(self):
        """Stop every timer; the member answers nothing afterwards."""
        if self.role == STOPPED:
            return
        self._set_role(STOPPED)
        self._cancel_election_timer()
        self._stop_leading()
        if self._incoming is not None:
            self._incoming[0].abort()
            self._incoming = None
        for call in (self._broadcast_call, self._read_call):
            if call is not None and call.active():
                call.cancel()
        self._broadcast_call = self._read_call = None
        self._fail_reads(errors.Stopped(f"member {self.id} stopped"))

    def status(self):
        return Status(
            id=self.id, role=self.role, leader=self.leader, term=self.term,
            commit_index=self.commit_index, applied_index=self.applied_index,
            last_index=self.storage.last_index, members=self.members,
        )

    def _fail(self, reason):
        """A safety invariant broke: stop loudly rather than keep voting."""
        self.log.critical("{member} stopping: {reason}", member=self.id, reason=reason)
        self.stop()
        raise errors.InvariantViolation(reason)

    # -- roles -----------------------------------------------------------

    def _set_role(self, role):
        self.role = role

    def _set_leader(self, leader):
        if leader == self.leader:
            return
        self.leader = leader
        try:
            self.client.leader_changed(self.id, leader)
        except Exception:
            self.log.failure("leader_changed() raised")
        for hook in list(self.on_leader_change):
            hook(leader)

    def _become_follower(self, term, leader):
        """Step down (or stay) as follower of ``term``; persists the term if it is new."""
        if term > self.term:
            self.storage.save_hard_state(m.HardState(term, ""))
        was_leader = self.role == LEADER
        self._set_role(FOLLOWER)
        self._stop_leading()
        self._votes = set()
        self._set_leader(leader)
        if leader:
            self._leader_contact = self.clock.seconds()
            self._reset_election_timer()
        elif self._election_call is None or not self._election_call.active():
            self._reset_election_timer()
        # Otherwise keep the running timer: only a leader's message or a
        # granted vote postpones an election (Figure 2).  Resetting it on
        # every higher term would let a candidate whose log is too stale to
        # win keep everyone else from standing, forever.
        if was_leader:
            self._fail_reads(errors.NotLeader(leader))

    def _become_candidate(self, disrupt):
        term = self.term + 1
        self.storage.save_hard_state(m.HardState(term, self.id))
        self._set_role(CANDIDATE)
        self._stop_leading()
        self._set_leader("")
        self._votes = {self.id}
        self.log.debug("{member} campaigns in term {term}", member=self.id, term=term)
        self._reset_election_timer()
        request = m.RequestVote(term, self.id, self.storage.last_index,
                                self.storage.term_at(self.storage.last_index), disrupt)
        # The vote for ourselves must be durable before we ask for others'.
        self.storage.durable().addCallback(lambda _: self._ask_for_votes(term, request))

    def _ask_for_votes(self, term, request):
        if self.role != CANDIDATE or self.term != term:
            return
        if len(self._votes) >= self.quorum:
            self._become_leader()
            return
        for peer in self.peers:
            self._call(peer, request).addCallbacks(
                self._on_vote_reply, self._on_rpc_error, callbackArgs=(term, peer), errbackArgs=(peer,))

    def _on_vote_reply(self, reply, term, peer):
        if self.role == STOPPED:
            return
        if reply.term > self.term:
            self._become_follower(reply.term, "")
            return
        if self.role != CANDIDATE or self.term != term or not reply.granted:
            return
        self._votes.add(peer)
        if len(self._votes) >= self.quorum:
            self._become_leader()

    def _become_leader(self):
        self._cancel_election_timer()
        self._set_role(LEADER)
        self._set_leader(self.id)
        now = self.clock.seconds()
        last = self.storage.last_index
        self._progress = {p: Progress(p, last + 1, now) for p in self.peers}
        self._own_durable = 0
        self.log.info("{member} leads term {term}", member=self.id, term=self.term)
        # A no-op of our own term lets us commit entries of earlier terms
        # (Raft paper section 5.4.2 and Figure 8).
        self._append_own([m.Entry(self.term, last + 1, m.EntryKind.NOOP)])
        self._heartbeat = LoopingCall(self._on_heartbeat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(self.config.heartbeat, now=True)

    def _stop_leading(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        for progress in self._progress.values():
            progress.close_snapshot()
        self._progress = {}

    # -- election timer ----------------------------------------------------

    def _reset_election_timer(self):
        self._cancel_election_timer()
        delay = self.config.election_base + self.rng.uniform(0, self.config.heartbeat)
        self._election_call = self.clock.callLater(delay, self._on_election_timeout)

    def _cancel_election_timer(self):
        if self._election_call is not None and self._election_call.active():
            self._election_call.cancel()
        self._election_call = None

    def _on_election_timeout(self):
        self._election_call = None
        if self.role in (FOLLOWER, CANDIDATE):
            self._start_pre_vote()

    def _start_pre_vote(self):
        """
        Ask whether a majority would vote for us before raising the term
        (Raft dissertation section 9.6).  A member that cannot win (cut off,
        or with a stale log) never raises its term, so when it returns it
        cannot force a healthy leader to step down.
        """
        self._set_leader("")
        self._reset_election_timer()
        term = self.term + 1
        self._pre_votes = {self.id}
        self._pre_vote_term = term
        if len(self._pre_votes) >= self.quorum:
            self._become_candidate(disrupt=False)
            return
        request = m.RequestVote(term, self.id, self.storage.last_index,
                                self.storage.term_at(self.storage.last_index), pre_vote=True)
        for peer in self.peers:
            self._call(peer, request).addCallbacks(
                self._on_pre_vote_reply, self._on_rpc_error, callbackArgs=(term, peer), errbackArgs=(peer,))

    def _on_pre_vote_reply(self, reply, term, peer):
        if self.role not in (FOLLOWER, CANDIDATE) or self._pre_vote_term != term:
            return
        if reply.granted:
            self._pre_votes.add(peer)
            if len(self._pre_votes) >= self.quorum:
                self._pre_vote_term = None
                self._become_candidate(disrupt=False)
        elif reply.term > self.term:
            # A newer term exists; following it cannot hurt anyone.
            self._pre_vote_term = None
            self._become_follower(reply.term, "")

    def start_election(self):
        """Stand for election now, even if a leader is alive (the seed's StartElection)."""
        if self.role == STOPPED:
            raise errors.Stopped(f"member {self.id} is stopped")
        self._become_candidate(disrupt=True)

    # -- sending -------------------------------------------------------------

    def _call(self, peer, request):
        d = self.transport.send(peer, request)
        d.addTimeout(self.config.rpc_timeout, self.clock)
        return d

    def _on_rpc_error(self, failure, peer):
        self.log.debug("{member}: RPC to {peer} failed: {error}", member=self.id, peer=peer,
                       error=failure.getErrorMessage())

    # -- incoming RPCs ---------------------------------------------------------

    def receive(self, message):
        """Handle a request from another member; see :class:`~txraft.interfaces.IRPCHandler`."""
        if self.role == STOPPED:
            return defer.fail(errors.Stopped(f"member {self.id} is stopped"))
        handler = self._handlers.get(type(message))
        if handler is None:
            return defer.fail(errors.InvalidRequest(f"unexpected message {type(message).__name__}"))
        try:
            _check_non_negative(message)
            return defer.maybeDeferred(handler, self, message)
        except Exception:
            return defer.fail(Failure())

    def _reply_when_durable(self, reply):
        return self.storage.durable().addCallback(lambda _: reply)

    def _check_sender(self, sender, what):
        if sender not in self.members or sender == self.id:
            raise errors.InvalidRequest(f"{what} {sender!r} is not another member of this cluster")

    def _handle_request_vote(self, req):
        self._check_sender(req.candidate, "candidate")
        if req.term < self.term:
            return m.RequestVoteReply(self.term, False)
        if req.pre_vote:
            # Answer as we would vote, but change nothing.
            last = self.storage.last_index
            up_to_date = (req.last_log_term, req.last_log_index) >= (self.storage.term_at(last), last)
            free = req.term > self.term or self.voted_for in ("", req.candidate)
            granted = up_to_date and free and not self._heard_from_leader_recently()
            return m.RequestVoteReply(self.term, granted)
        if req.term > self.term and not req.disrupt and self._heard_from_leader_recently():
            # We heard from a live leader moments ago: a member that lost
            # contact must not depose it (Raft paper section 6, disruptive servers).
            return m.RequestVoteReply(self.term, False)
        if req.term > self.term:
            self._become_follower(req.term, "")
        last = self.storage.last_index
        last_term = self.storage.term_at(last)
        up_to_date = (req.last_log_term, req.last_log_index) >= (last_term, last)
        granted = up_to_date and self.voted_for in ("", req.candidate)
        if granted:
            if self.voted_for != req.candidate:
                self.storage.save_hard_state(m.HardState(self.term, req.candidate))
            self._reset_election_timer()
        return self._reply_when_durable(m.RequestVoteReply(self.term, granted))

    def _heard_from_leader_recently(self):
        if self.role == LEADER:
            return True
        if self.role == CANDIDATE or self._leader_contact is None:
            return False
        return self.clock.seconds() - self._leader_contact < self.config.election_base

    def _accept_leader(self, term, leader):
        """A valid leader of ``term`` spoke: follow it (and adopt its term)."""
        if term > self.term or self.role != FOLLOWER or self.leader != leader:
            if self.role == LEADER and term == self.term:
                self._fail(f"two leaders in term {term}: {self.id} and {leader}")
            self._become_follower(term, leader)
        else:
            self._leader_contact = self.clock.seconds()
            self._reset_election_timer()

    def _validate_append(self, req):
        self._check_sender(req.leader, "leader")
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

    def _handle_append_entries(self, req):
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
        match = req.prev_index + len(req.entries)
        if req.leader_commit > self.commit_index:
            self._advance_commit(min(req.leader_commit, match))
        return self._reply_when_durable(m.AppendEntriesReply(self.term, True, match_index=match))

    def _handle_install_snapshot(self, req):
        self._check_sender(req.leader, "leader")
        if req.term < self.term:
            return m.InstallSnapshotReply(self.term, 0)
        self._accept_leader(req.term, req.leader)
        meta = m.SnapshotMeta(req.last_index, req.last_term)
        if req.last_index <= self.applied_index:
            # Nothing in it we lack; tell the leader it is done.
            if self._incoming is not None and self._incoming[0].meta == meta:
                self._incoming[0].abort()
                self._incoming = None
            return m.InstallSnapshotReply(self.term, req.offset + len(req.data))
        if req.offset == 0:
            if self._incoming is not None:
                self._incoming[0].abort()
            self._incoming = [self.storage.snapshot_writer(meta), 0]
        incoming = self._incoming
        if incoming is None or incoming[0].meta != meta or incoming[1] != req.offset:
            # Out of sequence: tell the leader where to resume.
            expected = incoming[1] if incoming is not None and incoming[0].meta == meta else 0
            return m.InstallSnapshotReply(self.term, expected)
        incoming[0].fileobj.write(req.data)
        incoming[1] += len(req.data)
        if not req.done:
            return m.InstallSnapshotReply(self.term, incoming[1])
        self._incoming = None
        writer = incoming[0]
        done = writer.commit()
        source = self.storage.open_snapshot()
        try:
            self._restore_from(source)
        finally:
            source.close()
        self._apply_committed()
        reply = m.InstallSnapshotReply(self.term, incoming[1])
        return done.addCallback(lambda _: reply)

    def _restore_from(self, source):
        """Replace the application's state with ``source`` (an ISnapshotSource)."""
        meta = source.meta
        fileobj = source.open()
        try:
            self.sessions, _members = read_header(fileobj)
            self.client.restore_snapshot(meta.index, fileobj)
        finally:
            fileobj.close()
        self.applied_index = meta.index
        self._snapshot_index = max(self._snapshot_index, meta.index)
        self.commit_index = max(self.commit_index, meta.index)
        self.log.info("{member} restored snapshot at {index}", member=self.id, index=meta.index)
        for hook in list(self.on_restore):
            hook(meta)

    def _handle_forward_append(self, req):
        term, index = self.propose(req.command, req.request_id)
        return m.ForwardAppendReply(term, index)

    def _handle_get_members(self, req):
        return m.GetMembersReply(self.members)

    def _handle_get_leader(self, req):
        return m.GetLeaderReply(self.leader)

    def _handle_read_index(self, req):
        return self.read_index().addCallback(m.ReadIndexReply)

    _handlers = {
        m.RequestVote: _handle_request_vote,
        m.AppendEntries: _handle_append_entries,
        m.InstallSnapshot: _handle_install_snapshot,
        m.ForwardAppend: _handle_forward_append,
        m.GetMembers: _handle_get_members,
        m.GetLeader: _handle_get_leader,
        m.ReadIndex: _handle_read_index,
    }

    # -- leader: proposals and replication ---------------------------------

    def propose(self, command, request_id):
        """
        Append a client command to the leader's log.

        :returns: ``(term, index)`` where the command was placed.
        :raises NotLeader: when this member does not lead.
        """
        if self.role != LEADER:
            raise errors.NotLeader(self.leader)
        entry = m.Entry(self.term, self.storage.last_index + 1, m.EntryKind.COMMAND, command, request_id)
        self._append_own([entry])
        return entry.term, entry.index

    def _append_own(self, entries):
        term, last = self.term, entries[-1].index
        self.storage.append(entries).addCallback(self._on_own_durable, term, last)
        self._schedule_broadcast()

    def _on_own_durable(self, _, term, index):
        if self.role == LEADER and self.term == term and index > self._own_durable:
            self._own_durable = index
            self._maybe_commit()

    def _schedule_broadcast(self, commit=False):
        """
        Send what followers lack at the end of this reactor turn, so that
        everything proposed in one turn travels in one batch.  With
        ``commit``, followers that have nothing to receive still get an empty
        request carrying the new commit index.
        """
        self._commit_news = self._commit_news or commit
        if self._broadcast_call is None or not self._broadcast_call.active():
            self._broadcast_call = self.clock.callLater(0, self._broadcast)

    def _broadcast(self):
        self._broadcast_call = None
        commit, self._commit_news = self._commit_news, False
        if self.role != LEADER:
            return
        for peer in self.peers:
            if not self._replicate(peer) and commit:
                self._send_append(peer, heartbeat=True)

    def _on_heartbeat(self):
        if self.role != LEADER:
            return
        now = self.clock.seconds()
        # Check quorum: a leader cut off from a majority steps down, so that
        # clients are redirected instead of waiting on it.
        recent = 1 + sum(1 for p in self._progress.values()
                         if now - p.last_reply <= self.config.election_base * 2)
        if recent < self.quorum:
            self.log.info("{member} lost contact with a quorum; stepping down", member=self.id)
            self._become_follower(self.term, "")
            return
        self._round += 1
        for peer in self.peers:
            if not self._replicate(peer):
                self._send_append(peer, heartbeat=True)

    def _replicate(self, peer):
        """Send what ``peer`` lacks, within the in-flight limit. :returns: whether anything was sent."""
        progress = self._progress.get(peer)
        if progress is None:
            return False
        if progress.snapshot is not None:
            if not progress.snapshot_busy:
                self._send_snapshot_chunk(progress)
                return True
            return False
        sent = False
        limit = 1 if progress.probing else self.config.max_inflight
        while progress.inflight < limit and progress.next_index <= self.storage.last_index:
            if not self._send_append(peer):
                break
            sent = True
            if progress.snapshot is not None or progress.probing:
                break
        return sent

    def _send_append(self, peer, heartbeat=False):
        """Send one AppendEntries to ``peer``. :returns: whether a request went out."""
        progress = self._progress[peer]
        storage = self.storage
        prev_index = progress.next_index - 1
        prev_term = storage.term_at(prev_index)
        if prev_term is None or progress.next_index < storage.first_index:
            if heartbeat:
                return False
            self._start_snapshot(progress)
            return True
        entries = ()
        if not heartbeat and progress.next_index <= storage.last_index:
            entries = tuple(storage.entries(progress.next_index, storage.last_index + 1,
                                            self.config.max_batch_bytes))
        if not entries and not heartbeat:
            return False
        request = m.AppendEntries(self.term, self.id, prev_index, prev_term, entries, self.commit_index)
        if entries:
            progress.inflight += 1
            if not progress.probing:
                progress.next_index = entries[-1].index + 1
        self._call(peer, request).addCallbacks(
            self._on_append_reply, self._on_append_error,
            callbackArgs=(peer, request, self._round), errbackArgs=(peer, request))
        return True

    def _on_append_error(self, failure, peer, request):
        self._on_rpc_error(failure, peer)
        progress = self._current_progress(request.term, peer)
        if progress is None or not request.entries:
            return
        progress.inflight = max(0, progress.inflight - 1)
        # We no longer know what arrived: fall back to probing from the match point.
        progress.probing = True
        progress.next_index = progress.match_index + 1

    def _current_progress(self, term, peer):
        if self.role != LEADER or self.term != term:
            return None
        return self._progress.get(peer)

    def _reply_progress(self, reply, request, peer):
        """
        Common handling of a follower's reply: adopt a newer term it reports
        (stepping down), and find the progress the reply is about.

        :returns: the follower's :class:`Progress`, or ``None`` when the reply
            is stale (another term, no longer leader) or made us step down.
        """
        if self.role == STOPPED:
            return None
        if reply.term > self.term:
            self._become_follower(reply.term, "")
            return None
        progress = self._current_progress(request.term, peer)
        if progress is not None:
            progress.last_reply = self.clock.seconds()
        return progress

    def _on_append_reply(self, reply, peer, request, round_):
        progress = self._reply_progress(reply, request, peer)
        if progress is None:
            return
        progress.acked_round = max(progress.acked_round, round_)
        if request.entries:
            progress.inflight = max(0, progress.inflight - 1)
        if reply.success:
            if reply.match_index > progress.match_index:
                progress.match_index = reply.match_index
                self._maybe_commit()
            if progress.probing and request.entries:
                progress.probing = False
            progress.next_index = max(progress.next_index, progress.match_index + 1)
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
        self._check_reads()
        self._replicate(peer)

    def _next_after_conflict(self, reply, request, progress):
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

    def _maybe_commit(self):
        matches = [self._own_durable] + [p.match_index for p in self._progress.values()]
        candidate = quorum_index(matches)
        # Only entries of the current term are committed by counting replicas
        # (Raft paper section 5.4.2, Figure 8); earlier ones follow them.
        if candidate > self.commit_index and self.storage.term_at(candidate) == self.term:
            self._advance_commit(candidate)
            self._schedule_broadcast(commit=True)
            self._check_reads()

    # -- leader: snapshots ---------------------------------------------------

    def _start_snapshot(self, progress):
        source = self.storage.open_snapshot()
        if source is None:
            self._fail(f"log compacted below {self.storage.first_index} but no snapshot exists")
        progress.close_snapshot()
        progress.snapshot = source
        progress.snapshot_offset = 0
        self.log.info("{member} sends snapshot {index} to {peer}", member=self.id,
                      index=source.meta.index, peer=progress.peer)
        self._send_snapshot_chunk(progress)

    def _send_snapshot_chunk(self, progress):
        source = progress.snapshot
        offset = progress.snapshot_offset
        data = source.read(offset, self.config.snapshot_chunk)
        done = offset + len(data) >= source.size
        request = m.InstallSnapshot(self.term, self.id, source.meta.index, source.meta.term,
                                    offset, data, done)
        progress.snapshot_busy = True
        self._call(progress.peer, request).addCallbacks(
            self._on_snapshot_reply, self._on_snapshot_error,
            callbackArgs=(progress.peer, request, source), errbackArgs=(progress.peer, request, source))

    def _on_snapshot_error(self, failure, peer, request, source):
        self._on_rpc_error(failure, peer)
        progress = self._current_progress(request.term, peer)
        if progress is not None and progress.snapshot is source:
            # Resume at the next heartbeat; the follower says where.
            progress.snapshot_busy = False

    def _on_snapshot_reply(self, reply, peer, request, source):
        progress = self._reply_progress(reply, request, peer)
        if progress is None or progress.snapshot is not source:
            return
        progress.snapshot_busy = False
        end = request.offset + len(request.data)
        if request.done and reply.next_offset >= end:
            progress.close_snapshot()
            progress.match_index = max(progress.match_index, request.last_index)
            progress.next_index = progress.match_index + 1
            progress.probing = True
            self._maybe_commit()
            self._replicate(peer)
            return
        progress.snapshot_offset = min(reply.next_offset, source.size)
        self._send_snapshot_chunk(progress)

    # -- linearizable reads (dissertation section 6.4) -----------------------

    def read_index(self):
        """
        :returns: a Deferred firing with a commit index that includes every
            write acknowledged before the call, once this leader has confirmed
            with a quorum that it still leads.
        :raises NotLeader: (through the Deferred) when this member does not lead.
        """
        if self.role != LEADER:
            return defer.fail(errors.NotLeader(self.leader))
        d = defer.Deferred()
        if self._read_call is None:
            # Reads that arrive in one reactor turn share one heartbeat round.
            self._round += 1
            self._read_call = self.clock.callLater(0, self._confirm_leadership)
        self._reads.append((self._round, d))
        return d

    def _confirm_leadership(self):
        self._read_call = None
        if self.role != LEADER:
            return
        for peer in self.peers:
            self._send_append(peer, heartbeat=True)
        self._check_reads()

    def _check_reads(self):
        if not self._reads or self.role != LEADER:
            return
        # The leader must have committed an entry of its term first, so that
        # its commit index is at least every earlier leader's.
        if self.storage.term_at(self.commit_index) != self.term:
            return
        acked = sorted((p.acked_round for p in self._progress.values()), reverse=True)
        needed = self.quorum - 1
        confirmed = acked[needed - 1] if needed > 0 else self._round
        ready = [(r, d) for r, d in self._reads if r <= confirmed]
        self._reads = [(r, d) for r, d in self._reads if r > confirmed]
        for _, d in ready:
            d.callback(self.commit_index)

    def _fail_reads(self, error):
        reads, self._reads = self._reads, []
        for _, d in reads:
            d.errback(error)

    # -- commit and apply ----------------------------------------------------

    def _advance_commit(self, index):
        if index <= self.commit_index:
            return
        self.commit_index = index
        self._apply_committed()

    def _apply_committed(self):
        while self.applied_index < self.commit_index and self.role != STOPPED:
            low = self.applied_index + 1
            batch = self.storage.entries(low, self.commit_index + 1, 1024 * 1024)
            for entry in batch:
                self._apply(entry)
        for hook in list(self.on_applied):
            hook(self.applied_index)
        self._maybe_snapshot()

    def _apply(self, entry):
        self.applied_index = entry.index
        if entry.kind != m.EntryKind.COMMAND:
            return
        if entry.request_id is not None and not self.sessions.admit(entry.request_id, entry.index):
            outcome = DUPLICATE
        else:
            try:
                outcome = self.client.apply(entry.data, entry.index)
            except Exception as e:
                outcome = errors.ApplyError(entry.index, e)
        for hook in list(self.on_apply):
            hook(entry, outcome)

    def _maybe_snapshot(self):
        if self._snapshotting or self.role == STOPPED:
            return
        if self.applied_index - self._snapshot_index < self._snapshot_threshold:
            return
        meta = m.SnapshotMeta(self.applied_index, self.storage.term_at(self.applied_index))
        writer = self.storage.snapshot_writer(meta)
        self._snapshotting = True
        try:
            write_header(writer.fileobj, self.sessions, self.members)
            d = defer.maybeDeferred(self.client.save_snapshot, writer.fileobj)
        except Exception:
            d = defer.fail(Failure())
        d.addCallback(self._commit_snapshot, writer)
        d.addErrback(self._snapshot_failed, writer)

    def _commit_snapshot(self, _, writer):
        if self.role == STOPPED or self._snapshot_index >= writer.meta.index:
            # Stopped, or a newer snapshot came from the leader meanwhile.
            writer.abort()
            self._snapshotting = False
            return None
        d = writer.commit()
        self._snapshot_index = writer.meta.index

        def committed(_):
            self._snapshotting = False
            self.log.info("{member} snapshot at {index}", member=self.id, index=writer.meta.index)
            for hook in list(self.on_snapshot):
                hook(writer.meta)

        return d.addCallback(committed)

    def _snapshot_failed(self, failure, writer):
        self._snapshotting = False
        writer.abort()
        self.log.failure("{member}: snapshot discarded", failure, member=self.id)
