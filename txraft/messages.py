"""
Values that cross the boundaries between the Raft core, storage and transport.

All of them are frozen: once built, a message or an entry never changes, so the
core can hand the same object to storage and to several peers without copying.
Field names follow the Raft paper (Figure 2), so a reader can check the code
against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple

#: Every term, index, offset and sequence number is below this, whoever made
#: it: the codec (``txraft.codec``) refuses larger ones from the wire or a file, and the
#: core never raises its own term to it.  2**62 is more elections and entries
#: than any cluster will see, and leaves room below what msgpack and the
#: snapshot header (64-bit unsigned) can encode, so no peer can push a member
#: to a term it cannot store.
NUMBER_LIMIT = 2**62

#: The most entries one AppendEntries carries.  A leader never sends more (a
#: default batch of 1 MiB holds at most 32,768), and a member refuses more, so
#: a request's cost in memory is bounded whatever the size of its entries:
#: each entry costs a few hundred bytes of Python objects, however small.
MAX_ENTRIES = 65536


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    #: An application command, handed to :meth:`txraft.RaftClient.apply`.
    COMMAND = 0
    #: The empty entry a new leader appends in its term (Raft paper section 8);
    #: it lets the leader commit entries of earlier terms.
    NOOP = 1
    #: A membership configuration (:class:`txraft.core.membership.Configuration`,
    #: encoded in ``data``); it takes effect as soon as it is appended
    #: (Raft dissertation section 4.1).
    CONFIG = 2


class Role(str, enum.Enum):
    """
    A member's role.  The values are plain strings, so a role compares equal
    to ``"leader"`` and renders as ``leader`` in JSON and metrics labels.
    """

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    #: Stopped or crashed: the member answers nothing.
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class Status:
    """
    A member's view of the cluster at one moment.

    :ivar id: this member's id.
    :ivar role: its :class:`Role`.
    :ivar leader: the leader it knows of, or ``""``.
    :ivar term: its current term.
    :ivar commit_index: highest index it knows committed.
    :ivar applied_index: highest index it applied (``<= commit_index``).
    :ivar last_index: last index in its log.
    :ivar members: every member's id, sorted.
    """

    id: str
    role: Role
    leader: str
    term: int
    commit_index: int
    applied_index: int
    last_index: int
    members: Tuple[str, ...]


@dataclass(frozen=True)
class RequestId:
    """
    Identifies one ``append()`` so that a retried or duplicated command is
    applied at most once (Raft dissertation section 6.3, client sessions).

    :ivar session: random id of the member instance that accepted the command.
    :ivar seq: sequence number of the command within that session.
    :ivar lowest_pending: lowest ``seq`` of that session whose outcome the caller
        still waits for; every lower ``seq`` may be forgotten by the dedup table.
    """

    session: str
    seq: int
    lowest_pending: int


@dataclass(frozen=True)
class Entry:
    """
    One log entry.

    Invariant: entries of one log have consecutive indexes starting at 1, and
    their terms never decrease along the log.
    """

    term: int
    index: int
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""
    request_id: Optional[RequestId] = None

    def size(self) -> int:
        """
        Encoded size in bytes, rounded up (msgpack's headers and integers at
        their widest), used to bound batches: a batch of ``max_batch_bytes``
        by this measure encodes to no more, so it travels as one AMP value.
        """
        rid = self.request_id
        return 48 + len(self.data) + (len(rid.session) if rid is not None else 0)


@dataclass(frozen=True)
class HardState:
    """The state that must be durable before a member answers an RPC (Figure 2)."""

    term: int = 0
    voted_for: str = ""


@dataclass(frozen=True)
class SnapshotMeta:
    """The last entry a snapshot covers: every entry up to ``index`` is applied in it."""

    index: int
    term: int


# -- member RPCs ------------------------------------------------------------
#
# Every request carries the sender's term; every reply carries the receiver's
# term, so that either side learns of a newer term (Figure 2, "Rules for
# Servers").


@dataclass(frozen=True)
class RequestVote:
    """A candidate asks for a vote (section 5.2).

    ``disrupt`` is set by a forced election (``start_election()``); it lets the
    request through the receiver's check that a leader was heard from recently
    (section 6, disruptive servers).

    ``pre_vote`` asks only whether the receiver *would* vote for the sender in
    ``term`` (Raft dissertation section 9.6): nobody changes term or vote, so a
    member that was cut off cannot depose a healthy leader when it returns."""

    term: int
    candidate: str
    last_log_index: int
    last_log_term: int
    disrupt: bool = False
    pre_vote: bool = False


@dataclass(frozen=True)
class RequestVoteReply:
    term: int
    granted: bool


@dataclass(frozen=True)
class AppendEntries:
    """The leader replicates entries, or sends a heartbeat when ``entries`` is empty (section 5.3)."""

    term: int
    leader: str
    prev_index: int
    prev_term: int
    entries: Tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True)
class AppendEntriesReply:
    """
    The follower's answer.

    On success ``match_index`` is the last index known to match the leader's
    log (``prev_index + len(entries)``).  On failure ``conflict_index`` and
    ``conflict_term`` let the leader skip back a whole term at a time (section
    5.3, the optimisation described after Figure 8).
    """

    term: int
    success: bool
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0


@dataclass(frozen=True)
class InstallSnapshot:
    """One chunk of a snapshot sent by the leader (section 7)."""

    term: int
    leader: str
    last_index: int
    last_term: int
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True)
class InstallSnapshotReply:
    """``next_offset`` is the offset the receiver expects next (for resuming)."""

    term: int
    next_offset: int = 0


@dataclass(frozen=True)
class ForwardAppend:
    """A follower forwards a client command to the leader (the seed's ``Append`` RPC)."""

    command: bytes
    request_id: RequestId


@dataclass(frozen=True)
class ForwardAppendReply:
    """Where the leader put the command in its log."""

    term: int
    index: int


@dataclass(frozen=True)
class GetMembers:
    """Ask a member for the ids of all members."""


@dataclass(frozen=True)
class GetMembersReply:
    members: Tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GetLeader:
    """Ask a member which member it believes leads."""


@dataclass(frozen=True)
class GetLeaderReply:
    leader: str = ""


@dataclass(frozen=True)
class ReadIndex:
    """
    Ask the leader for a commit index that is safe for a linearizable read
    (Raft dissertation section 6.4).  The leader confirms it still leads with a
    round of heartbeats before it answers.
    """


@dataclass(frozen=True)
class ReadIndexReply:
    index: int


@dataclass(frozen=True)
class TimeoutNow:
    """
    The leader hands over leadership (Raft dissertation section 3.10): the
    receiver, whose log the leader has checked is up to date, stands for
    election at once, without a pre-vote.
    """

    term: int
    leader: str


@dataclass(frozen=True)
class TimeoutNowReply:
    term: int


@dataclass(frozen=True)
class ChangeMembers:
    """
    A member forwards a membership change to the leader: ``action`` is
    ``"add"`` (``member`` with certificate ``name``, to become a voter when
    ``voter``), ``"remove"`` or ``"promote"``.
    """

    action: str
    member: str
    name: str = ""
    voter: bool = True


@dataclass(frozen=True)
class ChangeMembersReply:
    """Where the leader put the entry that starts the change."""

    term: int
    index: int


@dataclass(frozen=True)
class TransferLeadership:
    """A member forwards a request to hand leadership over to ``to`` (``""``: the leader's choice)."""

    to: str = ""


@dataclass(frozen=True)
class TransferLeadershipReply:
    """The member leadership is being handed to."""

    to: str
