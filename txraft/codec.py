"""
The one schema and the one binary encoding of txraft's values, shared by the
disk log, the snapshot header and the network transport.

**The schema.**  Every value type of :mod:`txraft.messages` that is stored or
sent has a tag (:data:`TAGS`) and a list of fields, :func:`fields`, read from
its dataclass: the fields in declaration order, each of a :class:`Kind`
chosen by its annotation (``int`` is :data:`UINT`, ``bytes`` is
:data:`BYTES`, ...).  Adding a field to a message therefore changes the disk
encoding, the AMP command arguments (:mod:`txraft.transport.arguments`) and
the checks together, and nothing else has to be edited.

**The checks.**  Each kind turns a value into its *wire form* (what msgpack
or an AMP argument carries) and back; the way back checks the wire form (type,
integers from 0 to 2**62-1 (:data:`txraft.messages.NUMBER_LIMIT`), array lengths, known enum values) and raises
:class:`ValueError` naming the field.  :func:`from_wire` and
:func:`from_fields` are the only ways from wire forms to messages, so
malformed input from a file or a socket can never build a malformed message.

**The encoding.**  Values are msgpack arrays: the tag, then the fields' wire
forms.  msgpack was chosen over pickle because decoding must never run code
taken from a file or a socket, and over JSON because commands and snapshot
chunks are bytes::

    >>> encode(m.HardState(term=5, voted_for="127.0.0.1:7001"))
    b'\\x93\\x02\\x05\\xae127.0.0.1:7001'
    >>> decode(_) == m.HardState(5, "127.0.0.1:7001")
    True

The snapshot header (:func:`encode_snapshot_header`) is the few bytes txraft
writes before the application's data in every snapshot: the session table and
the member list.
"""

from __future__ import annotations

import functools
import operator
import struct
import threading
import typing
from dataclasses import dataclass
from dataclasses import fields as _dataclass_fields
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple

import msgpack

from txraft import messages as m

__all__ = [
    "Kind", "OutOfRange", "UINT", "TEXT", "FLAG", "BYTES", "TEXTS", "ENTRY_KIND", "REQUEST_ID", "OPTIONAL_REQUEST_ID", "ENTRIES",
    "pack", "unpack_entries", "packed_entry", "pack_entries", "TAGS", "fields", "to_fields", "from_fields", "to_wire", "from_wire", "encode", "decode",
    "SNAPSHOT_HEADER_MAGIC", "encode_snapshot_header", "decode_snapshot_header",
]

# Tags are part of the on-disk and on-wire format: never renumber them.
TAGS = {
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
    m.TimeoutNow: 24,
    m.TimeoutNowReply: 25,
    m.ChangeMembers: 26,
    m.ChangeMembersReply: 27,
    m.TransferLeadership: 28,
    m.TransferLeadershipReply: 29,
}
_ENTRY_TAG = TAGS[m.Entry]
_TYPES = {tag: cls for cls, tag in TAGS.items()}


