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

This module wires the parts, each in a module of its own:

- :mod:`txraft.storage.records` -- record framing and checksums of log files;
- :mod:`txraft.storage.files` -- file names, listing, atomic install, the lock;
- :mod:`txraft.storage.segments` -- log files and the index of where entries lie;
- :mod:`txraft.storage.snapshots` -- snapshot files, their writer and source;
- :mod:`txraft.storage.recovery` -- what :meth:`DiskStorage.open` keeps of a directory;
- :mod:`txraft.storage.worker` -- the ordered writer thread with group commit.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txraft import codec
from txraft.config import FSYNC_POLICIES
from txraft.errors import ConfigurationError, CorruptLog, StorageClosed, StorageError
from txraft.interfaces import IStorage
from txraft.messages import Entry, HardState, SnapshotMeta
from txraft.storage.files import fsync_directory, list_files, log_name, snapshot_name
from txraft.storage.files import install_file as _install_file
from txraft.storage.records import LOG_MAGIC, RECORD, frame, new_log_bytes, record_ok
from txraft.storage.recovery import recover_or_explain
from txraft.storage.segments import LogIndex, Segment
from txraft.storage.snapshots import (
    SNAPSHOT_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    SnapshotSource,
    SnapshotWriter,
    finish_snapshot_header,
)
from txraft.storage.worker import OrderedWriter

__all__ = ["DiskStorage", "log_name", "snapshot_name", "LOG_MAGIC", "SNAPSHOT_MAGIC"]

# Names the tests reach for under their former private spelling.
_RECORD = RECORD
_frame = frame
_SNAPSHOT_HEADER_SIZE = SNAPSHOT_HEADER_SIZE

# Bytes read from a log file with one pread when a range of entries is read.
_READ_SPAN = 1 << 20

