"""
:class:`DiskStorage`: a member's term, vote, log and snapshots in one directory.

Use it like this::

    storage = DiskStorage("/var/lib/raft/member-1", fsync="always", reactor=reactor)
    yield storage.open()           # recovers what is on disk (or creates a fresh log)
    d = storage.append([Entry(term=1, index=1, data=b"x")])
    # ... ``d`` fires once the entry is on disk ...
    yield storage.close()

The layout follows the seed design (``docs/on-disk-format.md`` has the byte
level details):

- ``<term>.<index>.log`` -- a log that continues the history after the entry
  ``(index, term)``; term and index are zero-padded to 20 digits, so a fresh
  member writes ``00000000000000000000.00000000000000000000.log``.
- ``<term>.<index>.snap`` -- a snapshot of the application covering every entry
  up to ``index``.  It belongs to the log of the same name; a snapshot without
  its log was not completely installed and is discarded at :meth:`open`.

Every log is a magic string followed by records, each framed by its length and
a ``zlib.crc32`` checksum and carrying a :mod:`txraft.codec` value: the log's
base (a :class:`~txraft.messages.SnapshotMeta`), :class:`~txraft.messages.HardState`
records and :class:`~txraft.messages.Entry` records.  Truncation needs no record
of its own: an entry whose index is already in the log replaces that entry and
every later one, both when it is written and when the log is replayed.

Threading: every write goes through one dedicated worker thread, so writes reach
the disk in the order they were issued and the reactor never waits for
``fsync``.  Everything written in one reactor turn becomes one ``write`` and one
``fsync`` (group commit); while that runs, the next batch accumulates.  Reads
are synchronous: the storage keeps an index of where each entry lives (16
bytes an entry), the entries not yet on disk and a small cache of recent ones,
and reads any other entry from its file on demand.

Recovery, crash safety and the fsync policies are described in
``docs/on-disk-format.md``.
"""

from __future__ import annotations

import bisect
import fcntl
import io
import os
import re
import struct
import tempfile
import zlib
from array import array
from collections import OrderedDict

import msgpack
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txraft import codec
from txraft.config import FSYNC_POLICIES
from txraft.errors import ConfigurationError, CorruptLog, StorageError
from txraft.interfaces import ISnapshotSource, ISnapshotWriter, IStorage
from txraft.messages import Entry, HardState, SnapshotMeta

__all__ = ["DiskStorage", "log_name", "snapshot_name", "LOG_MAGIC", "SNAPSHOT_MAGIC"]

#: The first bytes of every log file (format version 1).
LOG_MAGIC = b"TXRLOG01"
#: The first bytes of every snapshot file (format version 1).
SNAPSHOT_MAGIC = b"TXRSNP01"

# Record framing: payload length, then crc32 of the length bytes and the payload.
_RECORD = struct.Struct(">II")
# Snapshot header: magic, term, index, body length, body crc32, header crc32,
# padded to _SNAPSHOT_HEADER_SIZE bytes; the application's bytes follow it.
_SNAPSHOT_HEADER = struct.Struct(">8sQQQI")
_SNAPSHOT_HEADER_SIZE = 64
# Refuse to believe a length field beyond this (a corrupt length must not make
# recovery try to allocate gigabytes).
_MAX_RECORD = 1 << 30

_NAME = re.compile(r"^(\d{20})\.(\d{20})\.(log|snap)$")
_TEMPORARY = re.compile(r"^\d{20}\.\d{20}\.(log|snap)\..*\.tmp$")

# The codec's tag of an Entry record (part of the on-disk format).
_ENTRY_TAG = codec.to_wire(Entry(0, 0))[0]

# Bytes read from a log file with one pread when a range of entries is read.
_READ_SPAN = 1 << 20

# Bound on the cache of recently read or written entries.
_CACHE_BYTES = 8 * 1024 * 1024
_CACHE_ENTRIES = 4096


def _stem(term, index):
    return f"{term:020d}.{index:020d}"


def log_name(term, index):
    """:returns: the file name of the log that continues after ``(index, term)``."""
    return _stem(term, index) + ".log"


def snapshot_name(term, index):
    """:returns: the file name of the snapshot covering entries up to ``(index, term)``."""
    return _stem(term, index) + ".snap"


def _frame(value):
    """:returns: the bytes of one record holding ``value``."""
    payload = codec.encode(value)
    length = struct.pack(">I", len(payload))
    return length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload


def _record_ok(length_bytes, crc, payload):
    return zlib.crc32(payload, zlib.crc32(length_bytes)) == crc


