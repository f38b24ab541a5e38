"""
The one binary encoding of txraft's values, shared by the disk log and the
network transport.

Values are encoded with msgpack as small tagged arrays.  msgpack was chosen
over pickle because decoding must never run code taken from a file or a
socket, and over JSON because commands and snapshot chunks are bytes.
:func:`decode` checks every field's type and raises :class:`ValueError`
naming what is wrong, so malformed input cannot build a malformed message.
"""

from __future__ import annotations

import msgpack

from txraft import messages as m

# Tags are part of the on-disk and on-wire format: never renumber them.
_TAGS = {
    m.Entry: 1,
    m.HardState: 2,
    m.SnapshotMeta: 3,
    m.RequestVote: 10,
    m.RequestVoteReply: 11,
    m.AppendEntries: 12,
    m.AppendEntriesReply: 13,
    m.InstallSnapshot: 14,
    m.InstallSnapshotReply: 15,
    m.ForwardAppend: 16,
    m.ForwardAppendReply: 17,
    m.GetMembers: 18,
    m.GetMembersReply: 19,
    m.GetLeader: 20,
    m.GetLeaderReply: 21,
    m.ReadIndex: 22,
    m.ReadIndexReply: 23,
}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}


def _request_id_to_wire(rid):
    if rid is None:
        return None
    return [rid.session, rid.seq, rid.lowest_pending]


def _request_id_from_wire(raw):
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 3):
        raise ValueError(f"request id must be [session, seq, lowest_pending], got {raw!r}")
    session, seq, lowest = raw
    _check(isinstance(session, str), "request id session must be a string")
    _check_int(seq, "request id seq")
    _check_int(lowest, "request id lowest_pending")
    return m.RequestId(session, seq, lowest)


def _entry_to_wire(entry):
    return [entry.term, entry.index, int(entry.kind), entry.data, _request_id_to_wire(entry.request_id)]


def _entry_from_wire(raw):
    if not (isinstance(raw, list) and len(raw) == 5):
        raise ValueError(f"an entry must be [term, index, kind, data, request_id], got {raw!r:.80}")
    term, index, kind, data, rid = raw
    _check_int(term, "entry term")
    _check_int(index, "entry index")
    try:
        kind = m.EntryKind(kind)
    except ValueError:
        raise ValueError(f"unknown entry kind {kind!r}")
    _check(isinstance(data, bytes), "entry data must be bytes")
    return m.Entry(term, index, kind, data, _request_id_from_wire(rid))


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def _check_int(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


# Field converters: how each field of each type goes to and from the wire.
# (field name, to_wire, from_wire-with-validation)
def _int_field(name):
    def load(value):
        _check_int(value, name)
        return value

    return name, (lambda v: v), load


def _typed_field(name, kind):
    def load(value):
        _check(isinstance(value, kind), f"{name} must be {kind.__name__}, got {type(value).__name__}")
        return value

    return name, (lambda v: v), load


def _entries_field(name):
    def load(value):
        _check(isinstance(value, list), f"{name} must be a list")
        return tuple(_entry_from_wire(item) for item in value)

    return name, (lambda v: [_entry_to_wire(e) for e in v]), load


def _strings_field(name):
    def load(value):
        _check(isinstance(value, list) and all(isinstance(s, str) for s in value), f"{name} must be a list of strings")
        return tuple(value)

    return name, list, load


_rid_field = ("request_id", _request_id_to_wire, _request_id_from_wire)

_FIELDS = {
    m.HardState: [_int_field("term"), _typed_field("voted_for", str)],
    m.SnapshotMeta: [_int_field("index"), _int_field("term")],
    m.RequestVote: [
        _int_field("term"),
        _typed_field("candidate", str),
        _int_field("last_log_index"),
        _int_field("last_log_term"),
        _typed_field("disrupt", bool),
        _typed_field("pre_vote", bool),
    ],
    m.RequestVoteReply: [_int_field("term"), _typed_field("granted", bool)],
    m.AppendEntries: [
        _int_field("term"),
        _typed_field("leader", str),
        _int_field("prev_index"),
        _int_field("prev_term"),
        _entries_field("entries"),
        _int_field("leader_commit"),
    ],
    m.AppendEntriesReply: [
        _int_field("term"),
        _typed_field("success", bool),
        _int_field("match_index"),
        _int_field("conflict_index"),
        _int_field("conflict_term"),
    ],
    m.InstallSnapshot: [
        _int_field("term"),
        _typed_field("leader", str),
        _int_field("last_index"),
        _int_field("last_term"),
        _int_field("offset"),
        _typed_field("data", bytes),
        _typed_field("done", bool),
    ],
    m.InstallSnapshotReply: [_int_field("term"), _int_field("next_offset")],
    m.ForwardAppend: [_typed_field("command", bytes), _rid_field],
    m.ForwardAppendReply: [_int_field("term"), _int_field("index")],
    m.GetMembers: [],
    m.GetMembersReply: [_strings_field("members")],
    m.GetLeader: [],
    m.GetLeaderReply: [_typed_field("leader", str)],
    m.ReadIndex: [],
    m.ReadIndexReply: [_int_field("index")],
}


def to_wire(value):
    """:returns: the msgpack-ready list for a value from :mod:`txraft.messages`."""
    cls = type(value)
    if cls is m.Entry:
        return [_TAGS[cls]] + _entry_to_wire(value)
    try:
        fields = _FIELDS[cls]
    except KeyError:
        raise TypeError(f"cannot encode {cls.__name__}")
    return [_TAGS[cls]] + [dump(getattr(value, name)) for name, dump, _ in fields]


def from_wire(raw):
    """Inverse of :func:`to_wire`. :raises ValueError: for malformed input."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("a message must be a non-empty array")
    cls = _TYPES.get(raw[0])
    if cls is None:
        raise ValueError(f"unknown message tag {raw[0]!r}")
    if cls is m.Entry:
        return _entry_from_wire(raw[1:])
    fields = _FIELDS[cls]
    if len(raw) != len(fields) + 1:
        raise ValueError(f"{cls.__name__} has {len(fields)} fields, got {len(raw) - 1}")
    return cls(**{name: load(value) for (name, _, load), value in zip(fields, raw[1:])})


def encode(value) -> bytes:
    """Encode one value from :mod:`txraft.messages` to bytes."""
    return msgpack.packb(to_wire(value), use_bin_type=True)


def decode(data: bytes):
    """
    Decode bytes made by :func:`encode`.

    :raises ValueError: naming what is malformed.
    """
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"not a valid msgpack value: {e}") from None
    return from_wire(raw)
