"""
The few bytes txraft writes at the start of every snapshot, before the
application's own data: the session table (so deduplication survives
compaction) and the member list.
"""

import struct

import msgpack

from txraft.core.sessions import SessionTable

MAGIC = b"TXRS"
_LENGTH = struct.Struct(">I")


def write_header(fileobj, sessions, members):
    body = msgpack.packb({"sessions": sessions.to_wire(), "members": list(members)}, use_bin_type=True)
    fileobj.write(MAGIC + _LENGTH.pack(len(body)) + body)


def read_header(fileobj):
    """
    Read the header and leave ``fileobj`` at the application's first byte.

    :returns: ``(SessionTable, members)``.
    :raises ValueError: when the snapshot does not start with a txraft header.
    """
    head = fileobj.read(len(MAGIC) + _LENGTH.size)
    if len(head) != len(MAGIC) + _LENGTH.size or head[: len(MAGIC)] != MAGIC:
        raise ValueError("snapshot does not start with a txraft header")
    (length,) = _LENGTH.unpack(head[len(MAGIC):])
    body = fileobj.read(length)
    if len(body) != length:
        raise ValueError("snapshot header is truncated")
    raw = msgpack.unpackb(body, raw=False)
    return SessionTable.from_wire(raw["sessions"]), tuple(raw["members"])
