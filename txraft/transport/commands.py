"""
The member-to-member RPCs as AMP commands: declarations only.

One command per RPC of the seed design (``raft.vdl``), plus ``ReadIndex`` and
``Fragment``.  Argument and response names are the field names of the
matching values in :mod:`txraft.messages` (each command names them in
``message_type`` and ``reply_type``), so converting between a command and a
message is mechanical; :mod:`txraft.transport.amp` does it and validates the
result with :mod:`txraft.codec`.

AMP caps one value at 65,535 bytes.  The fields that can be larger (a batch of
entries, a client command, a snapshot chunk) are :class:`Blob` arguments: a
value that fits travels inline, a larger one is first sent as a sequence of
:class:`Fragment` commands over the same connection, each acknowledged, and the
command then refers to the reassembled bytes.

Every command declares the same :data:`ERRORS`, so a :class:`txraft.errors`
exception raised by the receiving member reaches the caller as the same type.
They are listed most specific first, because AMP maps an exception to the first
declared class it is an instance of.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from twisted.protocols import amp

from txraft import codec
from txraft import errors as e
from txraft import messages as m

#: Exception type -> AMP error code, most specific first.  ``NotLeader`` travels
#: with the leader's id as its description.
ERRORS = {
    e.OutOfSequence: b"OUT_OF_SEQUENCE",
    e.InvalidRequest: b"INVALID_REQUEST",
    e.NotLeader: b"NOT_LEADER",
    e.Unauthorized: b"UNAUTHORIZED",
    e.TransportError: b"TRANSPORT_ERROR",
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


@dataclass(frozen=True)
class BlobRef:
    """A :class:`Blob` value sent earlier as the :class:`Fragment` sequence ``blob``."""

    blob: int


@dataclass(frozen=True)
class Encoded:
    """A :class:`Blob` value already encoded by :meth:`Blob.encode` (sent inline)."""

    raw: bytes


class Blob(amp.Argument):
    """
    Bytes of any size.  On the wire: ``b"="`` and the bytes, or ``b"@"`` and
    the decimal id of a :class:`Fragment` sequence.

    ``fromString`` does not resolve references or decode, so that a bad value
    fails inside the responder with a declared error; it returns the raw
    bytes or a :class:`BlobRef`.  Subclasses override :meth:`encode` and
    :meth:`decode` for structured values.
    """

    def encode(self, value) -> bytes:
        """:returns: the bytes carried for ``value``."""
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return value

    def decode(self, raw: bytes):
        """Inverse of :meth:`encode`.  :raises ValueError: for malformed bytes."""
        return raw

    def toString(self, value):
        if isinstance(value, BlobRef):
            return b"@%d" % value.blob
        if isinstance(value, Encoded):
            return b"=" + value.raw
        return b"=" + self.encode(value)

    def fromString(self, string):
        if string[:1] == b"=":
            return string[1:]
        if string[:1] == b"@" and string[1:].isdigit():
            return BlobRef(int(string[1:]))
        raise ValueError("a blob value must start with '=' or '@'")


class Entries(Blob):
    """A tuple of :class:`txraft.messages.Entry`, encoded with :mod:`txraft.codec`."""

    def encode(self, value) -> bytes:
        return msgpack.packb([codec.to_wire(entry) for entry in value], use_bin_type=True)

    def decode(self, raw: bytes):
        try:
            items = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as error:
            raise ValueError(f"entries are not valid msgpack: {error}") from None
        if not isinstance(items, list):
            raise ValueError("entries must be an array")
        entries = tuple(codec.from_wire(item) for item in items)
        if not all(isinstance(entry, m.Entry) for entry in entries):
            raise ValueError("entries must hold only entries")
        return entries


class RequestIdArgument(amp.Argument):
    """A :class:`txraft.messages.RequestId` as a msgpack array."""

    def toString(self, value):
        return msgpack.packb([value.session, value.seq, value.lowest_pending], use_bin_type=True)

    def fromString(self, string):
        raw = msgpack.unpackb(string, raw=False)
        if not (isinstance(raw, list) and len(raw) == 3):
            raise ValueError("a request id is [session, seq, lowest_pending]")
        return m.RequestId(*raw)


class Members(amp.Command):
    """:class:`~txraft.messages.GetMembers`: the ids of all members."""

    message_type, reply_type = m.GetMembers, m.GetMembersReply
    arguments = []
    response = [(b"members", amp.ListOf(amp.Unicode()))]
    errors = ERRORS


class Leader(amp.Command):
    """:class:`~txraft.messages.GetLeader`: the leader's id, ``""`` when unknown."""

    message_type, reply_type = m.GetLeader, m.GetLeaderReply
    arguments = []
    response = [(b"leader", amp.Unicode())]
    errors = ERRORS


