"""
The exceptions txraft raises, in one hierarchy.

Everything derives from :class:`RaftError`, so ``except RaftError`` catches
every failure that comes from the Raft layer itself.  The application's own
exceptions, raised from :meth:`txraft.RaftClient.apply`, reach the caller of
``append()`` wrapped in :class:`ApplyError` so that the two kinds of failure
(the cluster could not run the command; the command ran and failed) are never
confused, in the manner of hashicorp/raft's ``Error()``/``Response()`` split.
"""

from __future__ import annotations

from typing import Optional


class RaftError(Exception):
    """Base class of every txraft error."""


class NotLeader(RaftError):
    """
    This member is not the leader, so it cannot accept the request.

    :ivar leader: the member id of the leader this member knows of, or ``""``.
    """

    def __init__(self, leader: str = "", message: Optional[str] = None) -> None:
        self.leader = leader or ""
        if message is None:
            message = "not the leader" + (
                f"; the leader is {self.leader}" if self.leader else "; no leader is known"
            )
        super().__init__(message)


class Timeout(RaftError):
    """The request did not complete within its time limit; its outcome is unknown."""


class NoQuorum(Timeout):
    """The time limit passed without any leader answering (no quorum of members
    could elect one, or this member cannot reach it)."""


class Busy(RaftError):
    """
    The leader holds as much uncommitted work as its configuration allows
    (``RaftConfig.max_uncommitted_entries`` / ``max_uncommitted_bytes``), so
    it refused the command at once.  Nothing was stored: the command is safe
    to send again, preferably after ``retry_after`` seconds (like etcd's
    ``ErrProposalDropped``).

    :ivar retry_after: suggested seconds to wait before retrying.
    """

    def __init__(self, message: str = "the leader is busy; retry later", retry_after: float = 0.1) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Stopped(RaftError):
    """The member was stopped; stopped members cannot be restarted."""


class ApplyError(RaftError):
    """
    The command was committed, but the application's ``apply()`` raised.

    :ivar index: log index of the command.
    :ivar cause: the exception ``apply()`` raised.
    """

    def __init__(self, index: int, cause: BaseException) -> None:
        self.index = index
        self.cause = cause
        super().__init__(f"apply() of the entry at index {index} raised {cause!r}")


class ResultUnavailable(RaftError):
    """
    The command was committed and applied, but this member learnt of it from a
    snapshot, so the value ``apply()`` returned is not known here.
    """


class InvalidRequest(RaftError):
    """A member RPC carried arguments that break the protocol (negative indexes,
    entries that do not follow ``prev_index``, and the like).  Nothing was stored."""


class CommandTooLarge(InvalidRequest):
    """A command is larger than the leader's ``max_command_bytes``; it was not placed in the log."""
class MembershipError(RaftError):
    """
    A membership change or leadership transfer was refused; nothing changed.
    The message says why (the member is already present, it would remove the
    last voter, the learner has not caught up, ...).
    """


class UnknownMember(MembershipError):
    """The member named is not part of the cluster's configuration."""


class ChangeInProgress(MembershipError):
    """
    Another membership change (or a leadership transfer) is under way, or the
    leader has not yet committed an entry of its own term: retry later.
    """


class LeaderNotReady(ChangeInProgress):
    """The leader has not yet committed an entry of its own term; a change may follow in moments."""


class ConfigurationError(RaftError):
    """The configuration is invalid; the message names the setting."""


class StorageError(RaftError):
    """The storage cannot be read or written; the message names the file."""


class StorageClosed(StorageError):
    """
    The storage was used after :meth:`~txraft.interfaces.IStorage.close` (or
    opened a second time).  Every :class:`~txraft.interfaces.IStorage` raises
    this, so callers need not know which store they hold.
    """


class CorruptLog(StorageError):
    """
    A log or snapshot file is damaged somewhere other than its tail, so data that
    may be committed cannot be recovered from it.  The member refuses to run.
    """


class TransportError(RaftError):
    """A member RPC could not be delivered or its reply was lost."""


class Unauthorized(TransportError):
    """The peer's certificate does not satisfy the ACL."""


class InvariantViolation(RaftError):
    """
    A Raft safety invariant failed inside this member (for example, a leader
    tried to overwrite a committed entry).  The member stops rather than go on
    voting with corrupt state.
    """