def _write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    """
    One log file.

    :ivar path: its path.
    :ivar key: ``(index, term)`` of its base, parsed from the name.
    :ivar rfd: descriptor the reactor thread reads entries through (``None``
        until the worker has created the file).
    :ivar wfd: descriptor the worker appends through (only the active log has one).
    """

    def __init__(self, path, key):
        self.path = path
        self.key = key
        self.rfd = None
        self.wfd = None

    def close(self):
        for name in ("rfd", "wfd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


class _LogIndex:
    """
    Where each entry of the log lives, without the entries themselves.

    Invariants: entries ``base_index + 1 .. last_index`` are stored;
    ``offsets[i - first_index]`` and ``lengths[...]`` locate the record of entry
    ``i`` in the segment with the greatest start ``<= i``; terms are kept as runs
    (``term_starts[k]`` is the first index of a run of ``term_values[k]``), since
    terms change rarely along a log.
    """

    def __init__(self, base_index, base_term):
        self.base_index = base_index
        self.base_term = base_term
        self.offsets = array("Q")
        self.lengths = array("Q")
        self.term_starts = []
        self.term_values = []
        self.segment_starts = []
        self.segments = []

    @property
    def first_index(self):
        return self.base_index + 1

    @property
    def last_index(self):
        return self.base_index + len(self.offsets)

    def term_at(self, index):
        if index == self.base_index:
            return self.base_term
        if not self.base_index < index <= self.last_index:
            return None
        return self.term_values[bisect.bisect_right(self.term_starts, index) - 1]

    def locate(self, index):
        k = index - self.first_index
        segment = self.segments[bisect.bisect_right(self.segment_starts, index) - 1]
        return segment, self.offsets[k], self.lengths[k]

    def truncate_from(self, index):
        """Forget every entry at or after ``index``."""
        if index > self.last_index:
            return
        del self.offsets[index - self.first_index :]
        del self.lengths[index - self.first_index :]
        k = bisect.bisect_left(self.term_starts, index)
        del self.term_starts[k:], self.term_values[k:]
        k = bisect.bisect_left(self.segment_starts, index)
        del self.segment_starts[k:], self.segments[k:]

    def add(self, index, term, segment, offset, length):
        """Record entry ``index`` (which must be ``last_index + 1``)."""
        assert index == self.last_index + 1, (index, self.last_index)
        self.offsets.append(offset)
        self.lengths.append(length)
        if not self.term_values or self.term_values[-1] != term:
            self.term_starts.append(index)
            self.term_values.append(term)
        if not self.segments or self.segments[-1] is not segment:
            self.segment_starts.append(index)
            self.segments.append(segment)


class _Window(io.RawIOBase):
    """
    A view of a file from ``base`` on, so that the application never sees (or
    overwrites) the snapshot header.  Reads stop at ``limit`` bytes when given.
    """

    def __init__(self, fd, base, writable, limit=None, owns_fd=False):
        super().__init__()
        self._fd = fd
        self._base = base
        self._writable = writable
        self._limit = limit
        self._owns_fd = owns_fd
        self._position = 0

    def detach_descriptor(self):
        """Stop using the descriptor (it is closed or handed on): later I/O raises."""
        self._fd = None

    def _descriptor(self):
        if self._fd is None:
            raise ValueError("I/O on a snapshot file that was committed or aborted")
        return self._fd

    def readable(self):
        return not self._writable

    def writable(self):
        return self._writable

    def seekable(self):
        return True

    def _end(self):
        if self._limit is not None:
            return self._limit
        return max(0, os.fstat(self._descriptor()).st_size - self._base)

    def readinto(self, buffer):
        if self._writable:
            raise io.UnsupportedOperation("read")
        wanted = min(len(buffer), self._end() - self._position)
        if wanted <= 0:
            return 0
        data = os.pread(self._descriptor(), wanted, self._base + self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def write(self, data):
        if not self._writable:
            raise io.UnsupportedOperation("write")
        written = os.pwrite(self._descriptor(), data, self._base + self._position)
        self._position += written
        return written

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._end() + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if position < 0:
            raise OSError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self):
        return self._position

    def close(self):
        if not self.closed and self._owns_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def _read_snapshot_header(fd, path):
    """
    Check a snapshot file completely.

    :returns: ``(meta, size)`` of a snapshot whose header and body checksums match.
    :raises CorruptLog: naming the file and the offset of the damage.
    """
    header = os.pread(fd, _SNAPSHOT_HEADER_SIZE, 0)
    fixed = _SNAPSHOT_HEADER.size
    if len(header) < _SNAPSHOT_HEADER_SIZE or header[:8] != SNAPSHOT_MAGIC:
        raise CorruptLog(f"{path}: offset 0: not a txraft snapshot header")
    (header_crc,) = struct.unpack_from(">I", header, fixed)
    if zlib.crc32(header[:fixed]) != header_crc:
        raise CorruptLog(f"{path}: offset 0: snapshot header checksum mismatch")
    _, term, index, length, body_crc = _SNAPSHOT_HEADER.unpack_from(header)
    actual = os.fstat(fd).st_size - _SNAPSHOT_HEADER_SIZE
    if actual != length:
        raise CorruptLog(
            f"{path}: offset {_SNAPSHOT_HEADER_SIZE + min(actual, length)}: "
            f"snapshot body has {actual} bytes, header says {length}"
        )
    crc = 0
    offset = _SNAPSHOT_HEADER_SIZE
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    if crc != body_crc:
        raise CorruptLog(f"{path}: offset {_SNAPSHOT_HEADER_SIZE}: snapshot body checksum mismatch")
    return SnapshotMeta(index=index, term=term), length


def _finish_snapshot_header(fd, meta):
    """Compute the body checksum of a snapshot being written and write its header."""
    crc = 0
    offset = _SNAPSHOT_HEADER_SIZE
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    fixed = _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, meta.term, meta.index, offset - _SNAPSHOT_HEADER_SIZE, crc)
    header = fixed + struct.pack(">I", zlib.crc32(fixed))
    _write_all(fd, header.ljust(_SNAPSHOT_HEADER_SIZE, b"\0"), 0)


# -- recovery ---------------------------------------------------------------


class _Recovered:
    """What :func:`_recover` found on disk, handed from the worker to the reactor."""

    def __init__(self):
        self.index = None
        self.hard_state = HardState()
        self.active = None
        self.end = 0
        self.snapshot = None  # (meta, path) or None
        self.lock = None  # descriptor of the locked directory
        self.warnings = []  # (format, fields) to log on the reactor thread


