"""
The member-to-member RPCs as AMP commands: declarations only.

One command per RPC of the seed design (``raft.vdl``), plus ``ReadIndex`` and
``Fragment``.  Each command carries the request type of :mod:`txraft.messages`
named in ``message_type`` and answers with ``reply_type``; its arguments and
response are generated from those types' fields in :mod:`txraft.codec`
(:func:`~txraft.transport.arguments.wire_arguments`: one AMP argument per
field, named as the field), so the schema is written down once.  Fields that
can exceed AMP's 65,535-byte cap travel as
:class:`~txraft.transport.arguments.Blob` arguments, reassembled from
:class:`Fragment` commands when large.

Every command declares the same :data:`ERRORS`, so a :class:`txraft.errors`
exception raised by the receiving member reaches the caller as the same type.
They are listed most specific first, because AMP maps an exception to the first
declared class it is an instance of.
"""

from __future__ import annotations

import struct

from twisted.protocols import amp

from txraft import errors as e
from txraft import messages as m
from txraft.transport.arguments import wire_arguments

#: Exception type -> AMP error code, most specific first.  ``NotLeader`` travels
#: with the leader's id as its description.
ERRORS = {
    e.CommandTooLarge: b"COMMAND_TOO_LARGE",
    e.InvalidRequest: b"INVALID_REQUEST",
    e.UnknownMember: b"UNKNOWN_MEMBER",
    e.LeaderNotReady: b"LEADER_NOT_READY",
    e.ChangeInProgress: b"CHANGE_IN_PROGRESS",
    e.MembershipError: b"MEMBERSHIP_ERROR",
    e.NotLeader: b"NOT_LEADER",
    e.Unauthorized: b"UNAUTHORIZED",
    e.TransportError: b"TRANSPORT_ERROR",
    e.Busy: b"BUSY",
    e.Stopped: b"STOPPED",
    e.NoQuorum: b"NO_QUORUM",
    e.Timeout: b"TIMEOUT",
    e.ResultUnavailable: b"RESULT_UNAVAILABLE",
    e.CorruptLog: b"CORRUPT_LOG",
    e.StorageError: b"STORAGE_ERROR",
    e.InvariantViolation: b"INVARIANT_VIOLATION",
    e.ConfigurationError: b"CONFIGURATION_ERROR",
    e.RaftError: b"RAFT_ERROR",
}


_LENGTH = struct.Struct("!H").pack


class Box(amp.AmpBox):
    """
    An AMP box serialized as :class:`amp.AmpBox` does it (same bytes), with
    less work per key; anything unusual is left to ``AmpBox`` (which raises).
    """

    def serialize(self):
        parts = []
        for key, value in sorted(self.items()):
            prefixed = _KEYS.get(key)  # a key's length and bytes, for the keys of the member commands
            if prefixed is None:
                if type(key) is not bytes or len(key) > amp.MAX_KEY_LENGTH:
                    return amp.AmpBox.serialize(self)
                prefixed = _LENGTH(len(key)) + key
            if type(value) is not bytes or len(value) > amp.MAX_VALUE_LENGTH:
                return amp.AmpBox.serialize(self)
            parts += (prefixed, _LENGTH(len(value)), value)
        parts.append(b"\0\0")
        return b"".join(parts)


class MemberCommand(amp.Command):
    """What every member RPC shares: boxes that serialize cheaply.  (Each declares :data:`ERRORS` itself.)"""

    commandType = responseType = Box

    def __init__(self, **kw):
        # As amp.Command's, with the required names worked out once per command.
        self.structured = kw
        forgotten = [name for name in _names(type(self))[1] if name not in kw]
        if forgotten:
            raise amp.InvalidSignature(f"forgot {', '.join(forgotten)} for {self.commandName}")

    @classmethod
    def makeArguments(cls, objects, proto):
        # As amp.Command's, with the allowed names worked out once per command.
        allowed = _names(cls)[0]
        for name in objects:
            if name not in allowed:
                raise amp.InvalidSignature(f"{name} is not a valid argument")
        strings, objects = cls.commandType(), dict(objects)
        for name, argument in cls.arguments:
            argument.toBox(name, strings, objects, proto)
        return strings


