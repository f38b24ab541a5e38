"""
The records of a log file: how a value is framed, checked and found again.

A log file is :data:`LOG_MAGIC` followed by records.  Each record is its
payload's length, a ``zlib.crc32`` checksum of the length bytes and the
payload, then the payload: a :mod:`txraft.codec` value.  Use it like this::

    data, positions = new_log_bytes(0, 0, HardState(), [])   # a fresh log
    record = frame(Entry(term=1, index=1, data=b"x"))        # one more record
    length, crc = RECORD.unpack_from(record)
    payload = record[RECORD.size :]
    if record_ok(record[:4], crc, payload):
        peek(payload)    # (1, 1): index and term of an entry, else the value

``docs/on-disk-format.md`` describes the bytes; :mod:`txraft.storage.recovery`
reads logs back with these functions.
"""

from __future__ import annotations

import os
import struct
import zlib

import msgpack

from txraft import codec
from txraft.messages import NUMBER_LIMIT, Entry, SnapshotMeta

__all__ = [
    "LOG_MAGIC",
    "RECORD",
    "MAX_RECORD",
    "frame",
    "record_ok",
    "next_good_record",
    "peek",
    "new_log_bytes",
]

#: The first bytes of every log file (format version 1).
LOG_MAGIC = b"TXRLOG01"

#: Record framing: payload length, then crc32 of the length bytes and the payload.
RECORD = struct.Struct(">II")

#: Refuse to believe a length field beyond this (a corrupt length must not make
#: recovery try to allocate gigabytes).
MAX_RECORD = 1 << 30

# The codec's tag of an Entry record (part of the on-disk format).
_ENTRY_TAG = codec.to_wire(Entry(0, 0))[0]


def frame(value):
    """:returns: the bytes of one record holding ``value``."""
    payload = codec.encode(value)
    length = struct.pack(">I", len(payload))
    return length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload


def record_ok(length_bytes, crc, payload):
    """:returns: whether ``crc`` is the checksum of a record's length bytes and payload."""
    return zlib.crc32(payload, zlib.crc32(length_bytes)) == crc


def next_good_record(fd, start, size):
    """
    :returns: the offset of the first intact record at or after ``start``, or
        ``None``.  Used to tell a torn tail (nothing intact follows the damage)
        from damage in the middle of a log.
    """
    window = 1 << 20
    position = start
    while position + RECORD.size < size:
        chunk = os.pread(fd, min(window, size - position), position)
        limit = len(chunk) - RECORD.size
        q = 0
        while q <= limit:
            if chunk[q] == 0 and chunk[q : q + 4] == b"\0\0\0\0":
                # A zero length is never written: skip runs of zeros quickly,
                # but not the up to three zeros a length field may start with.
                stripped = chunk[q:].lstrip(b"\0")
                q = max(q + 1, len(chunk) - len(stripped) - 3)
                continue
            length, crc = RECORD.unpack_from(chunk, q)
            at = position + q
            if 0 < length <= min(MAX_RECORD, size - at - RECORD.size):
                if q + RECORD.size + length <= len(chunk):
                    payload = chunk[q + RECORD.size : q + RECORD.size + length]
                else:
                    payload = os.pread(fd, length, at + RECORD.size)
                if record_ok(chunk[q : q + 4], crc, payload):
                    try:
                        codec.decode(payload)
                    except ValueError:
                        pass
                    else:
                        return at
            q += 1
        position += max(1, limit + 1)
    return None


def peek(payload):
    """
    Decode a record payload for recovery.

    :returns: ``(index, term)`` for an entry (the rest is checked when the
        entry is read), else the decoded value.
    :raises ValueError: for a malformed payload.
    """
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"not a valid msgpack value: {e}") from None
    if type(raw) is list and len(raw) == 6 and raw[0] == _ENTRY_TAG:
        index, term = raw[2], raw[1]
        if type(index) is int and type(term) is int and 0 <= index < NUMBER_LIMIT and 0 <= term < NUMBER_LIMIT:
            return index, term
    return codec.from_wire(raw)


def new_log_bytes(base_index, base_term, hard_state, entries):
    """
    :returns: ``(data, positions)``: the bytes of a new log and the
        ``(offset, length)`` of each entry's record in it.
    """
    parts = [LOG_MAGIC, frame(SnapshotMeta(index=base_index, term=base_term)), frame(hard_state)]
    offset = sum(len(p) for p in parts)
    positions = []
    for entry in entries:
        record = frame(entry)
        parts.append(record)
        positions.append((offset, len(record)))
        offset += len(record)
    return b"".join(parts), positions
