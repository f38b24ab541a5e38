"""
:class:`MemoryStorage`: an :class:`~txraft.interfaces.IStorage` kept in memory.

It models durability: writes are visible at once but become durable only when
a simulated fsync runs (``fsync_delay`` seconds later on the given clock, all
writes of one reactor turn sharing it, as the disk store's group commit does).
:meth:`MemoryStorage.crash` returns what a member would find after losing
power: only the durable writes.  The simulator in :mod:`txraft.testing` uses
this to crash members mid-write.
"""

from __future__ import annotations

import io
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from txraft.errors import StorageClosed, StorageError
from txraft.interfaces import ISnapshotSource, ISnapshotWriter, IStorage
from txraft.messages import HardState, SnapshotMeta


class _State:
    """The log, hard state and snapshot; the operations every write applies."""

    def __init__(self):
        self.hard_state = HardState()
        self.snapshot = SnapshotMeta(0, 0)
        self.snapshot_data = b""
        # entries[i] has index snapshot.index + 1 + i
        self.entries = []

    def copy(self):
        other = _State()
        other.hard_state = self.hard_state
        other.snapshot = self.snapshot
        other.snapshot_data = self.snapshot_data
        other.entries = list(self.entries)
        return other

    def term_at(self, index):
        if index == 0:
            return 0
        if index == self.snapshot.index:
            return self.snapshot.term
        offset = index - self.snapshot.index - 1
        if 0 <= offset < len(self.entries):
            return self.entries[offset].term
        return None

    def apply(self, op):
        kind = op[0]
        if kind == "hard_state":
            self.hard_state = op[1]
        elif kind == "append":
            entries = op[1]
            offset = entries[0].index - self.snapshot.index - 1
            del self.entries[offset:]
            self.entries.extend(entries)
        elif kind == "snapshot":
            meta, data = op[1], op[2]
            if self.term_at(meta.index) == meta.term:
                keep = self.entries[meta.index - self.snapshot.index :]
            else:
                keep = []
            self.snapshot, self.snapshot_data, self.entries = meta, data, keep


@implementer(IStorage)
class MemoryStorage:
    """
    In-memory storage.

    :param clock: an ``IReactorTime``; when given, writes become durable
        ``fsync_delay`` seconds after the turn that issued them.  Without a
        clock, writes are durable at once.
    :param float fsync_delay: simulated fsync latency in seconds.
    """

    def __init__(self, clock: Optional[IReactorTime] = None, fsync_delay: float = 0.0) -> None:
        self._clock = clock
        self._fsync_delay = fsync_delay
        self._visible = _State()
        self._durable = _State()
        self._pending: List[Tuple[Any, defer.Deferred[Any]]] = []  # (op, deferred) not yet durable
        self._flush_call: Optional[IDelayedCall] = None
        self.fsyncs = 0
        #: Counts writes; lets observers skip re-reading an unchanged log.
        self.version = 0
        self.closed = False
        self._opened = False

    # -- lifecycle -------------------------------------------------------

    def open(self):
        """
        :class:`~txraft.interfaces.IStorage`: there is nothing to recover, so
        this only marks the storage opened (it is usable without it).

        :returns: a Deferred firing with this storage; failing with
            :class:`~txraft.errors.StorageClosed` after :meth:`close` or
            :meth:`crash`, or :class:`~txraft.errors.StorageError` when
            already opened.
        """
        if self.closed:
            return defer.fail(StorageClosed("storage is closed"))
        if self._opened:
            return defer.fail(StorageError("storage already opened"))
        self._opened = True
        return defer.succeed(self)

    def _check_writable(self):
        if self.closed:
            raise StorageClosed("storage is closed")

    # -- reads -----------------------------------------------------------

    @property
    def hard_state(self):
        return self._visible.hard_state

    @property
    def first_index(self):
        return self._visible.snapshot.index + 1

    @property
    def last_index(self):
        return self._visible.snapshot.index + len(self._visible.entries)

    def term_at(self, index):
        return self._visible.term_at(index)

    def entries(self, low, high, max_bytes=None):
        state = self._visible
        if low <= state.snapshot.index:
            raise IndexError(f"entry {low} is compacted into the snapshot at {state.snapshot.index}")
        base = state.snapshot.index + 1
        chosen = state.entries[low - base : max(high - base, 0)]
        if max_bytes is None:
            return list(chosen)
        out, total = [], 0
        for entry in chosen:
            total += entry.size()
            if out and total > max_bytes:
                break
            out.append(entry)
        return out

    # -- writes ----------------------------------------------------------

    def _write(self, op):
        self._check_writable()
        self._visible.apply(op)
        self.version += 1
        d = defer.Deferred()
        self._pending.append((op, d))
        self._schedule_flush()
        return d

    def _schedule_flush(self):
        if self._clock is None:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(self._fsync_delay, self._flush)

    def _flush(self):
        self._flush_call = None
        pending, self._pending = self._pending, []
        if pending:
            self.fsyncs += 1
        for op, _ in pending:
            self._durable.apply(op)
        for _, d in pending:
            d.callback(None)

    def save_hard_state(self, state):
        return self._write(("hard_state", state))

    def append(self, entries):
        self._check_writable()
        entries = list(entries)
        if not entries:
            raise ValueError("append() needs at least one entry")
        first = entries[0].index
        if first > self.last_index + 1 or first <= self._visible.snapshot.index:
            raise ValueError(
                f"entries starting at {first} do not fit a log holding "
                f"{self.first_index}..{self.last_index}"
            )
        for before, after in zip(entries, entries[1:]):
            if after.index != before.index + 1:
                raise ValueError(f"entries are not consecutive at {before.index}, {after.index}")
        return self._write(("append", entries))

    def durable(self):
        if not self._pending:
            return defer.succeed(None)
        return self._write(("noop",))

    def snapshot_writer(self, meta):
        self._check_writable()
        return _SnapshotWriter(self, meta)

    def open_snapshot(self):
        state = self._visible
        if state.snapshot.index == 0 and not state.snapshot_data:
            return None
        return _SnapshotSource(state.snapshot, state.snapshot_data)

    def close(self):
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush()
        self.closed = True
        return defer.succeed(None)

    # -- simulation ------------------------------------------------------

    def crash(self) -> MemoryStorage:
        """
        Lose power: cancel the pending fsync, forget every write that was not
        durable, and return a new storage holding only the durable state.
        This storage is unusable afterwards.
        """
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        self.closed = True
        survivor = MemoryStorage(self._clock, self._fsync_delay)
        survivor._visible = self._durable.copy()
        survivor._durable = self._durable.copy()
        return survivor


@implementer(ISnapshotWriter)
class _SnapshotWriter:
    def __init__(self, storage, meta):
        self._storage = storage
        self.meta = meta
        self.fileobj = io.BytesIO()

    def commit(self):
        return self._storage._write(("snapshot", self.meta, self.fileobj.getvalue()))

    def abort(self):
        self.fileobj = io.BytesIO()


@implementer(ISnapshotSource)
class _SnapshotSource:
    def __init__(self, meta, data):
        self.meta = meta
        self._data = data
        self.size = len(data)

    def read(self, offset, length):
        return self._data[offset : offset + length]

    def open(self):
        return io.BytesIO(self._data)

    def close(self):
        pass
