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

Admission (backpressure): when this member leads and holds as much
uncommitted work as ``config`` allows, or has submitted commands for
``config.turn_budget`` seconds of the current reactor turn, a new append waits
in a bounded admission queue (``config.max_queued_appends``), in order, until
commits make room; past that bound, or when its deadline passes while still
queued, it fails with :class:`~txraft.errors.Busy` (nothing was stored).  A
command a leader refuses as ``Busy`` on its first forwarded submission fails
at once the same way; one refused on a later submission may already be in
the log, so it waits and is submitted again.

It sees the core only through its public methods and as an
:class:`~txraft.interfaces.IRaftObserver`.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txraft import errors
from txraft import messages as m
from txraft.core.observers import RaftObserver
from txraft.core.raft import DUPLICATE

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txraft.config import RaftConfig
    from txraft.core.raft import RaftCore


_QUEUE_FULL = "the admission queue of this member is full (config.max_queued_appends); retry later"


class _Queued:
    """Marks a pending append whose retry waits in the resubmission queue."""

    @staticmethod
    def active():
        return False


_QUEUED = _Queued()


class _Pending:
    """One ``append()`` waiting for its command to be applied here."""

    __slots__ = ("command", "seq", "deferred", "placed", "deadline", "retry", "submissions", "queued", "refused")

    def __init__(self, command, seq, deferred):
        self.command = command
        self.seq = seq
        self.deferred = deferred
        self.placed = None  # (term, index) the leader reported, or None
        self.deadline = None
        self.retry = None
        self.submissions = 0
        self.queued = False  # waiting in the admission queue, never submitted
        self.refused = False  # the leader refused it with Busy (nothing stored); waiting to try again