# Bound on the cache of recently read or written entries.
_CACHE_BYTES = 8 * 1024 * 1024
_CACHE_ENTRIES = 4096


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
    :ivar fsync_observers: a list of callables, each given the seconds one
        ``fsync`` of a log file took, on the reactor thread once the writes it
        made durable are done.  :class:`txraft.metrics.MemberMetrics` adds
        one (the storage knows nothing of metrics).
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
        self._reactor = reactor
        self._writer = OrderedWriter(
            reactor,
            self.log_dir,
            fsync == "always",
            switch=self._do_switch,
            done=self._batch_done,
            failed=self._batch_failed,
        )
        self._opened = False
        self._closed = False
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
        if self._closed:
            return defer.fail(StorageClosed(f"{self.log_dir}: storage is closed"))
        if self._opened:
            return defer.fail(StorageError(f"{self.log_dir}: storage already opened"))
        self._opened = True
        self._opening = defer.Deferred()
        self._writer.start()
        d = self._writer.run(recover_or_explain, self.log_dir, self.fsync == "always")

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
            self._writer.stop()
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
        d = self._writer.drain()

        def stop(_):
            self._writer.stop()
            for segment in self._segments:
                segment.close()
            self._set_snapshot(None)
            os.close(self._lock)
            self._lock = None
            for writer in list(self._writers):
                writer.abort()
            if self._writer.failure is not None:
                raise StorageError(f"{self.log_dir}: closed after a write failed: {self._writer.failure}")

        return d.addCallback(stop)

    def _close_at_shutdown(self):
        self._shutdown_trigger = None
        return self.close()

    # -- reads ---------------------------------------------------------------

    @property
    def sync_count(self):
        return self._writer.sync_count

    @property
    def fsync_observers(self):
        return self._writer.fsync_observers

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
            payload = record[RECORD.size :]
            if len(record) != length or not record_ok(record[:4], RECORD.unpack_from(record)[1], payload):
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
        if self._closed:
            raise StorageClosed(f"{self.log_dir}: storage is closed")
        if self._index is None:
            raise StorageError(f"{self.log_dir}: storage is not open")

    def _refused(self):
        """:returns: a failed Deferred for a write refused after an earlier one failed."""
        return defer.fail(self._writer.refusal())

    def save_hard_state(self, state):
        if not isinstance(state, HardState):
            raise TypeError(f"state must be a HardState, not {type(state).__name__}")
        self._check_writable()
        if self._writer.failure is not None:
            return self._refused()
        record = frame(state)
        self._writer.batch.write(self._active, self._end, record)
        self._end += len(record)
        self._hard_state = state
        return self._writer.issue()

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
        if self._writer.failure is not None:
            return self._refused()
        if first <= self.last_index:
            self._index.truncate_from(first)
            self._forget_from(first)
        batch = self._writer.batch
        for entry in entries:
            record = frame(entry)
            batch.write(self._active, self._end, record)
            self._index.add(entry.index, entry.term, self._active, self._end, len(record))
            self._end += len(record)
            self._unwritten[entry.index] = (batch.serial, entry)
            batch.written.append(entry.index)
        return self._writer.issue()

    def durable(self):
        return self._writer.durable()

    def _batch_done(self, batch):
        """Reactor thread: a batch is durable, so its entries need no longer be held in memory."""
        for switch in batch.switches:
            self._switch_done(switch)
        for index in batch.written:
            held = self._unwritten.get(index)
            if held is not None and held[0] == batch.serial:
                del self._unwritten[index]
                self._remember(held[1])

    def _batch_failed(self, batch, reason):
        self.log.failure("Writing to {log_dir} failed; the storage refuses further writes", reason, log_dir=self.log_dir)
        for switch in batch.switches:
            switch.writer.discard()

    # -- snapshots -----------------------------------------------------------

    def snapshot_writer(self, meta):
        self._check_writable()
        if not isinstance(meta, SnapshotMeta):
            raise TypeError(f"meta must be a SnapshotMeta, not {type(meta).__name__}")
        writer = SnapshotWriter(self.log_dir, meta, commit=self._commit_snapshot, forget=self._writers.discard)
        self._writers.add(writer)
        return writer

    def open_snapshot(self):
        if self._snapshot is None:
            return None
        meta, fd = self._snapshot
        return SnapshotSource(meta, os.dup(fd))

    def _set_snapshot(self, snapshot):
        if self._snapshot is not None:
            os.close(self._snapshot[1])
        self._snapshot = snapshot

    def _commit_snapshot(self, writer):
        """Reactor side of a snapshot commit: decide the new log and switch the index to it now."""
        self._check_writable()
        meta = writer.meta
        if self._writer.failure is not None:
            raise self._writer.refusal()
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
        data, positions = new_log_bytes(base[0], base[1], self._hard_state, kept)
        segment = Segment(os.path.join(self.log_dir, log_name(meta.term, meta.index)), (meta.index, meta.term))
        new_index = LogIndex(*base)
        batch = self._writer.batch
        self._unwritten = {}
        for entry, (offset, length) in zip(kept, positions):
            new_index.add(entry.index, entry.term, segment, offset, length)
            self._unwritten[entry.index] = (batch.serial, entry)
            batch.written.append(entry.index)
        # Every kept entry is held in memory until the new log is written.
        self._cache.clear()
        self._cache_bytes = 0
        old_segments = list(dict.fromkeys(index.segments + [self._active]))
        batch.switch(_Switch(writer, segment, data, old_segments))
        self._index = new_index
        self._active = segment
        self._segments.add(segment)
        self._end = len(data)
        self._snapshot_issued = meta
        self._set_snapshot((meta, os.dup(writer.fd)))
        return self._writer.issue()

    def _do_switch(self, switch, fsync):
        """Worker thread: install the snapshot, then its log, then remove stale files."""
        writer = switch.writer
        meta = writer.meta
        finish_snapshot_header(writer.fd, meta)
        if fsync:
            os.fsync(writer.fd)
        os.close(writer.fd)
        writer.fd = None
        switch.snapshot_path = os.path.join(self.log_dir, snapshot_name(meta.term, meta.index))
        os.replace(writer.path, switch.snapshot_path)
        if fsync:
            fsync_directory(self.log_dir)
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
            logs, snapshots, _ = list_files(self.log_dir)
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