# -- kinds of field ------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """
    How one kind of field travels.

    :ivar name: a short name, for messages and for choosing an AMP argument.
    :ivar dump: value -> wire form (msgpack-ready).  It does not check: values
        built in this process are trusted.
    :ivar load: ``(wire form, field name)`` -> value; raises
        :class:`ValueError` naming the field when the wire form is malformed.
    """

    name: str
    dump: Callable[[Any], Any]
    load: Callable[[Any, str], Any]
    #: value -> the msgpack bytes of its wire form, for a kind that can make
    #: them faster than ``msgpack.packb(dump(value))`` (``None``: it cannot).
    pack: Optional[Callable[[Any], bytes]] = None


def _same(value):
    return value


class OutOfRange(ValueError):
    """A number is an integer, but not below :data:`txraft.messages.NUMBER_LIMIT` (or negative)."""


def _load_uint(value, what):
    # bool is an int subclass, but True is not a term.
    if type(value) is not int:
        raise ValueError(f"{what} must be a non-negative integer below 2**62, got {value!r:.40}")
    if not 0 <= value < m.NUMBER_LIMIT:
        raise OutOfRange(f"{what} must be a non-negative integer below 2**62, got {value!r:.40}")
    return value


def _typed(expected, description):
    def load(value, what):
        if type(value) is not expected:
            raise ValueError(f"{what} must be {description}, got {type(value).__name__}")
        return value

    return load


def _load_texts(value, what):
    if type(value) is not list or not all(type(item) is str for item in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def _load_entry_kind(value, what):
    try:
        return m.EntryKind(value)
    except ValueError:
        raise ValueError(f"{what}: unknown entry kind {value!r:.40}") from None


def _dump_request_id(rid):
    # Nested records travel without a tag: their field says what they are.
    return [rid.session, rid.seq, rid.lowest_pending]


def _load_request_id(value, what):
    return _load_record(m.RequestId, value, what)


def _load_optional_request_id(value, what):
    return None if value is None else _load_record(m.RequestId, value, what)


_PACKERS = threading.local()


def pack(value: Any) -> bytes:
    """
    :returns: ``msgpack.packb(value, use_bin_type=True)``, from a packer kept
        per thread: ``packb`` makes a packer with a 256 KiB buffer for every
        call, which cost a leader ~10% of its time (one call per entry).
    """
    try:
        packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(value)
    except BaseException:
        _PACKERS.packer = msgpack.Packer(use_bin_type=True)  # a failed pack may leave data in its buffer
        raise


def _dump_entries(entries):
    return [to_wire(entry) for entry in entries]


def packed_entry(entry: m.Entry) -> bytes:
    """
    :returns: the msgpack bytes of ``entry`` (as :func:`encode` makes them),
        encoded once per entry object and kept on it.  A leader writes each
        entry to its disk log and sends it to every follower; a follower
        writes the bytes the leader sent.
    """
    raw: Optional[bytes] = entry.__dict__.get("_packed")
    if raw is None:
        # to_wire(entry), spelt out: this runs for every entry a leader logs.
        rid = entry.request_id
        wire = [_ENTRY_TAG, entry.term, entry.index, int(entry.kind), entry.data,
                None if rid is None else [rid.session, rid.seq, rid.lowest_pending]]
        raw = entry.__dict__["_packed"] = pack(wire)
    return raw


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def pack_entries(entries: Iterable[m.Entry]) -> bytes:
    """:returns: the msgpack bytes of an :data:`ENTRIES` field: an array of the entries' :func:`packed_entry` bytes."""
    packed = [packed_entry(entry) for entry in entries]
    return _array_header(len(packed)) + b"".join(packed)


# The fewest bytes an entry takes in msgpack: a 6-array, tag, term, index,
# kind, empty bin, nil.
_MIN_ENTRY_BYTES = 8


def unpack_entries(raw: bytes) -> list:
    """
    Read the msgpack of an :data:`ENTRIES` field (a list of entries' wire
    forms) from a peer, building nothing an entry cannot hold: the list's
    length is at most what ``raw`` can carry and
    :data:`~txraft.messages.MAX_ENTRIES`, every item must be a 6-array,
    and its fields are read one by one, none of them an array (the request
    id, a 3-array, excepted) or a map.  So a message costs memory in
    proportion to its size, whatever its bytes, instead of one Python object
    per byte (a list of 8 MiB of empty arrays took 75 times its size).

    :returns: the wire form, for :func:`from_fields` to check as usual; it
        also keeps each entry's bytes, which a follower writes to its log as
        they came instead of encoding the entry again.
    :raises ValueError: naming what is malformed.
    """
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(raw), 1),
                                max_array_len=0, max_map_len=0, max_ext_len=0,
                                max_str_len=len(raw), max_bin_len=len(raw))
    unpacker.feed(raw)
    header, item, tell = unpacker.read_array_header, unpacker.unpack, unpacker.tell
    try:
        count = header()
        if count > len(raw) // _MIN_ENTRY_BYTES:
            raise ValueError(f"{count} entries cannot fit in {len(raw)} bytes")
        if count > m.MAX_ENTRIES:
            raise ValueError(f"{count} entries are more than the {m.MAX_ENTRIES} one request may carry")
        entries = _WireEntries()
        entries.start, ends = tell(), entries.ends
        for _ in range(count):
            if header() != 6:
                raise ValueError("an entry must be an array of 6 values")
            entry = [item(), item(), item(), item(), item()]
            if list in map(type, entry):
                raise ValueError("an entry's tag, term, index, kind and data cannot be arrays")
            try:
                fields = header()
            except ValueError:  # not an array: nil, or malformed (checked later)
                entry.append(item())
            else:
                if fields != 3:
                    raise ValueError("a request id must be an array of 3 values")
                request_id = [item(), item(), item()]
                if list in map(type, request_id):
                    raise ValueError("a request id's values cannot be arrays")
                entry.append(request_id)
            entries.append(entry)
            ends.append(tell())
        try:
            item()
        except msgpack.OutOfData:
            entries.raw = raw
            return entries
        raise ValueError("extra data after the entries")
    except msgpack.OutOfData:
        raise ValueError("the entries are truncated") from None
    except ValueError as error:
        raise ValueError(f"entries are not valid: {error}") from None
    except Exception as error:  # msgpack raises several unrelated types
        raise ValueError(f"entries are not valid msgpack: {error}") from None