def _next_good_record(fd, start, size):
    """
    :returns: the offset of the first intact record at or after ``start``, or
        ``None``.  Used to tell a torn tail (nothing intact follows the damage)
        from damage in the middle of a log.
    """
    window = 1 << 20
    position = start
    while position + _RECORD.size < size:
        chunk = os.pread(fd, min(window, size - position), position)
        limit = len(chunk) - _RECORD.size
        q = 0
        while q <= limit:
            if chunk[q] == 0 and chunk[q : q + 4] == b"\0\0\0\0":
                # A zero length is never written: skip runs of zeros quickly,
                # but not the up to three zeros a length field may start with.
                stripped = chunk[q:].lstrip(b"\0")
                q = max(q + 1, len(chunk) - len(stripped) - 3)
                continue
            length, crc = _RECORD.unpack_from(chunk, q)
            at = position + q
            if 0 < length <= min(_MAX_RECORD, size - at - _RECORD.size):
                if q + _RECORD.size + length <= len(chunk):
                    payload = chunk[q + _RECORD.size : q + _RECORD.size + length]
                else:
                    payload = os.pread(fd, length, at + _RECORD.size)
                if _record_ok(chunk[q : q + 4], crc, payload):
                    try:
                        codec.decode(payload)
                    except ValueError:
                        pass
                    else:
                        return at
            q += 1
        position += max(1, limit + 1)
    return None


_REPLAY_WINDOW = 4 << 20


def _peek(payload):
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
        if type(index) is int and type(term) is int and index >= 0 and term >= 0:
            return index, term
    return codec.from_wire(raw)


def _replay(path, key, state, is_last):
    """
    Replay one log file into ``state`` (a :class:`_Recovered`).

    A damaged tail of the last log is cut off; any other damage raises
    :class:`CorruptLog`.
    """
    segment = _Segment(path, key)
    fd = os.open(path, os.O_RDONLY)
    segment.rfd = fd
    size = os.fstat(fd).st_size
    if os.pread(fd, len(LOG_MAGIC), 0) != LOG_MAGIC:
        segment.close()
        raise CorruptLog(f"{path}: offset 0: not a txraft log (bad magic)")
    offset = len(LOG_MAGIC)
    # The file is read in windows of _REPLAY_WINDOW bytes (or one record, if larger).
    window, window_start = b"", offset
    first = True
    try:
        while offset < size:
            damage = None
            at = offset - window_start
            if at + _RECORD.size > len(window):
                window, window_start, at = os.pread(fd, _REPLAY_WINDOW, offset), offset, 0
            if at + _RECORD.size > len(window):
                damage = "short record header"
            else:
                length, crc = _RECORD.unpack_from(window, at)
                if not 0 < length <= min(_MAX_RECORD, size - offset - _RECORD.size):
                    damage = f"record length {length} runs past the end of the file"
                else:
                    end = at + _RECORD.size + length
                    if end > len(window):
                        window = os.pread(fd, max(_REPLAY_WINDOW, _RECORD.size + length), offset)
                        window_start, at, end = offset, 0, _RECORD.size + length
                    payload = window[at + _RECORD.size : end]
                    if not _record_ok(window[at : at + 4], crc, payload):
                        damage = "record checksum mismatch"
            if damage is not None:
                follows = _next_good_record(fd, offset + 1, size)
                if follows is not None or not is_last:
                    raise CorruptLog(
                        f"{path}: offset {offset}: {damage}"
                        + (f", yet an intact record follows at offset {follows}" if follows is not None else "")
                        + "; entries after it may be committed, refusing to continue"
                    )
                state.warnings.append(
                    (
                        "Truncating torn tail of {file} at offset {offset} ({damage}); "
                        "{lost} bytes discarded",
                        dict(file=path, offset=offset, damage=damage, lost=size - offset),
                    )
                )
                os.truncate(path, offset)
                wfd = os.open(path, os.O_WRONLY)
                try:
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
                size = offset
                break
            try:
                value = _peek(payload)
            except ValueError as e:
                raise CorruptLog(f"{path}: offset {offset}: undecodable record: {e}")
            if type(value) is tuple:
                # An entry: only its index and term are needed now.
                entry_index, entry_term = value
                index = state.index
                if first or not index.first_index <= entry_index <= index.last_index + 1:
                    raise CorruptLog(
                        f"{path}: offset {offset}: entry {entry_index} does not follow "
                        f"the log ({index.first_index if index else '?'}..{index.last_index if index else '?'})"
                    )
                if entry_index <= index.last_index:
                    index.truncate_from(entry_index)
                index.add(entry_index, entry_term, segment, offset, _RECORD.size + length)
            elif first:
                if not isinstance(value, SnapshotMeta):
                    raise CorruptLog(f"{path}: offset {offset}: a log must begin with its base record")
                first = False
                if state.index is None:
                    state.index = _LogIndex(value.index, value.term)
                else:
                    index = state.index
                    if not (
                        index.base_index <= value.index <= index.last_index
                        and index.term_at(value.index) == value.term
                    ):
                        raise CorruptLog(
                            f"{path}: offset {offset}: log continues after entry "
                            f"{value.index} (term {value.term}), which the older logs do not hold"
                        )
                    index.truncate_from(value.index + 1)
            elif isinstance(value, HardState):
                state.hard_state = value
            else:
                raise CorruptLog(f"{path}: offset {offset}: unexpected {type(value).__name__} record")
            offset += _RECORD.size + length
    except BaseException:
        segment.close()
        raise
    if first:
        segment.close()
        raise CorruptLog(f"{path}: offset {len(LOG_MAGIC)}: the log has no base record")
    return segment, size


def _new_log_bytes(base_index, base_term, hard_state, entries):
    """
    :returns: ``(data, positions)``: the bytes of a new log and the
        ``(offset, length)`` of each entry's record in it.
    """
    parts = [LOG_MAGIC, _frame(SnapshotMeta(index=base_index, term=base_term)), _frame(hard_state)]
    offset = sum(len(p) for p in parts)
    positions = []
    for entry in entries:
        record = _frame(entry)
        parts.append(record)
        positions.append((offset, len(record)))
        offset += len(record)
    return b"".join(parts), positions


