"""
``append()`` calls waiting for their command to be applied on this member.

:class:`Proposals` gives each command a request id (this member instance's
random session, a sequence number, and the lowest sequence still awaited:
Raft dissertation section 6.3), has the core place it in the leader's log
(:meth:`~txraft.core.raft.RaftCore.propose` forwards from a follower), and
resolves the caller's Deferred when the entry is applied here.  It submits the
same command again, with the same id, when the reply is lost, when the leader
changes, or when a snapshot skipped the place it was given; the session table
then applies it at most once.  Every wait has a deadline.

It sees the core only through its public methods and as an
:class:`~txraft.interfaces.IRaftObserver`.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from txraft import errors
from txraft import messages as m
from txraft.core.observers import RaftObserver
from txraft.core.raft import DUPLICATE


class _Pending:
    """One ``append()`` waiting for its command to be applied here."""

    __slots__ = ("command", "seq", "deferred", "placed", "timer", "retry")

    def __init__(self, command, seq, deferred):
        self.command = command
        self.seq = seq
        self.deferred = deferred
        self.placed = None  # (term, index) the leader reported, or None
        self.timer = None
        self.retry = None


class Proposals(RaftObserver):
    """
    The pending appends of one member.  Register it as an observer of ``core``.

    :param core: the :class:`~txraft.core.raft.RaftCore`.
    :param clock: an ``IReactorTime`` for deadlines and retries.
    :param config: a :class:`~txraft.config.RaftConfig` (``request_timeout``,
        ``heartbeat`` as the retry delay).
    :param str session: this member instance's random session id.
    """

    log = Logger()

    def __init__(self, core, clock, config, session):
        self.core = core
        self.clock = clock
        self.config = config
        self.session = session
        self._running = True
        self._next_seq = 1
        self._pending = {}  # seq -> _Pending
        self._placed = {}  # index -> seq, for pending commands the leader has placed

    def append(self, command, timeout=None):
        """
        Replicate ``command`` and wait until it is applied on this member.

        :param bytes command: the command.
        :param float timeout: seconds to wait (default ``config.request_timeout``).
        :returns: a Deferred; see :meth:`txraft.member.Raft.append`.
        """
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        d = defer.Deferred()
        pending = self._pending[seq] = _Pending(command, seq, d)
        limit = self.config.request_timeout if timeout is None else timeout
        pending.timer = self.clock.callLater(limit, self._expire, pending)
        self._submit(pending)
        return d

    def stop(self, error):
        """Fail every waiting append with ``error``; submit nothing more."""
        self._running = False
        for pending in list(self._pending.values()):
            self._finish(pending, error)

    def fail_waiting(self, error):
        """Fail every waiting append with ``error`` (this member was removed); later ones are submitted."""
        for pending in list(self._pending.values()):
            self._finish(pending, error)

    def _request_id(self, pending):
        return m.RequestId(self.session, pending.seq, min(self._pending, default=pending.seq))

    def _submit(self, pending):
        if pending.seq not in self._pending or not self._running:
            return
        self._forget_placement(pending)
        if not self.core.leader:
            return  # with no leader known, wait for leader_changed
        d = self.core.propose(pending.command, self._request_id(pending))
        d.addCallbacks(lambda placed: self._placed_at(pending, *placed),
                       lambda failure: self._retry_later(pending, failure))

    def _placed_at(self, pending, term, index):
        if pending.seq not in self._pending:
            return
        pending.placed = (term, index)
        if index <= self.core.applied_index:
            # Applied before the reply arrived; if it is ours, applied()
            # resolved it already.  If it is not ours, it was lost: resubmit.
            if self.core.term_at(index) != term:
                self._retry_later(pending, None)
            return
        self._placed[index] = pending.seq

    def _forget_placement(self, pending):
        if pending.placed is not None:
            if self._placed.get(pending.placed[1]) == pending.seq:
                del self._placed[pending.placed[1]]
            pending.placed = None

    def _retry_later(self, pending, failure):
        if pending.seq not in self._pending or pending.retry is not None:
            return
        if failure is not None:
            self.log.debug("{member}: append retry after {error}", member=self.core.id,
                           error=failure.getErrorMessage())

        def retry():
            pending.retry = None
            self._submit(pending)

        pending.retry = self.clock.callLater(self.config.heartbeat, retry)

    def _expire(self, pending):
        pending.timer = None
        if not self.core.leader:
            error = errors.NoQuorum(
                "append() timed out with no leader known to this member; "
                "the command may still be applied (at most once)")
        else:
            error = errors.Timeout("append() timed out; the command may still be applied (at most once)")
        self._finish(pending, error)

    def _finish(self, pending, outcome):
        if self._pending.pop(pending.seq, None) is None:
            return
        self._forget_placement(pending)
        for call in (pending.timer, pending.retry):
            if call is not None and call.active():
                call.cancel()
        pending.timer = pending.retry = None
        if isinstance(outcome, Exception):
            pending.deferred.errback(outcome)
        else:
            pending.deferred.callback(outcome)

    # -- IRaftObserver -------------------------------------------------------------

    def applied(self, entry, outcome):
        rid = entry.request_id
        if rid is not None and rid.session == self.session and rid.seq in self._pending:
            pending = self._pending[rid.seq]
            if outcome is DUPLICATE:
                # An earlier copy was applied; it resolved this append already
                # unless that happened before we were waiting.
                outcome = errors.ResultUnavailable(
                    f"command already applied; result at index {entry.index} is a duplicate")
            self._finish(pending, outcome)
        seq = self._placed.pop(entry.index, None)
        if seq is not None and seq in self._pending:
            # Another entry took the place the leader gave us: ours was lost
            # with a change of leader.  Submit again (deduplicated if needed).
            pending = self._pending[seq]
            pending.placed = None
            self._retry_later(pending, None)

    def leader_changed(self, leader, term):
        if not leader:
            return
        # A new leader may not hold what the old one placed, and nothing may
        # ever be written at that index again to tell us so.  Submit every
        # waiting command again: the session table applies each at most once.
        for pending in list(self._pending.values()):
            if pending.placed is not None and pending.placed[0] >= term:
                continue  # placed by this very leader
            self._forget_placement(pending)
            if pending.retry is None:
                self._retry_later(pending, None)

    def restored(self, meta):
        for pending in list(self._pending.values()):
            if self.core.was_applied(self._request_id(pending)):
                self._finish(pending, errors.ResultUnavailable(
                    "command applied; this member learnt of it from a snapshot, so its result is unknown"))
            elif pending.placed is not None and pending.placed[1] <= meta.index:
                self._forget_placement(pending)
                self._retry_later(pending, None)