class _WireEntries(list):
    """The wire forms :func:`unpack_entries` read, and where each entry's bytes end in ``raw``."""

    def __init__(self) -> None:
        super().__init__()
        self.start = 0
        self.ends: list = []
        self.raw = b""


_KINDS = {kind.value: kind for kind in m.EntryKind}


def _load_entries(value, what):
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    # Batches of thousands of entries pass through here: the usual shape is
    # checked inline, and anything else goes through the loaders of the
    # schema, which name what is wrong.
    tag, loaders, entry, request_id = TAGS[m.Entry], _LOADERS[m.Entry], m.Entry, m.RequestId
    size, limit, kinds = len(loaders) + 1, m.NUMBER_LIMIT, _KINDS
    entries = []
    for item in value:
        if type(item) is not list or len(item) != size or item[0] != tag:
            raise ValueError(f"{what} must hold only entries, got {item!r:.60}")
        _, term, index, kind, data, rid = item
        if (type(term) is int and type(index) is int and 0 <= term < limit and 0 <= index < limit
                and type(kind) is int and kind in kinds and type(data) is bytes):
            if rid is None:
                entries.append(entry(term, index, kinds[kind], data, None))
                continue
            if (type(rid) is list and len(rid) == 3 and type(rid[0]) is str and type(rid[1]) is int
                    and type(rid[2]) is int and 0 <= rid[1] < limit and 0 <= rid[2] < limit):
                entries.append(entry(term, index, kinds[kind], data, request_id(*rid)))
                continue
        entries.append(entry(*map(operator.call, loaders, item[1:])))
    ends = getattr(value, "ends", None)
    if ends is not None:
        # Keep the bytes each entry came in: they are its encoding (a valid
        # msgpack of a wire form just checked), written to the log as they are.
        raw, start = value.raw, value.start
        for loaded, end in zip(entries, ends):
            loaded.__dict__["_packed"] = raw[start:end]
            start = end
    return tuple(entries)


#: An integer from 0 to ``NUMBER_LIMIT - 1`` (terms, indexes, offsets).
UINT = Kind("uint", _same, _load_uint)
#: A str (member ids).
TEXT = Kind("text", _same, _typed(str, "a string"))
#: A bool.
FLAG = Kind("flag", _same, _typed(bool, "a boolean"))
#: Bytes of any length (commands, snapshot chunks); AMP fragments large ones.
BYTES = Kind("bytes", _same, _typed(bytes, "bytes"))
#: A tuple of str; a list on the wire.
TEXTS = Kind("texts", list, _load_texts)
#: An :class:`~txraft.messages.EntryKind`; its number on the wire.
ENTRY_KIND = Kind("entry kind", int, _load_entry_kind)
#: A :class:`~txraft.messages.RequestId`: ``[session, seq, lowest_pending]``.
REQUEST_ID = Kind("request id", _dump_request_id, _load_request_id)
#: A :class:`~txraft.messages.RequestId` or ``None`` (``nil``).
OPTIONAL_REQUEST_ID = Kind("optional request id", lambda rid: None if rid is None else _dump_request_id(rid),
                           _load_optional_request_id)
