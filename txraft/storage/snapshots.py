"""
Snapshot files: their header, and the writer and source the Raft core uses.

A snapshot file is a 64-byte header (:data:`SNAPSHOT_MAGIC`, term, index, the
length and ``zlib.crc32`` of the body, and the header's own checksum) followed
by the application's bytes; ``docs/on-disk-format.md`` has the layout.  The
application never sees the header: :class:`SnapshotWriter` and
:class:`SnapshotSource` show only the bytes after it.  Use it like this::

    writer = SnapshotWriter(directory, meta, commit=storage_commit, forget=writers.discard)
    writer.fileobj.write(b"application state")
    d = writer.commit()        # storage_commit(writer) installs it

    # later, on the worker thread, before the file is renamed into place:
    finish_snapshot_header(writer.fd, writer.meta)

    fd = os.open(path, os.O_RDONLY)
    meta, size = read_snapshot_header(fd, path)     # raises CorruptLog if damaged
    source = SnapshotSource(meta, fd)
    source.open().read()       # b"application state"
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib

from twisted.internet import defer
from zope.interface import implementer

from txraft.errors import CorruptLog, StorageError
from txraft.interfaces import ISnapshotSource, ISnapshotWriter
from txraft.messages import SnapshotMeta
from txraft.storage.files import stem, write_all

__all__ = [
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_HEADER_SIZE",
    "read_snapshot_header",
    "finish_snapshot_header",
    "SnapshotWriter",
    "SnapshotSource",
]

#: The first bytes of every snapshot file (format version 1).
SNAPSHOT_MAGIC = b"TXRSNP01"

# Snapshot header: magic, term, index, body length, body crc32, header crc32,
# padded to SNAPSHOT_HEADER_SIZE bytes; the application's bytes follow it.
_SNAPSHOT_HEADER = struct.Struct(">8sQQQI")
#: Bytes before the application's data in a snapshot file.
SNAPSHOT_HEADER_SIZE = 64


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


def _body_crc(fd):
    """:returns: ``(crc, end)``: the ``zlib.crc32`` of a snapshot's body, and the offset after it."""
    crc = 0
    offset = SNAPSHOT_HEADER_SIZE
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return crc, offset


def read_snapshot_header(fd, path):
    """
    Check a snapshot file completely.

    :returns: ``(meta, size)`` of a snapshot whose header and body checksums match.
    :raises CorruptLog: naming the file and the offset of the damage.
    """
    header = os.pread(fd, SNAPSHOT_HEADER_SIZE, 0)
    fixed = _SNAPSHOT_HEADER.size
    if len(header) < SNAPSHOT_HEADER_SIZE or header[:8] != SNAPSHOT_MAGIC:
        raise CorruptLog(f"{path}: offset 0: not a txraft snapshot header")
    (header_crc,) = struct.unpack_from(">I", header, fixed)
    if zlib.crc32(header[:fixed]) != header_crc:
        raise CorruptLog(f"{path}: offset 0: snapshot header checksum mismatch")
    _, term, index, length, body_crc = _SNAPSHOT_HEADER.unpack_from(header)
    actual = os.fstat(fd).st_size - SNAPSHOT_HEADER_SIZE
    if actual != length:
        raise CorruptLog(
            f"{path}: offset {SNAPSHOT_HEADER_SIZE + min(actual, length)}: "
            f"snapshot body has {actual} bytes, header says {length}"
        )
    crc, _ = _body_crc(fd)
    if crc != body_crc:
        raise CorruptLog(f"{path}: offset {SNAPSHOT_HEADER_SIZE}: snapshot body checksum mismatch")
    return SnapshotMeta(index=index, term=term), length


def finish_snapshot_header(fd, meta):
    """Compute the body checksum of a snapshot being written and write its header."""
    crc, end = _body_crc(fd)
    fixed = _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, meta.term, meta.index, end - SNAPSHOT_HEADER_SIZE, crc)
    header = fixed + struct.pack(">I", zlib.crc32(fixed))
    write_all(fd, header.ljust(SNAPSHOT_HEADER_SIZE, b"\0"), 0)


@implementer(ISnapshotWriter)
class SnapshotWriter:
    """
    A snapshot being written to a temporary file in the log directory.

    :param directory: the log directory the temporary file is made in.
    :param meta: the :class:`~txraft.messages.SnapshotMeta` of the snapshot.
    :param commit: called with this writer by :meth:`commit`, once the data is
        flushed and the descriptor ``fd`` handed over; returns the Deferred of
        the commit, or raises to refuse it (the file is then discarded).
    :param forget: called with this writer once it is committed or discarded.

    :ivar fileobj: buffered file positioned at the start of the application's
        data (the header txraft writes at commit is not visible through it).
    :ivar fd: the temporary file's descriptor (``None`` once closed).
    :ivar path: the temporary file's path.
    """

    def __init__(self, directory, meta, commit, forget):
        self._commit = commit
        self._forget = forget
        self.meta = meta
        self.path = None
        self.fileobj = None
        fd, self.path = _mkstemp(directory, stem(meta.term, meta.index) + ".snap.")
        self.fd = fd
        try:
            write_all(fd, b"\0" * SNAPSHOT_HEADER_SIZE, 0)
        except OSError as e:
            self.discard()
            raise StorageError(f"{self.path}: {e.strerror or e}") from e
        self._window = _Window(fd, SNAPSHOT_HEADER_SIZE, writable=True)
        self.fileobj = io.BufferedWriter(self._window)
        self._done = False

    def commit(self):
        if self._done:
            return defer.fail(StorageError("snapshot already committed or aborted"))
        self._done = True
        self._forget(self)
        try:
            if not self.fileobj.closed:
                self.fileobj.flush()
            # From here on the descriptor belongs to the worker.
            self._window.detach_descriptor()
            return self._commit(self)
        except Exception:
            self.discard()
            return defer.fail()

    def abort(self):
        if not self._done:
            self._done = True
            self.discard()

    def discard(self):
        """Close and remove the temporary file, whether committed or not (a failed commit)."""
        self._forget(self)
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
class SnapshotSource:
    """The snapshot file, open for reading (it stays readable even if a newer one replaces it)."""

    def __init__(self, meta, fd):
        self.meta = meta
        self._fd = fd
        self.size = max(0, os.fstat(self._fd).st_size - SNAPSHOT_HEADER_SIZE)

    def read(self, offset, length):
        if offset >= self.size or length <= 0:
            return b""
        return os.pread(self._fd, min(length, self.size - offset), SNAPSHOT_HEADER_SIZE + offset)

    def open(self):
        fd = os.dup(self._fd)
        return io.BufferedReader(_Window(fd, SNAPSHOT_HEADER_SIZE, writable=False, limit=self.size, owns_fd=True))

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