class RequestVote(amp.Command):
    """:class:`~txraft.messages.RequestVote` (Raft section 5.2)."""

    message_type, reply_type = m.RequestVote, m.RequestVoteReply
    arguments = [
        (b"term", amp.Integer()),
        (b"candidate", amp.Unicode()),
        (b"last_log_index", amp.Integer()),
        (b"last_log_term", amp.Integer()),
        (b"disrupt", amp.Boolean()),
        (b"pre_vote", amp.Boolean()),
    ]
    response = [(b"term", amp.Integer()), (b"granted", amp.Boolean())]
    errors = ERRORS


class AppendToLog(amp.Command):
    """:class:`~txraft.messages.AppendEntries` (Raft section 5.3); a heartbeat when ``entries`` is empty."""

    message_type, reply_type = m.AppendEntries, m.AppendEntriesReply
    arguments = [
        (b"term", amp.Integer()),
        (b"leader", amp.Unicode()),
        (b"prev_index", amp.Integer()),
        (b"prev_term", amp.Integer()),
        (b"entries", Entries()),
        (b"leader_commit", amp.Integer()),
    ]
    response = [
        (b"term", amp.Integer()),
        (b"success", amp.Boolean()),
        (b"match_index", amp.Integer()),
        (b"conflict_index", amp.Integer()),
        (b"conflict_term", amp.Integer()),
    ]
    errors = ERRORS


class Append(amp.Command):
    """:class:`~txraft.messages.ForwardAppend`: a follower forwards a client command to the leader."""

    message_type, reply_type = m.ForwardAppend, m.ForwardAppendReply
    arguments = [(b"command", Blob()), (b"request_id", RequestIdArgument())]
    response = [(b"term", amp.Integer()), (b"index", amp.Integer())]
    errors = ERRORS


class InstallSnapshot(amp.Command):
    """:class:`~txraft.messages.InstallSnapshot`: one chunk of a snapshot (Raft section 7)."""

    message_type, reply_type = m.InstallSnapshot, m.InstallSnapshotReply
    arguments = [
        (b"term", amp.Integer()),
        (b"leader", amp.Unicode()),
        (b"last_index", amp.Integer()),
        (b"last_term", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"data", Blob()),
        (b"done", amp.Boolean()),
    ]
    response = [(b"term", amp.Integer()), (b"next_offset", amp.Integer())]
    errors = ERRORS


class ReadIndex(amp.Command):
    """:class:`~txraft.messages.ReadIndex`: a commit index safe for a linearizable read."""

    message_type, reply_type = m.ReadIndex, m.ReadIndexReply
    arguments = []
    response = [(b"index", amp.Integer())]
    errors = ERRORS


class Fragment(amp.Command):
    """
    Part of a :class:`Blob` value too large for one AMP value.

    Fragments of sequence ``blob`` arrive in order on one connection and are
    appended; the command that uses the value names ``blob`` and consumes it.
    ``discard`` drops a sequence the sender abandoned.  The answer acknowledges
    the fragment: the sender keeps only a few unacknowledged (flow control).
    """

    arguments = [
        (b"blob", amp.Integer()),
        (b"data", amp.String()),
        (b"discard", amp.Boolean(optional=True)),
    ]
    response = []
    errors = ERRORS


#: The command carrying each request type of :mod:`txraft.messages`.
COMMANDS = {
    command.message_type: command
    for command in (Members, Leader, RequestVote, AppendToLog, Append, InstallSnapshot, ReadIndex)
}