#: A tuple of :class:`~txraft.messages.Entry`: a list of tagged entries, each
#: as :func:`to_wire` makes it; AMP fragments large ones.
ENTRIES = Kind("entries", _dump_entries, _load_entries, pack_entries)

_SCALAR_KINDS = {int: UINT, str: TEXT, bool: FLAG, bytes: BYTES, m.EntryKind: ENTRY_KIND, m.RequestId: REQUEST_ID}
_SEQUENCE_KINDS = {str: TEXTS, m.Entry: ENTRIES}


def _kind_of(annotation, where):
    """:returns: the kind of a field annotated ``annotation`` (``Tuple[X, ...]`` and ``tuple[X, ...]`` alike)."""
    kind = _SCALAR_KINDS.get(annotation)
    if kind is not None:
        return kind
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SEQUENCE_KINDS:
        return _SEQUENCE_KINDS[args[0]]
    if origin is typing.Union and set(args) == {m.RequestId, type(None)}:
        return OPTIONAL_REQUEST_ID
    raise TypeError(f"{where}: no wire encoding for fields annotated {annotation!r}")


def _schema(cls):
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, _kind_of(hints[f.name], f"{cls.__name__}.{f.name}"), f"{cls.__name__}.{f.name}")
        for f in _dataclass_fields(cls)
    )


# cls -> ((field name, kind, "Class.field"), ...), built once from the dataclasses.
_SCHEMA = {cls: _schema(cls) for cls in (*TAGS, m.RequestId)}
# cls -> (one-argument load of each field, ...): what decoding runs for every
# log entry read, so it is applied with map() rather than a Python loop.
_LOADERS = {
    cls: tuple(functools.partial(kind.load, what=where) for _, kind, where in schema)
    for cls, schema in _SCHEMA.items()
}


def fields(cls) -> Tuple[Tuple[str, Kind], ...]:
    """
    :returns: the fields of message type ``cls`` as ``(name, kind)`` pairs,
        in wire order.
    :raises TypeError: for a type that is not part of the schema.
    """
    try:
        schema = _SCHEMA[cls]
    except KeyError:
        raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a txraft message type") from None
    return tuple((name, kind) for name, kind, _ in schema)


def _load_record(cls, values, what):
    loaders = _LOADERS[cls]
    if type(values) is not list or len(values) != len(loaders):
        raise ValueError(f"{what}: {cls.__name__} has {len(loaders)} fields, got {values!r:.60}")
    return cls(*map(operator.call, loaders, values))


# -- messages <-> wire forms ---------------------------------------------------


def to_fields(value, packed: bool = False) -> dict:
    """
    :returns: ``{field name: wire form}`` for a value of :mod:`txraft.messages`
        (the AMP transport sends each as one argument).
    :param packed: give the fields of a kind that can pack itself
        (:attr:`Kind.pack`: entries) as their msgpack bytes instead.
    :raises TypeError: for a type that is not part of the schema.
    """
    try:
        schema = _SCHEMA[type(value)]
    except KeyError:
        raise TypeError(f"cannot encode {type(value).__name__}") from None
    return {name: (kind.pack if packed and kind.pack is not None else kind.dump)(getattr(value, name))
            for name, kind, _ in schema}


def from_fields(cls, values: Mapping[str, Any]):
    """
    Inverse of :func:`to_fields`: check every wire form and build a ``cls``.

    :raises ValueError: naming the first missing or malformed field.
    :raises TypeError: for a type that is not part of the schema.
    """
    try:
        schema = _SCHEMA[cls]
    except KeyError:
        raise TypeError(f"cannot decode {getattr(cls, '__name__', cls)!r}") from None
    loaded = {}
    for name, kind, where in schema:
        try:
            value = values[name]
        except KeyError:
            raise ValueError(f"{where} is missing") from None
        loaded[name] = kind.load(value, where)
    return cls(**loaded)


def to_wire(value):
    """:returns: the msgpack-ready list for a value from :mod:`txraft.messages`: its tag, then its fields."""
    cls = type(value)
    try:
        tag, schema = TAGS[cls], _SCHEMA[cls]
    except KeyError:
        raise TypeError(f"cannot encode {cls.__name__}") from None
    return [tag] + [kind.dump(getattr(value, name)) for name, kind, _ in schema]