# command -> (the Python names of its arguments, those of the required ones).
_NAMES: dict = {}


def _names(command):
    names = _NAMES.get(command)
    if names is None:
        names = _NAMES[command] = (frozenset(name.decode("ascii") for name, _ in command.arguments),
                                   tuple(name.decode("ascii") for name, argument in command.arguments
                                         if not argument.optional))
    return names


class Members(MemberCommand):
    """:class:`~txraft.messages.GetMembers`: the ids of all members."""

    message_type, reply_type = m.GetMembers, m.GetMembersReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class Leader(MemberCommand):
    """:class:`~txraft.messages.GetLeader`: the leader's id, ``""`` when unknown."""

    message_type, reply_type = m.GetLeader, m.GetLeaderReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class RequestVote(MemberCommand):
    """:class:`~txraft.messages.RequestVote` (Raft section 5.2)."""

    message_type, reply_type = m.RequestVote, m.RequestVoteReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class AppendToLog(MemberCommand):
    """:class:`~txraft.messages.AppendEntries` (Raft section 5.3); a heartbeat when ``entries`` is empty."""

    message_type, reply_type = m.AppendEntries, m.AppendEntriesReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class Append(MemberCommand):
    """:class:`~txraft.messages.ForwardAppend`: a follower forwards a client command to the leader."""

    message_type, reply_type = m.ForwardAppend, m.ForwardAppendReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class InstallSnapshot(MemberCommand):
    """:class:`~txraft.messages.InstallSnapshot`: one chunk of a snapshot (Raft section 7)."""

    message_type, reply_type = m.InstallSnapshot, m.InstallSnapshotReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class ReadIndex(MemberCommand):
    """:class:`~txraft.messages.ReadIndex`: a commit index safe for a linearizable read."""

    message_type, reply_type = m.ReadIndex, m.ReadIndexReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class TimeoutNow(MemberCommand):
    """:class:`~txraft.messages.TimeoutNow`: the leader hands leadership over (dissertation 3.10)."""

    message_type, reply_type = m.TimeoutNow, m.TimeoutNowReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class ChangeMembers(MemberCommand):
    """:class:`~txraft.messages.ChangeMembers`: a membership change forwarded to the leader."""

    message_type, reply_type = m.ChangeMembers, m.ChangeMembersReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class TransferLeadership(MemberCommand):
    """:class:`~txraft.messages.TransferLeadership`: a leadership transfer forwarded to the leader."""

    message_type, reply_type = m.TransferLeadership, m.TransferLeadershipReply
    arguments, response = wire_arguments(message_type), wire_arguments(reply_type)
    errors = ERRORS


class Fragment(MemberCommand):
    """
    Part of a :class:`~txraft.transport.arguments.Blob` value too large for one AMP value.

    The fragments of sequence ``blob`` are sent in order on one connection,
    ``offset`` being the number of bytes sent before them; the receiver
    refuses one at any other offset (senders before ``offset`` existed omit
    it).  The command that uses the value names ``blob`` and consumes it.
    ``discard`` drops a sequence the sender abandoned.  The answer acknowledges
    the fragment: the sender keeps only a few unacknowledged (flow control).
    """

    arguments = [
        (b"blob", amp.Integer()),
        (b"data", amp.String()),
        (b"offset", amp.Integer(optional=True)),
        (b"discard", amp.Boolean(optional=True)),
    ]
    response = []
    errors = ERRORS


#: The command carrying each request type of :mod:`txraft.messages`.
COMMANDS = {
    command.message_type: command
    for command in (Members, Leader, RequestVote, AppendToLog, Append, InstallSnapshot, ReadIndex,
                    TimeoutNow, ChangeMembers, TransferLeadership)
}


#: Each key the member commands send (arguments, AMP's own), with its length prefix.
_KEYS = {key: _LENGTH(len(key)) + key
         for key in {amp.COMMAND, amp.ASK, amp.ANSWER, amp.ERROR, amp.ERROR_CODE, amp.ERROR_DESCRIPTION}
         | {name for command in MemberCommand.__subclasses__()
            for name, _ in (*command.arguments, *command.response)}}