def _install_file(directory, name, data, fsync):
    """Write ``data`` to ``directory/name`` atomically (temporary name, fsync, rename, fsync directory)."""
    final = os.path.join(directory, name)
    temporary = final + ".new.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data, 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    if fsync:
        _fsync_directory(directory)
    return final


def _list_files(directory):
    """:returns: ``(logs, snapshots, temporaries)``; logs and snapshots map ``(index, term)`` to a path."""
    logs, snapshots, temporaries = {}, {}, []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            key = (int(match.group(2)), int(match.group(1)))
            (logs if match.group(3) == "log" else snapshots)[key] = os.path.join(directory, name)
        elif _TEMPORARY.match(name):
            temporaries.append(os.path.join(directory, name))
    return logs, snapshots, temporaries


def _prepare_directory(directory, fsync):
    """
    Create ``directory`` if needed, check that it can be written and lock it
    against a second member.

    :returns: the descriptor holding the lock (released when closed, or when
        the process dies).
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigurationError(f"log_dir {directory!r} exists and is not a directory")
    try:
        if not os.path.exists(directory):
            os.makedirs(directory, exist_ok=True)
            if fsync:
                # Make the new directory's own name durable.
                _fsync_directory(os.path.dirname(os.path.abspath(directory)))
    except OSError as e:
        raise StorageError(f"cannot create log_dir {directory!r}: {e.strerror or e}") from e
    lock = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        raise StorageError(f"log_dir {directory!r} is in use by another storage (it is locked)") from None
    try:
        _check_writable_directory(directory)
    except BaseException:
        os.close(lock)
        raise
    return lock


def _check_writable_directory(directory):
    probe = os.path.join(directory, _stem(0, 0) + ".log.probe.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise StorageError(f"log_dir {directory!r} is not writable: {e.strerror or e}") from e


def _recover(directory, fsync):
    """
    Read (or create) the state in ``directory``.  Runs on the worker thread.

    :returns: a :class:`_Recovered`.
    """
    lock = _prepare_directory(directory, fsync)
    try:
        state = _recover_locked(directory, fsync)
    except BaseException:
        os.close(lock)
        raise
    state.lock = lock
    return state


def _recover_locked(directory, fsync):
    state = _Recovered()
    logs, snapshots, temporaries = _list_files(directory)
    for path in temporaries:
        # Leftovers of a snapshot or log that was never installed.
        os.remove(path)
    for key in sorted(set(snapshots) - set(logs)):
        # The crash came between installing the snapshot and its log: the
        # previous snapshot and log are still complete.
        state.warnings.append(("Discarding incomplete snapshot {file} (it has no log)", dict(file=snapshots[key])))
        os.remove(snapshots.pop(key))

    if not logs:
        data, _ = _new_log_bytes(0, 0, HardState(), [])
        logs[(0, 0)] = _install_file(directory, log_name(0, 0), data, fsync)

    # Start from the newest log whose snapshot is intact (the first log needs none).
    keys = sorted(logs)
    start = None
    damaged = []
    for position in range(len(keys) - 1, -1, -1):
        key = keys[position]
        if key in snapshots:
            fd = os.open(snapshots[key], os.O_RDONLY)
            try:
                meta, _ = _read_snapshot_header(fd, snapshots[key])
            except CorruptLog as e:
                damaged.append(e)
                state.warnings.append(
                    ("Snapshot {file} is damaged ({error}); trying an older one", dict(file=snapshots[key], error=str(e)))
                )
                continue
            finally:
                os.close(fd)
            if (meta.index, meta.term) != key:
                damaged.append(CorruptLog(f"{snapshots[key]}: offset 0: header names entry {meta.index} term {meta.term}"))
                continue
            state.snapshot = (meta, snapshots[key])
            start = position
            break
        if key == (0, 0):
            start = position
            break
    if start is None:
        if damaged:
            raise CorruptLog(f"{damaged[0]} (and no older snapshot to fall back on)")
        raise CorruptLog(f"{logs[keys[-1]]}: offset 0: no snapshot for this log and no log from the beginning")

    segments = []
    try:
        for position in range(start, len(keys)):
            is_last = position == len(keys) - 1
            segment, size = _replay(logs[keys[position]], keys[position], state, is_last)
            segments.append(segment)
        if state.snapshot is not None:
            meta = state.snapshot[0]
            if state.index.term_at(meta.index) != meta.term:
                raise CorruptLog(
                    f"{logs[keys[start]]}: offset 0: the log does not hold the snapshot's entry "
                    f"{meta.index} (term {meta.term})"
                )
        state.active = segments[-1]
        state.end = size
        state.active.wfd = os.open(state.active.path, os.O_WRONLY)
    except BaseException:
        for segment in segments:
            segment.close()
        raise
    used = {id(s) for s in state.index.segments} | {id(state.active)}
    for segment in segments:
        if id(segment) not in used:
            segment.close()

    # Generations older than the one before the starting point are stale (seed
    # rule); the one before it is kept as a fallback should this snapshot rot.
    for key in keys[: max(0, start - 1)]:
        for files in (snapshots, logs):
            if key in files:
                os.remove(files[key])
    return state


def _recover_or_explain(directory, fsync):
    try:
        return _recover(directory, fsync)
    except OSError as e:
        raise StorageError(f"{getattr(e, 'filename', None) or directory}: {e.strerror or e}") from e


# -- the storage ------------------------------------------------------------


class _Batch:
    """
    Writes issued in one reactor turn, done by the worker as one write and one fsync.

    :ivar serial: increases by one from batch to batch.
    :ivar operations: ``["write", segment, offset, [bytes, ...], total length]``
        (consecutive records of one file, merged) or ``["switch", _Switch]``,
        in issue order.
    :ivar written: indexes of the entries this batch writes; they are held in
        memory (tagged with ``serial``) until it is done.
    :ivar waiters: Deferreds to fire, in issue order, when the batch is durable.
    :ivar switches: the snapshot commits among ``operations``.
    """

    def __init__(self, serial):
        self.serial = serial
        self.operations = []
        self.written = []
        self.waiters = []
        self.switches = []

    def write(self, segment, offset, data):
        last = self.operations[-1] if self.operations else None
        if last is not None and last[0] == "write" and last[1] is segment and last[2] + last[4] == offset:
            last[3].append(data)
            last[4] += len(data)
        else:
            self.operations.append(["write", segment, offset, [data], len(data)])


class _Switch:
    """
    A snapshot commit as the worker sees it: the snapshot to install, the log
    to start (``segment``, written as ``log_bytes``), the logs it replaces, and
    the oldest generation to keep (``keep_key``: the oldest replaced log's).
    """

    def __init__(self, writer, segment, log_bytes, old_segments):
        self.writer = writer
        self.segment = segment
        self.log_bytes = log_bytes
        self.old_segments = old_segments
        self.keep_key = min(s.key for s in old_segments)
        self.snapshot_path = None
        self.warnings = []


@implementer(IStorage)
class DiskStorage:
    """
    A member's persistent state in the directory ``log_dir``.

    :param log_dir: the directory, created when missing.  Files of other names
        in it are left alone.
    :param fsync: ``"always"`` (a write's Deferred fires once it is on stable
        storage) or ``"never"`` (writes reach the operating system in order but
        a power failure can lose acknowledged entries and votes; for tests and
        benchmarks only).
    :param reactor: the reactor Deferreds fire on (the global one by
        default); it must run threads' results (``IReactorThreads``), so a
        ``task.Clock`` will not do.
    :param retain: entries before a snapshot's index to keep in the new log, so
        that a slightly lagging follower can be updated without sending the
        snapshot.  With ``retain > 0``, ``first_index - 1`` may lie below the
        snapshot's index; its term is still known.

    Call :meth:`open` before anything else.

    :ivar sync_count: number of ``fsync`` calls made on log files; a test and
        benchmark aid.
    """

    log = Logger()

    def __init__(self, log_dir, fsync="always", reactor=None, retain=0):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path, not {type(log_dir).__name__}")
        if fsync not in FSYNC_POLICIES:
            raise ConfigurationError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if not isinstance(retain, int) or isinstance(retain, bool) or retain < 0:
            raise ConfigurationError(f"retain must be a non-negative integer, got {retain!r}")
        if reactor is None:
            from twisted.internet import reactor
        if not hasattr(reactor, "callFromThread"):
            # A task.Clock cannot receive results from the worker thread.
            raise TypeError(f"reactor must provide IReactorThreads (a real reactor), not {type(reactor).__name__}")
        self.log_dir = os.fspath(log_dir)
        self.fsync = fsync
        self.retain = retain
        self.sync_count = 0
        self._reactor = reactor
        self._pool = None
        self._opened = False
        self._closed = False
        self._failure = None
        self._index = None
        self._active = None
        # Every log file this storage holds descriptors of.
        self._segments = set()
        self._end = 0
        self._hard_state = HardState()
        # Snapshot in use: (meta, descriptor open for reading), set as soon as
        # the commit is issued; the descriptor stays valid across the rename.
        self._snapshot = None
        self._snapshot_issued = None
        # Entries not yet written where the index says: index -> (batch serial, entry).
        self._unwritten = {}
        self._cache = OrderedDict()
        self._cache_bytes = 0
        self._batch = _Batch(1)
        self._in_flight = None
        self._flush_call = None
        self._idle_waiters = []
        # Snapshot writers neither committed nor aborted yet.
        self._writers = set()
        self._lock = None
        # Fires (with None) when a recovery in progress has finished either way.
        self._opening = None
        # Closes the storage (flushing it) if the reactor stops first.
        self._shutdown_trigger = None

    # -- lifecycle -----------------------------------------------------------

    def open(self):
        """
        Recover the state on disk, or create a fresh log.  Recovery reads the
        logs on the worker thread.

        :returns: a Deferred that fires with this storage, or fails with
            :class:`ConfigurationError` (``log_dir`` is not a directory),
            :class:`StorageError` (it cannot be written) or :class:`CorruptLog`.
        """
        if self._opened or self._closed:
            return defer.fail(StorageError(f"{self.log_dir}: storage already opened"))
        self._opened = True
        self._opening = defer.Deferred()
        self._pool = ThreadPool(1, 1, name=f"txraft-disk:{self.log_dir}")
        self._pool.start()
        d = deferToThreadPool(self._reactor, self._pool, _recover_or_explain, self.log_dir, self.fsync == "always")

        def recovered(state):
            self._index = state.index
            self._active = state.active
            self._segments = set(state.index.segments) | {state.active}
            self._end = state.end
            self._hard_state = state.hard_state
            self._lock = state.lock
            if state.snapshot is not None:
                meta, path = state.snapshot
                self._snapshot = (meta, os.open(path, os.O_RDONLY))
                self._snapshot_issued = meta
            for fmt, fields in state.warnings:
                self.log.warn(fmt, **fields)
            if hasattr(self._reactor, "addSystemEventTrigger"):
                self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                    "before", "shutdown", self._close_at_shutdown
                )
            self.log.info(
                "Opened {log_dir}: entries {first}..{last}, term {term}",
                log_dir=self.log_dir,
                first=self.first_index,
                last=self.last_index,
                term=self._hard_state.term,
            )
            return self

        def failed(reason):
            self._closed = True
            self._pool.stop()
            return reason

        def finished(result):
            opening, self._opening = self._opening, None
            opening.callback(None)
            return result

        return d.addCallbacks(recovered, failed).addBoth(finished)

    def close(self):
        """
        Write everything issued so far, then stop the worker and close the files.

        :returns: a Deferred that fires when done.
        """
        if self._opening is not None:
            # Close once recovery is over (Deferreds wait their turn).
            waiting = defer.Deferred()
            self._opening.addCallback(lambda _: self.close().chainDeferred(waiting))
            return waiting
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        if self._index is None:
            return defer.succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._flush()
        d = defer.Deferred()
        self._idle_waiters.append(d)
        self._check_idle()

        def stop(_):
            self._pool.stop()
            for segment in self._segments:
                segment.close()
            self._set_snapshot(None)
            os.close(self._lock)
            self._lock = None
            for writer in list(self._writers):
                writer.abort()
            if self._failure is not None:
                raise StorageError(f"{self.log_dir}: closed after a write failed: {self._failure}")

        return d.addCallback(stop)

    def _close_at_shutdown(self):
        self._shutdown_trigger = None
        return self.close()

    # -- reads ---------------------------------------------------------------

    @property
    def hard_state(self):
        return self._hard_state

    @property
    def first_index(self):
        return self._index.first_index

    @property
    def last_index(self):
        return self._index.last_index

    def term_at(self, index):
        term = self._index.term_at(index)
        if term is not None:
            return term
        if index == 0:
            return 0
        if self._snapshot_issued is not None and index == self._snapshot_issued.index:
            return self._snapshot_issued.term
        return None

    def entries(self, low, high, max_bytes=None):
        if low < self.first_index:
            raise IndexError(f"entry {low} is compacted away (first index is {self.first_index})")
        high = min(high, self.last_index + 1)
        result = []
        total = 0
        fetched = {}
        for index in range(low, high):
            entry = self._held(index)
            if entry is None:
                entry = fetched.get(index)
                if entry is None:
                    # Read the run of entries from here with one pread (not cached,
                    # so a follower catching up does not evict the recent tail).
                    budget = _READ_SPAN if max_bytes is None else min(_READ_SPAN, max(0, max_bytes - total))
                    fetched = self._read_run(index, high, budget)
                    entry = fetched[index]
            total += entry.size()
            if max_bytes is not None and result and total > max_bytes:
                break
            result.append(entry)
        return result

    def _held(self, index):
        """:returns: entry ``index`` if it is in memory, else ``None``."""
        held = self._unwritten.get(index)
        if held is not None:
            return held[1]
        entry = self._cache.get(index)
        if entry is not None:
            self._cache.move_to_end(index)
        return entry

    def _entry(self, index):
        entry = self._held(index)
        if entry is None:
            entry = self._read_run(index, index + 1, 0)[index]
            self._remember(entry)
        return entry

    def _read_run(self, low, high, budget):
        """
        Read entries ``low`` (which is not in memory) and following ones not in
        memory, from one file, with one ``pread`` of about ``budget`` bytes.

        :returns: a dict from index to entry.
        :raises CorruptLog: when a record no longer reads back intact.
        """
        log = self._index
        segment, start, length = log.locate(low)
        # The run stays in one file: it ends before the next segment begins.
        k = bisect.bisect_right(log.segment_starts, low)
        if k < len(log.segment_starts):
            high = min(high, log.segment_starts[k])
        first, offsets, lengths = log.first_index, log.offsets, log.lengths
        unwritten, cache = self._unwritten, self._cache
        end = start + length
        last = low
        while last + 1 < high and end - start < budget:
            index = last + 1
            if index in unwritten or index in cache:
                break
            offset = offsets[index - first]
            # Records of later entries lie further on in the file; stop at a
            # gap too wide to read through (dead records of a truncation).
            if offset < end or offset - end > _READ_SPAN // 4:
                break
            end = offset + lengths[index - first]
            last = index
        data = os.pread(segment.rfd, end - start, start)
        fetched = {}
        for index in range(low, last + 1):
            offset, length = offsets[index - first], lengths[index - first]
            record = data[offset - start : offset - start + length]
            payload = record[_RECORD.size :]
            if len(record) != length or not _record_ok(record[:4], _RECORD.unpack_from(record)[1], payload):
                raise CorruptLog(f"{segment.path}: offset {offset}: entry {index} no longer reads back intact")
            try:
                entry = codec.decode(payload)
            except ValueError as e:
                raise CorruptLog(f"{segment.path}: offset {offset}: entry {index} does not decode: {e}")
            if not isinstance(entry, Entry) or entry.index != index:
                raise CorruptLog(f"{segment.path}: offset {offset}: record is not entry {index}")
            fetched[index] = entry
        return fetched

    def _remember(self, entry):
        if entry.index in self._cache:
            self._cache_bytes -= self._cache.pop(entry.index).size()
        self._cache[entry.index] = entry
        self._cache_bytes += entry.size()
        while self._cache and (self._cache_bytes > _CACHE_BYTES or len(self._cache) > _CACHE_ENTRIES):
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.size()

    def _forget_from(self, index):
        for stale in [i for i in self._cache if i >= index]:
            self._cache_bytes -= self._cache.pop(stale).size()

    # -- writes --------------------------------------------------------------

    def _check_writable(self):
        if self._index is None:
            raise StorageError(f"{self.log_dir}: storage is not open")
        if self._closed:
            raise StorageError(f"{self.log_dir}: storage is closed")

    def _refused(self):
        """:returns: a failed Deferred for a write refused after an earlier one failed."""
        return defer.fail(StorageError(f"{self.log_dir}: an earlier write failed: {self._failure}"))

    def _issue(self):
        """:returns: a Deferred for a write added to the current batch."""
        d = defer.Deferred()
        self._batch.waiters.append(d)
        if self._flush_call is None and self._in_flight is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def save_hard_state(self, state):
        if not isinstance(state, HardState):
            raise TypeError(f"state must be a HardState, not {type(state).__name__}")
        self._check_writable()
        if self._failure is not None:
            return self._refused()
        record = _frame(state)
        self._batch.write(self._active, self._end, record)
        self._end += len(record)
        self._hard_state = state
        return self._issue()

    def append(self, entries):
        self._check_writable()
        entries = list(entries)
        if not entries:
            raise ValueError("append() needs at least one entry")
        for entry in entries:
            if not isinstance(entry, Entry):
                raise TypeError(f"entries must be Entry values, not {type(entry).__name__}")
        first = entries[0].index
        for previous, entry in zip(entries, entries[1:]):
            if entry.index != previous.index + 1:
                raise ValueError(f"entries are not consecutive: {previous.index} then {entry.index}")
        if first > self.last_index + 1:
            raise ValueError(f"entry {first} would leave a gap after the last entry {self.last_index}")
        floor = self._snapshot_issued.index if self._snapshot_issued else 0
        if first <= max(floor, self.first_index - 1):
            raise ValueError(f"entry {first} is covered by the snapshot (index {floor})")
        if self._failure is not None:
            return self._refused()
        if first <= self.last_index:
            self._index.truncate_from(first)
            self._forget_from(first)
        serial = self._batch.serial
        for entry in entries:
            record = _frame(entry)
            self._batch.write(self._active, self._end, record)
            self._index.add(entry.index, entry.term, self._active, self._end, len(record))
            self._end += len(record)
            self._unwritten[entry.index] = (serial, entry)
            self._batch.written.append(entry.index)
        return self._issue()

    def durable(self):
        if self._batch.waiters:
            d = defer.Deferred()
            self._batch.waiters.append(d)
            return d
        if self._in_flight is not None:
            d = defer.Deferred()
            self._in_flight.waiters.append(d)
            return d
        if self._failure is not None:
            return self._refused()
        return defer.succeed(None)

    def _flush(self):
        """Hand the current batch to the worker unless it is busy (then it waits its turn)."""
        self._flush_call = None
        if self._in_flight is not None or not self._batch.waiters:
            self._check_idle()
            return
        batch, self._batch = self._batch, _Batch(self._batch.serial + 1)
        self._in_flight = batch
        d = deferToThreadPool(self._reactor, self._pool, self._run_batch, batch)
        d.addCallbacks(self._batch_done, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _run_batch(self, batch):
        """Worker thread: do a batch's writes in order, then fsync once."""
        fsync = self.fsync == "always"
        dirty = []
        for operation in batch.operations:
            if operation[0] == "write":
                _, segment, offset, chunks, _ = operation
                _write_all(segment.wfd, b"".join(chunks), offset)
                if segment not in dirty:
                    dirty.append(segment)
            else:
                for segment in dirty:
                    self._sync(segment.wfd, fsync)
                dirty = []
                self._do_switch(operation[1], fsync)
        for segment in dirty:
            self._sync(segment.wfd, fsync)

    def _sync(self, fd, fsync):
        if fsync:
            os.fsync(fd)
            self.sync_count += 1

    def _batch_done(self, _, batch):
        self._in_flight = None
        for switch in batch.switches:
            self._switch_done(switch)
        for index in batch.written:
            held = self._unwritten.get(index)
            if held is not None and held[0] == batch.serial:
                del self._unwritten[index]
                self._remember(held[1])
        for d in batch.waiters:
            d.callback(None)
        self._flush()

    def _batch_failed(self, reason, batch):
        self._in_flight = None
        self._failure = reason.value
        self.log.failure("Writing to {log_dir} failed; the storage refuses further writes", reason, log_dir=self.log_dir)
        error = StorageError(f"{self.log_dir}: write failed: {reason.value}")
        pending, self._batch = self._batch.waiters, _Batch(self._batch.serial + 1)
        for switch in batch.switches:
            switch.writer._discard()
        for d in batch.waiters + pending:
            d.errback(error)
        self._check_idle()

    def _check_idle(self):
        if self._in_flight is None and not self._batch.waiters and self._flush_call is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    # -- snapshots -----------------------------------------------------------

    def snapshot_writer(self, meta):
        self._check_writable()
        if not isinstance(meta, SnapshotMeta):
            raise TypeError(f"meta must be a SnapshotMeta, not {type(meta).__name__}")
        writer = _SnapshotWriter(self, meta)
        self._writers.add(writer)
        return writer

    def open_snapshot(self):
        if self._snapshot is None:
            return None
        meta, fd = self._snapshot
        return _SnapshotSource(meta, os.dup(fd))

    def _set_snapshot(self, snapshot):
        if self._snapshot is not None:
            os.close(self._snapshot[1])
        self._snapshot = snapshot

    def _commit_snapshot(self, writer):
        """Reactor side of a snapshot commit: decide the new log and switch the index to it now."""
        meta = writer.meta
        if self._failure is not None:
            raise StorageError(f"{self.log_dir}: an earlier write failed: {self._failure}")
        current = self._snapshot_issued.index if self._snapshot_issued else 0
        if meta.index <= current:
            raise StorageError(f"snapshot of entry {meta.index} is not newer than the current one ({current})")
        index = self._index
        if index.term_at(meta.index) == meta.term and meta.index <= index.last_index:
            keep_from = max(index.first_index, meta.index + 1 - self.retain)
            base = (keep_from - 1, index.term_at(keep_from - 1))
            kept = [self._entry(i) for i in range(keep_from, index.last_index + 1)]
        else:
            # The log disagrees with the snapshot: the snapshot replaces it (section 7).
            base = (meta.index, meta.term)
            kept = []
        data, positions = _new_log_bytes(base[0], base[1], self._hard_state, kept)
        segment = _Segment(os.path.join(self.log_dir, log_name(meta.term, meta.index)), (meta.index, meta.term))
        new_index = _LogIndex(*base)
        serial = self._batch.serial
        self._unwritten = {}
        for entry, (offset, length) in zip(kept, positions):
            new_index.add(entry.index, entry.term, segment, offset, length)
            self._unwritten[entry.index] = (serial, entry)
            self._batch.written.append(entry.index)
        # Every kept entry is held in memory until the new log is written.
        self._cache.clear()
        self._cache_bytes = 0
        old_segments = list(dict.fromkeys(index.segments + [self._active]))
        switch = _Switch(writer, segment, data, old_segments)
        self._batch.operations.append(["switch", switch])
        self._batch.switches.append(switch)
        self._index = new_index
        self._active = segment
        self._segments.add(segment)
        self._end = len(data)
        self._snapshot_issued = meta
        self._set_snapshot((meta, os.dup(writer.fd)))
        return self._issue()

    def _do_switch(self, switch, fsync):
        """Worker thread: install the snapshot, then its log, then remove stale files."""
        writer = switch.writer
        meta = writer.meta
        _finish_snapshot_header(writer.fd, meta)
        if fsync:
            os.fsync(writer.fd)
        os.close(writer.fd)
        writer.fd = None
        switch.snapshot_path = os.path.join(self.log_dir, snapshot_name(meta.term, meta.index))
        os.replace(writer.path, switch.snapshot_path)
        if fsync:
            _fsync_directory(self.log_dir)
        segment = switch.segment
        _install_file(self.log_dir, os.path.basename(segment.path), switch.log_bytes, fsync)
        segment.wfd = os.open(segment.path, os.O_WRONLY)
        segment.rfd = os.open(segment.path, os.O_RDONLY)
        for old in switch.old_segments:
            if old.wfd is not None:
                os.close(old.wfd)
                old.wfd = None
        # Keep the previous generation as a fallback; older ones are stale.
        try:
            logs, snapshots, _ = _list_files(self.log_dir)
            for files in (snapshots, logs):
                for key, path in files.items():
                    if key < switch.keep_key:
                        os.remove(path)
        except OSError as e:
            switch.warnings.append(("Could not remove stale files in {log_dir}: {error}", dict(log_dir=self.log_dir, error=str(e))))

    def _switch_done(self, switch):
        for old in switch.old_segments:
            if old is not self._active and old not in self._index.segments:
                old.close()
                self._segments.discard(old)
        for fmt, fields in switch.warnings:
            self.log.warn(fmt, **fields)
        self.log.info(
            "Installed snapshot {file}", file=switch.snapshot_path, index=switch.writer.meta.index, term=switch.writer.meta.term
        )


@implementer(ISnapshotWriter)
class _SnapshotWriter:
    """
    A snapshot being written to a temporary file in the log directory.

    :ivar fileobj: buffered file positioned at the start of the application's
        data (the header txraft writes at commit is not visible through it).
    """

    def __init__(self, storage, meta):
        self._storage = storage
        self.meta = meta
        self.path = None
        self.fileobj = None
        fd, self.path = _mkstemp(storage.log_dir, _stem(meta.term, meta.index) + ".snap.")
        self.fd = fd
        try:
            _write_all(fd, b"\0" * _SNAPSHOT_HEADER_SIZE, 0)
        except OSError as e:
            self._discard()
            raise StorageError(f"{self.path}: {e.strerror or e}") from e
        self._window = _Window(fd, _SNAPSHOT_HEADER_SIZE, writable=True)
        self.fileobj = io.BufferedWriter(self._window)
        self._done = False

    def commit(self):
        if self._done:
            return defer.fail(StorageError("snapshot already committed or aborted"))
        self._done = True
        self._storage._writers.discard(self)
        try:
            if not self.fileobj.closed:
                self.fileobj.flush()
            # From here on the descriptor belongs to the worker.
            self._window.detach_descriptor()
            self._storage._check_writable()
            return self._storage._commit_snapshot(self)
        except Exception:
            self._discard()
            return defer.fail()

    def abort(self):
        if not self._done:
            self._done = True
            self._discard()

    def _discard(self):
        self._storage._writers.discard(self)
        if self.fileobj is not None:
            self._window.detach_descriptor()
            try:
                self.fileobj.close()
            except ValueError:
                pass  # unwritten buffered data of a discarded snapshot
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path is not None:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def _mkstemp(directory, prefix):
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except OSError as e:
        raise StorageError(f"cannot create a snapshot file in {directory!r}: {e.strerror or e}") from e


@implementer(ISnapshotSource)
class _SnapshotSource:
    """The snapshot file, open for reading (it stays readable even if a newer one replaces it)."""

    def __init__(self, meta, fd):
        self.meta = meta
        self._fd = fd
        self.size = max(0, os.fstat(self._fd).st_size - _SNAPSHOT_HEADER_SIZE)

    def read(self, offset, length):
        if offset >= self.size or length <= 0:
            return b""
        return os.pread(self._fd, min(length, self.size - offset), _SNAPSHOT_HEADER_SIZE + offset)

    def open(self):
        fd = os.dup(self._fd)
        return io.BufferedReader(_Window(fd, _SNAPSHOT_HEADER_SIZE, writable=False, limit=self.size, owns_fd=True))

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