def from_wire(raw):
    """Inverse of :func:`to_wire`. :raises ValueError: naming what is malformed."""
    if type(raw) is not list or not raw:
        raise ValueError("a message must be a non-empty array")
    cls = _TYPES.get(raw[0]) if type(raw[0]) is int else None
    if cls is None:
        raise ValueError(f"unknown message tag {raw[0]!r:.40}")
    loaders = _LOADERS[cls]
    if len(raw) != len(loaders) + 1:
        raise ValueError(f"{cls.__name__} has {len(loaders)} fields, got {len(raw) - 1}")
    return cls(*map(operator.call, loaders, raw[1:]))


def encode(value) -> bytes:
    """Encode one value from :mod:`txraft.messages` to bytes."""
    if type(value) is m.Entry:
        return packed_entry(value)
    return pack(to_wire(value))


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"{what} is not a valid msgpack value: {e}") from None


def decode(data: bytes):
    """
    Decode bytes made by :func:`encode`.

    :raises ValueError: naming what is malformed.
    """
    return from_wire(_unpack(data, "the value"))


# -- the snapshot header -------------------------------------------------------

#: The first bytes of txraft's header at the start of every snapshot's data
#: (inside the application data of a snapshot file, after the storage's own
#: file header, :data:`txraft.storage.snapshots.SNAPSHOT_MAGIC`).
SNAPSHOT_HEADER_MAGIC = b"TXRS"
_LENGTH = struct.Struct(">I")


def encode_snapshot_header(sessions, members, configuration=None) -> bytes:
    """
    :param sessions: the session table's wire form
        (:meth:`txraft.core.sessions.SessionTable.to_wire`).
    :param members: the member ids.
    :param configuration: the membership configuration's wire form
        (:meth:`txraft.core.membership.Configuration.to_wire`), or ``None``.
    :returns: the header: :data:`SNAPSHOT_HEADER_MAGIC`, the body's length (4 bytes,
        big-endian), and a msgpack map ``{"sessions": ..., "members": [...]}``,
        with ``"configuration"`` when given (headers written before runtime
        membership changes have none, and readers then take ``members`` as
        the voters).
    """
    body = {"sessions": sessions, "members": list(members)}
    if configuration is not None:
        body["configuration"] = configuration
    body = msgpack.packb(body, use_bin_type=True)
    return SNAPSHOT_HEADER_MAGIC + _LENGTH.pack(len(body)) + body


def decode_snapshot_header(fileobj: typing.BinaryIO) -> Tuple[Any, Tuple[str, ...], Any]:
    """
    Read a header made by :func:`encode_snapshot_header` from the binary file
    ``fileobj``, leaving it at the first byte after the header.

    :returns: ``(sessions, members, configuration)``: the session table's
        wire form (a list, checked by
        :meth:`~txraft.core.sessions.SessionTable.from_wire`), a tuple of
        member ids, and the configuration's wire form (checked by
        :meth:`~txraft.core.membership.Configuration.from_wire`) or ``None``.
    :raises ValueError: when the data does not start with a well-formed header.
    """
    magic = SNAPSHOT_HEADER_MAGIC
    head = fileobj.read(len(magic) + _LENGTH.size)
    if len(head) != len(magic) + _LENGTH.size or head[: len(magic)] != magic:
        raise ValueError("snapshot does not start with a txraft header")
    (length,) = _LENGTH.unpack(head[len(magic):])
    body = fileobj.read(length)
    if len(body) != length:
        raise ValueError("snapshot header is truncated")
    raw = _unpack(body, "the snapshot header")
    # Keys other than these three are ignored, as they always were.
    if type(raw) is not dict or "sessions" not in raw or "members" not in raw:
        raise ValueError("the snapshot header must be a map of sessions and members")
    if type(raw["sessions"]) is not list:
        raise ValueError("the snapshot header's sessions must be a list")
    return raw["sessions"], _load_texts(raw["members"], "the snapshot header's members"), raw.get("configuration")