#: The most queued appends placed in one write to the leader's log.
_ADMIT_BATCH = 512


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

    def __init__(self, core: RaftCore, clock: IReactorTime, config: RaftConfig, session: str) -> None:
        self.core = core
        self.clock = clock
        self.config = config
        self.session = session
        self._running = True
        self._next_seq = 1
        self._pending: Dict[int, _Pending] = {}  # seq -> _Pending
        # Sequence numbers in the order handed out; finished ones are trimmed
        # from the front when the lowest pending one is asked for.  (A dict
        # emptied from the front makes next(iter(d)) walk every removed slot:
        # 4 us a call with 4,096 appends in flight.)
        self._order: Deque[int] = deque()
        self._placed: Dict[int, int] = {}  # index -> seq, for pending commands the leader has placed
        # (deadline, seq) of pending appends, a min-heap; entries of appends
        # already finished are dropped lazily.  One timer serves them all, so
        # an append costs no DelayedCall of its own.
        self._deadlines: List[Tuple[float, int]] = []
        self._expiry_call = None
        # Work per reactor turn is bounded (config.turn_budget): appends
        # beyond it fail with Busy, and retries wait in a queue for later turns.
        self._turn_start = None
        self._turn_call = None
        self._resubmit: Deque[_Pending] = deque()
        self._drain_call = None
        self._waiting: Deque[_Pending] = deque()  # the admission queue: appends not submitted yet
        self._admit_call = None

    def append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """
        Replicate ``command`` and wait until it is applied on this member.

        :param bytes command: the command.
        :param float timeout: seconds to wait (default ``config.request_timeout``).
        :returns: a Deferred; see :meth:`txraft.member.Raft.append`.
        """
        waits = bool(self._waiting) or self._over_budget() or self.core.refusal(len(command)) is not None
        if waits and len(self._waiting) >= self.config.max_queued_appends:
            self.core.busy_refusals += 1
            return defer.fail(errors.Busy(_QUEUE_FULL, retry_after=self.config.heartbeat))
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        d: defer.Deferred[Any] = defer.Deferred()
        pending = self._pending[seq] = _Pending(command, seq, d)
        self._order.append(seq)
        limit = self.config.request_timeout if timeout is None else timeout
        pending.deadline = self.clock.seconds() + limit
        heapq.heappush(self._deadlines, (pending.deadline, seq))
        self._arm_expiry()
        if waits:
            # The leader (this member) is full, or this turn has done its
            # share: wait in the admission queue, in order, until commits
            # make room (or the deadline passes).
            pending.queued = True
            self._waiting.append(pending)
            self._admit_soon()
        else:
            self._submit(pending)
        return d

    @property
    def waiting(self) -> int:
        """Appends waiting in the admission queue (not yet submitted)."""
        return len(self._waiting)

    def _admit_soon(self):
        if self._admit_call is None and self._running:
            self._admit_call = self.clock.callLater(0, self._admit)

    def _admit(self):
        """Submit queued appends while the leader admits them and this turn has budget left."""
        self._admit_call = None
        waiting = self._waiting
        core = self.core
        while waiting and self._running:
            pending = waiting[0]
            if pending.seq not in self._pending:
                waiting.popleft()  # expired meanwhile
                continue
            if self._over_budget():
                self._admit_soon()  # next turn
                return
            if core.refusal(len(pending.command)) is not None:
                return  # applied_through() calls again once commits make room
            if core.leader != core.id:
                waiting.popleft()
                pending.queued = False
                self._submit(pending)
                continue
            # This member leads: place a run of queued commands in one write.
            run = []
            while waiting and len(run) < _ADMIT_BATCH:
                pending = waiting.popleft()
                if pending.seq in self._pending:
                    pending.queued = False
                    self._forget_placement(pending)
                    run.append(pending)
            refused = self._place_run(run)
            if refused is not None and not isinstance(refused, errors.InvalidRequest):
                # Busy: applied_through() calls again once commits make
                # room; NotLeader: leader_changed() does.
                return

    def _over_budget(self):
        """:returns: whether this reactor turn has spent its budget submitting commands."""
        now = self.clock.seconds()
        if self._turn_start is None:
            self._turn_start = now
            self._turn_call = self.clock.callLater(0, self._new_turn)
            return False
        return now - self._turn_start > self.config.turn_budget

    def _new_turn(self):
        self._turn_call = None
        self._turn_start = None

    def _drain(self):
        """Submit queued retries until this turn's budget is spent; the rest wait for the next turn."""
        self._drain_call = None
        queue = self._resubmit
        while queue and self._running:
            if self._over_budget():
                self._drain_call = self.clock.callLater(0, self._drain)
                return
            pending = queue.popleft()
            if pending.retry is _QUEUED:
                pending.retry = None
                self._submit(pending)

    def _arm_expiry(self):
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._pending) + 64:
            # Mostly finished appends: keep only the waiting ones.
            deadlines[:] = [(p.deadline, p.seq) for p in self._pending.values()]
            heapq.heapify(deadlines)
        if not deadlines:
            return
        call = self._expiry_call
        due = deadlines[0][0]
        if call is not None:
            if call.getTime() <= due:
                return
            call.cancel()
        self._expiry_call = self.clock.callLater(max(due - self.clock.seconds(), 0), self._expire_due)

    def _expire_due(self):
        self._expiry_call = None
        now = self.clock.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            if self._over_budget():
                # Thousands may expire at once: fail the rest in later turns.
                self._expiry_call = self.clock.callLater(0, self._expire_due)
                return
            _, seq = heapq.heappop(deadlines)
            pending = self._pending.get(seq)
            if pending is not None:
                self._expire(pending)
        if self._running:
            self._arm_expiry()

    def stop(self, error: BaseException) -> None:
        """Fail every waiting append with ``error``; submit nothing more."""
        self._running = False
        for call in (self._expiry_call, self._turn_call, self._drain_call, self._admit_call):
            if call is not None and call.active():
                call.cancel()
        self._expiry_call = self._turn_call = self._drain_call = self._admit_call = None
        self._resubmit.clear()
        self._waiting.clear()
        self._order.clear()
        self._deadlines = []
        for pending in list(self._pending.values()):
            self._finish(pending, error)

    def fail_waiting(self, error: BaseException) -> None:
        """Fail every waiting append with ``error`` (this member was removed); later ones are submitted."""
        for pending in list(self._pending.values()):
            self._finish(pending, error)

    def _request_id(self, pending):
        # The lowest sequence number still pending: the session table may
        # forget every result below it.
        order, waiting = self._order, self._pending
        while order and order[0] not in waiting:
            order.popleft()
        return m.RequestId(self.session, pending.seq, order[0] if order else pending.seq)

    def _submit(self, pending):
        if pending.seq not in self._pending or not self._running:
            return
        self._forget_placement(pending)
        if not self.core.leader:
            return  # with no leader known, wait for leader_changed
        core = self.core
        if core.leader == core.id:
            # Placed at once, here, without a Deferred: the common path
            # under load on the leader.
            self._place_run([pending])
            return
        pending.submissions += 1
        d = core.propose(pending.command, self._request_id(pending))
        d.addCallbacks(lambda placed: self._placed_at(pending, *placed),
                       lambda failure: self._refused(pending, failure))

    def _place_run(self, run):
        """
        Place the commands of ``run`` (pending appends, in order) on this
        leader, in one write to its log, until one is refused.  The one
        refused takes the answer as a submission of its own would; those
        after it go back to the head of the admission queue, in order.

        :returns: the error that refused one, or ``None``.
        """
        placed, refused = self.core.place_many([(p.command, self._request_id(p)) for p in run])
        for pending, at in zip(run, placed):
            pending.submissions += 1
            self._placed_at(pending, *at)
        if refused is not None:
            first, rest = run[len(placed)], run[len(placed) + 1:]
            for pending in reversed(rest):
                pending.queued = True
                self._waiting.appendleft(pending)
            first.submissions += 1
            self._refused(first, Failure(refused))
        return refused

    def _refused(self, pending, failure):
        if failure.check(errors.InvalidRequest):
            # The leader refused the command itself (too large): trying again cannot help.
            self._finish(pending, failure.value)
        elif failure.check(errors.Busy) and pending.submissions == 1 and self.core.leader == self.core.id:
            # This member leads and its bounds filled up since admission was
            # checked: wait at the head of the admission queue instead.
            pending.submissions = 0
            pending.queued = True
            self._waiting.appendleft(pending)
            self._admit_soon()
        elif failure.check(errors.Busy) and pending.submissions == 1 and self.config.max_queued_appends:
            # Forwarded to a busy leader, which stored nothing, and no earlier
            # copy exists: wait here and offer it again after the leader's
            # hint, as a local append waits in the leader's queue, until the
            # caller's deadline (then Busy: nothing was stored).
            pending.submissions = 0
            pending.refused = True
            self._retry_later(pending, None, failure.value.retry_after)
        elif failure.check(errors.Busy) and pending.submissions == 1:
            # max_queued_appends=0 (etcd's behaviour): the caller may retry
            # later (or elsewhere) without any risk of a duplicate.
            self._finish(pending, failure.value)
        else:
            self._retry_later(pending, failure)

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

    def _retry_later(self, pending, failure, delay=None):
        if pending.seq not in self._pending or pending.retry is not None:
            return
        if failure is not None:
            self.log.debug("{member}: append retry after {error}", member=self.core.id,
                           error=failure.getErrorMessage())

        def retry():
            pending.retry = _QUEUED
            self._resubmit.append(pending)
            if self._drain_call is None:
                self._drain_call = self.clock.callLater(0, self._drain)

        pending.retry = self.clock.callLater(self.config.heartbeat if delay is None else delay, retry)

    def _expire(self, pending):
        if pending.queued or (pending.refused and pending.submissions == 0):
            # Never left the admission queue, or every leader asked refused
            # it as busy: nothing was stored.
            self._finish(pending, errors.Busy(
                "append() waited its whole timeout for a busy leader to admit it; "
                "nothing was stored", retry_after=self.config.heartbeat))
            return
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
        if pending.retry is not None and pending.retry.active():
            pending.retry.cancel()
        pending.retry = None
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

    def applied_through(self, index):
        if self._waiting:
            self._admit_soon()  # commits made room

    def leader_changed(self, leader, term):
        if not leader:
            return
        if self._waiting:
            self._admit_soon()
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
