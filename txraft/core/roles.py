"""
The state each Raft role keeps, and nothing else (Raft paper Figure 2, "State").

A role object is created when the member enters the role and dropped when it
leaves: :class:`Leader` holds the progress map, the heartbeat and the read
rounds; :class:`Candidate` its votes; :class:`Follower` when it last heard a
leader.  Timers and durability callbacks hold the role object they were made
for and do nothing once ``core.state is not that_object``, so a callback from an
old term cannot touch the next role's state.  Replies are matched the same way:
a member is candidate, or leader, at most once per term, so the term of a
request names the one role object its reply belongs to.

The behaviour that differs by role is asked of the role object
(:meth:`heard_from_leader_within`, :attr:`campaigns`, :meth:`leave`) rather
than spelled as ``if role == ...`` in the core.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, Literal, Optional, Tuple

from txraft import errors
from txraft.core.progress import Progress
from txraft.core.waiters import Waiters
from txraft.messages import AppendEntries, Role

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall
    from twisted.internet.task import LoopingCall

    from txraft.core.transfer import Transfer


class PreVote:
    """
    A pre-vote round (Raft dissertation section 9.6): who said they would vote
    for us in ``term``, which we have not yet raised our term to.
    """

    __slots__ = ("term", "granted")

    def __init__(self, term: int, me: str) -> None:
        self.term = term
        self.granted = {me}


class _RoleState:
    """What every role answers; the subclasses override what differs."""

    __slots__ = ()

    #: The :class:`~txraft.messages.Role` this object stands for.
    role: Optional[Role] = None
    #: Whether an election timeout starts a (pre-)election in this role.
    campaigns: bool = False
    #: Clock time a valid leader was last heard from (followers only).
    leader_contact: Optional[float] = None

    def heard_from_leader_within(self, now: float, window: float) -> bool:
        """:returns: whether a live leader spoke within ``window`` seconds (leader stickiness)."""
        return False

    def leave(self, error: BaseException) -> None:
        """
        Release what the role holds (timers, snapshot sources, waiting reads).

        :param error: the exception waiting reads fail with.
        """


class Follower(_RoleState):
    """
    A follower.

    :ivar leader_contact: clock time a valid leader was last heard from, or
        ``None``.
    :ivar pre_vote: the :class:`PreVote` round under way, or ``None``.
    """

    __slots__ = ("leader_contact", "pre_vote")
    role = Role.FOLLOWER
    campaigns: Literal[True] = True

    def __init__(self, leader_contact: Optional[float] = None) -> None:
        self.leader_contact = leader_contact
        self.pre_vote: Optional[PreVote] = None

    def heard_from_leader_within(self, now: float, window: float) -> bool:
        return self.leader_contact is not None and now - self.leader_contact < window


class Candidate(_RoleState):
    """
    A candidate of ``term``.

    :ivar votes: members that granted their vote in ``term``, this one included.
    :ivar pre_vote: a :class:`PreVote` round begun after this candidacy timed out.
    """

    __slots__ = ("term", "votes", "pre_vote")
    role = Role.CANDIDATE
    campaigns: Literal[True] = True

    def __init__(self, term: int, me: str) -> None:
        self.term = term
        self.votes = {me}
        self.pre_vote: Optional[PreVote] = None


class Leader(_RoleState):
    """
    The leader of ``term``.

    Invariant: ``own_durable <= storage.last_index``; only entries up to
    ``own_durable`` count this member towards a commit quorum.

    :ivar progress: peer id -> :class:`~txraft.core.progress.Progress`.
    :ivar own_durable: highest own entry known durable in this term.
    :ivar own_awaited: whether a callback waits for an own append to be durable.
    :ivar own_latest: ``(Deferred, index)`` of the latest own append issued
        while one was awaited (its durability is awaited next), or ``None``.
    :ivar heartbeat: the ``LoopingCall`` sending heartbeats.
    :ivar broadcast_call: the end-of-turn broadcast scheduled, or ``None``.
    :ivar commit_news: the next broadcast must carry a new commit index.
    :ivar round: the heartbeat round (ReadIndex); grows by one per round.
    :ivar sent_rounds: ``id(request)`` -> ``(request, round)`` for each
        AppendEntries awaiting its reply; the request is kept so its id cannot
        be reused meanwhile.
    :ivar reads: :class:`~txraft.core.waiters.Waiters` for rounds a quorum has
        yet to confirm.
    :ivar read_call: the end-of-turn leadership check scheduled, or ``None``.
    :ivar uncommitted: ``(index, bytes)`` of each command placed in this term
        and not yet committed, oldest first (backpressure).
    :ivar uncommitted_bytes: the sum of their sizes.
    :ivar turn_start: clock time the first command of this reactor turn was
        placed, or ``None`` (no command placed since the last broadcast).
    :ivar transfer: the leadership transfer under way
        (:class:`~txraft.core.transfer.Transfer`), or ``None``; while there
        is one the leader accepts no new command.
    """

    __slots__ = ("term", "progress", "own_durable", "own_awaited", "own_latest", "heartbeat", "broadcast_call", "commit_news",
                 "round", "sent_rounds", "reads", "read_call", "uncommitted", "uncommitted_bytes",
                 "turn_start", "transfer")
    role = Role.LEADER
    campaigns: Literal[False]

    def __init__(self, term: int, progress: Dict[str, Progress]) -> None:
        self.term = term
        self.progress = progress
        self.own_durable = 0
        self.own_awaited = False
        self.own_latest: Optional[Tuple[Deferred[Any], int]] = None
        self.heartbeat: Optional[LoopingCall] = None
        self.broadcast_call: Optional[IDelayedCall] = None
        self.commit_news = False
        self.round = 0
        self.sent_rounds: Dict[int, Tuple[AppendEntries, int]] = {}
        self.reads = Waiters()
        self.read_call: Optional[IDelayedCall] = None
        self.uncommitted: Deque[Tuple[int, int]] = deque()
        self.uncommitted_bytes = 0
        self.turn_start: Optional[float] = None
        self.transfer: Optional[Transfer] = None

    def release_committed(self, commit_index: int) -> None:
        """Forget the uncommitted commands up to ``commit_index``."""
        uncommitted = self.uncommitted
        while uncommitted and uncommitted[0][0] <= commit_index:
            self.uncommitted_bytes -= uncommitted.popleft()[1]

    def heard_from_leader_within(self, now: float, window: float) -> bool:
        return True

    def leave(self, error: BaseException) -> None:
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
        for call in (self.broadcast_call, self.read_call):
            if call is not None and call.active():
                call.cancel()
        self.heartbeat = self.broadcast_call = self.read_call = None
        for progress in self.progress.values():
            progress.close_snapshot()
        self.sent_rounds = {}
        self.reads.fail(error)
        transfer, self.transfer = self.transfer, None
        if transfer is not None:
            # Leadership left: what the transfer wanted, unless the member stopped.
            transfer.finish(error if isinstance(error, errors.Stopped) else None)


class Stopped(_RoleState):
    """A stopped (or crashed) member: it answers nothing and starts nothing."""

    __slots__ = ()
    role = Role.STOPPED
    campaigns: Literal[False]
