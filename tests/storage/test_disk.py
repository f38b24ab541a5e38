"""
Tests for :class:`txraft.storage.disk.DiskStorage`: the layout on disk,
persistence across reopening, group commit, snapshots and crash recovery.

Every test runs on the real reactor and real files; none sleeps.  Shared
helpers are in ``helpers.py`` and the fixtures in ``conftest.py``.
"""

import os
import shutil
import sys
import threading
import tracemalloc

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from zope.interface.verify import verifyObject

from txraft import codec
from txraft.errors import ConfigurationError, CorruptLog, StorageError
from txraft.interfaces import ISnapshotSource, ISnapshotWriter, IStorage
from txraft.messages import Entry, HardState, SnapshotMeta
from txraft.storage import disk
from txraft.storage.disk import DiskStorage, log_name, snapshot_name
from tests.storage.helpers import TEST_TIMEOUT, deferred_test, entry, turn  # noqa: F401

FIRST_LOG = "00000000000000000000.00000000000000000000.log"


class Events:
    """Collects the log events of one storage."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def warnings(self):
        return [e for e in self.events if e["log_level"].name == "warn"]


def files(directory):
    return sorted(os.listdir(directory))


def write_snapshot(storage, meta, data):
    writer = storage.snapshot_writer(meta)
    writer.fileobj.write(data)
    return writer.commit()


def read_snapshot(storage):
    source = storage.open_snapshot()
    try:
        return source.meta, source.open().read()
    finally:
        source.close()


class TestInterfaces:
    @deferred_test
    def test_provides_interfaces(self, storages, log_dir):
        storage = yield storages(log_dir)
        assert verifyObject(IStorage, storage)
        writer = storage.snapshot_writer(SnapshotMeta(0, 0))
        assert verifyObject(ISnapshotWriter, writer)
        writer.abort()
        yield storage.append([entry(1, 1)])
        yield write_snapshot(storage, SnapshotMeta(1, 1), b"state")
        source = storage.open_snapshot()
        try:
            assert verifyObject(ISnapshotSource, source)
        finally:
            source.close()

    def test_bad_arguments_fail_at_call_time(self, log_dir):
        with pytest.raises(TypeError, match="int"):
            DiskStorage(42)
        with pytest.raises(ConfigurationError, match="fsync"):
            DiskStorage(log_dir, fsync="sometimes")
        with pytest.raises(ConfigurationError, match="retain"):
            DiskStorage(log_dir, retain=-1)
        with pytest.raises(TypeError, match="Clock"):
            DiskStorage(log_dir, reactor=task.Clock())
        assert not os.path.exists(log_dir)


class TestCreation:
    """A fresh member creates its directory and first log, which outlives it (seed TestCreation)."""

    @deferred_test
    def test_fresh_log_exists_and_is_not_empty(self, log_dir):
        storage = DiskStorage(log_dir, reactor=reactor)
        yield storage.open()
        path = os.path.join(log_dir, FIRST_LOG)
        try:
            assert files(log_dir) == [FIRST_LOG]
            assert os.path.getsize(path) > 0
        finally:
            yield storage.close()
        assert os.path.getsize(path) > 0

    @deferred_test
    def test_fresh_state(self, storages, log_dir):
        storage = yield storages(log_dir)
        assert storage.hard_state == HardState()
        assert (storage.first_index, storage.last_index) == (1, 0)
        assert storage.term_at(0) == 0
        assert storage.term_at(1) is None
        assert storage.entries(1, 10) == []
        assert storage.open_snapshot() is None

    @deferred_test
    def test_close_during_open_waits_for_recovery(self, log_dir):
        storage = DiskStorage(log_dir, reactor=reactor)
        opened = storage.open()
        closed = storage.close()
        yield opened
        yield closed
        with pytest.raises(StorageError, match="closed"):
            storage.append([entry(1, 1)])
        assert files(log_dir) == [FIRST_LOG]

    @deferred_test
    def test_nested_directory_is_created(self, storages, tmp_path):
        nested = str(tmp_path / "a" / "b" / "member")
        yield storages(nested)
        assert files(nested) == [FIRST_LOG]


class TestPersistence:
    """Term, vote and entries survive reopening; so does a truncation (seed TestPersistence)."""

    @deferred_test
    def test_reopen_and_truncate(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.save_hard_state(HardState(2, "whocares"))
        first = [entry(2, 1), entry(2, 2), entry(2, 3)]
        second = [entry(3, 4), entry(3, 5), entry(3, 6)]
        yield storage.append(first)
        yield storage.append(second)
        yield storage.close()

        storage = yield storages(log_dir)
        assert storage.hard_state == HardState(2, "whocares")
        assert (storage.first_index, storage.last_index) == (1, 6)
        assert storage.entries(1, 7) == first + second
        assert [storage.term_at(i) for i in range(7)] == [0, 2, 2, 2, 3, 3, 3]

        # Rewriting index 4 drops everything after it.
        replacement = entry(4, 4, b"cmd7")
        yield storage.append([replacement])
        expected = first + [replacement]
        assert storage.entries(1, 10) == expected
        assert storage.last_index == 4
        yield storage.close()

        storage = yield storages(log_dir)
        assert storage.entries(1, 10) == expected
        assert storage.last_index == 4
        assert storage.term_at(5) is None
        assert storage.hard_state == HardState(2, "whocares")

    @deferred_test
    def test_latest_hard_state_wins(self, storages, log_dir):
        storage = yield storages(log_dir)
        storage.save_hard_state(HardState(1, "a"))
        storage.save_hard_state(HardState(2, ""))
        yield storage.save_hard_state(HardState(2, "b"))
        yield storage.close()
        storage = yield storages(log_dir)
        assert storage.hard_state == HardState(2, "b")

    @deferred_test
    def test_truncation_then_regrowth_across_reopens(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 11)])
        yield storage.append([entry(2, i) for i in range(3, 6)])
        yield storage.append([entry(2, 6), entry(2, 7)])
        yield storage.close()
        storage = yield storages(log_dir)
        assert [e.term for e in storage.entries(1, 100)] == [1, 1, 2, 2, 2, 2, 2]
        assert storage.last_index == 7

    @deferred_test
    def test_all_entry_fields_round_trip(self, storages, log_dir):
        from txraft.messages import EntryKind, RequestId

        value = Entry(5, 1, EntryKind.NOOP, b"\x00\xff" * 100, RequestId("session", 7, 3))
        storage = yield storages(log_dir)
        yield storage.append([value])
        yield storage.close()
        storage = yield storages(log_dir)
        assert storage.entries(1, 2) == [value]

    @deferred_test
    def test_invalid_appends_are_refused(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, 1)])
        with pytest.raises(ValueError, match="gap"):
            storage.append([entry(1, 3)])
        with pytest.raises(ValueError, match="consecutive"):
            storage.append([entry(1, 2), entry(1, 4)])
        with pytest.raises(ValueError):
            storage.append([])
        assert storage.last_index == 1

    @deferred_test
    def test_entries_bounds(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i, b"x" * 100) for i in range(1, 11)])
        assert [e.index for e in storage.entries(3, 6)] == [3, 4, 5]
        assert [e.index for e in storage.entries(9, 100)] == [9, 10]
        # At least one entry, however small the budget.
        assert [e.index for e in storage.entries(1, 11, max_bytes=1)] == [1]
        size = entry(1, 1, b"x" * 100).size()
        assert [e.index for e in storage.entries(1, 11, max_bytes=3 * size)] == [1, 2, 3]
        assert [e.index for e in storage.entries(1, 11, max_bytes=4 * size - 1)] == [1, 2, 3]
        with pytest.raises(IndexError):
            storage.entries(0, 3)


class TestGroupCommit:
    """Writes of one reactor turn share one fsync, done off the reactor thread."""

    @pytest.fixture
    def fsyncs(self, monkeypatch):
        calls = []
        real = os.fsync

        def counting_fsync(fd):
            calls.append(threading.current_thread())
            return real(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        return calls

    @deferred_test
    def test_one_turn_is_one_fsync(self, storages, log_dir, fsyncs):
        storage = yield storages(log_dir)
        before, count = len(fsyncs), storage.sync_count
        pending = [storage.append([entry(1, i)]) for i in range(1, 101)]
        pending.append(storage.save_hard_state(HardState(1, "me")))
        yield defer.gatherResults(pending)
        assert len(fsyncs) - before == 1
        assert storage.sync_count - count == 1

    @deferred_test
    def test_fsync_observers_see_each_fsync_on_the_reactor_thread_and_cannot_block_writes(
            self, storages, log_dir, fsyncs):
        storage = yield storages(log_dir)
        seen = []

        def observe(seconds):
            seen.append((seconds, threading.current_thread()))

        def broken(seconds):
            raise RuntimeError("a faulty metrics hook")

        storage.fsync_observers.extend([broken, observe])
        count = storage.sync_count
        yield defer.gatherResults([storage.append([entry(1, i)]) for i in range(1, 11)])
        yield storage.append([entry(1, 11)])
        assert len(seen) == storage.sync_count - count == 2
        for seconds, thread in seen:
            assert 0 < seconds < TEST_TIMEOUT and thread is threading.main_thread()

    @deferred_test
    def test_fsync_never_runs_on_the_reactor_thread(self, storages, log_dir, fsyncs):
        storage = yield storages(log_dir)
        for i in range(1, 6):
            yield storage.append([entry(1, i)])
        yield write_snapshot(storage, SnapshotMeta(3, 1), b"snap")
        yield storage.append([entry(1, 6)])
        assert fsyncs
        assert all(thread is not threading.main_thread() for thread in fsyncs)

    @deferred_test
    def test_fsync_never_policy_skips_fsync(self, storages, log_dir, fsyncs):
        storage = yield storages(log_dir, fsync="never")
        for i in range(1, 6):
            yield storage.append([entry(1, i)])
        yield write_snapshot(storage, SnapshotMeta(3, 1), b"snap")
        yield storage.close()
        assert fsyncs == []
        storage = yield storages(log_dir, fsync="never")
        assert storage.last_index == 5

    @deferred_test
    def test_next_batch_accumulates_while_one_is_written(self, storages, log_dir, monkeypatch):
        storage = yield storages(log_dir)
        entered, release = threading.Event(), threading.Event()
        real = os.fsync
        calls = []

        def slow_fsync(fd):
            calls.append(fd)
            entered.set()
            release.wait(TEST_TIMEOUT)
            return real(fd)

        monkeypatch.setattr(os, "fsync", slow_fsync)
        fired = []
        first = storage.append([entry(1, 1)]).addCallback(lambda _: fired.append(1))
        yield threads.deferToThread(entered.wait, TEST_TIMEOUT)
        later = []
        for i in (2, 3, 4):
            later.append(storage.append([entry(1, i)]).addCallback(lambda _, i=i: fired.append(i)))
            yield turn()
        assert fired == []
        # Reads see issued writes before they are durable.
        assert storage.last_index == 4
        assert [e.index for e in storage.entries(1, 5)] == [1, 2, 3, 4]
        release.set()
        yield defer.gatherResults([first] + later)
        assert fired == [1, 2, 3, 4]
        assert len(calls) == 2

    @deferred_test
    def test_durable_fires_after_every_earlier_write(self, storages, log_dir):
        storage = yield storages(log_dir)
        order = []
        storage.save_hard_state(HardState(1, "")).addCallback(lambda _: order.append("term"))
        storage.append([entry(1, 1)]).addCallback(lambda _: order.append("append"))
        storage.durable().addCallback(lambda _: order.append("durable"))
        yield storage.durable()
        assert order == ["term", "append", "durable"]
        # With nothing pending, durable() has already fired.
        assert storage.durable().called

    @deferred_test
    def test_write_failure_fails_this_and_later_writes(self, storages, log_dir, monkeypatch):
        storage = yield storages(log_dir)

        def failing_fsync(fd):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StorageError, match="Input/output"):
            yield storage.append([entry(1, 1)])
        monkeypatch.undo()
        with pytest.raises(StorageError, match="earlier write failed"):
            yield storage.append([entry(1, 2)])
        with pytest.raises(StorageError, match="earlier write failed"):
            yield storage.save_hard_state(HardState(9, "x"))
        # Refused writes change nothing.
        assert storage.hard_state == HardState()
        assert storage.last_index == 1
        with pytest.raises(StorageError):
            yield storage.close()

    @deferred_test
    def test_memory_stays_bounded(self, storages, log_dir):
        """Entries are read from the file on demand, not held in memory."""
        payload = b"p" * 4000
        storage = yield storages(log_dir, fsync="never")
        for start in range(1, 5001, 500):
            storage.append([entry(1, i, payload) for i in range(start, start + 500)])
            yield storage.durable()
        assert storage._cache_bytes <= disk._CACHE_BYTES
        assert not storage._unwritten
        yield storage.close()
        assert os.path.getsize(os.path.join(log_dir, FIRST_LOG)) > 5000 * 4000

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            storage = yield storages(log_dir, fsync="never")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # 20 MB of entries on disk; recovery keeps only their positions.
        assert grown < 3 * 1024 * 1024, grown
        assert storage.last_index == 5000
        assert storage.entries(4321, 4322) == [entry(1, 4321, payload)]


class TestSnapshots:
    @deferred_test
    def test_commit_trims_log_and_survives_reopen(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.save_hard_state(HardState(3, "b"))
        yield storage.append([entry(2, i) for i in range(1, 9)] + [entry(3, 9), entry(3, 10)])
        meta = SnapshotMeta(index=6, term=2)
        yield write_snapshot(storage, meta, b"application state")
        assert snapshot_name(2, 6) in files(log_dir)
        assert log_name(2, 6) in files(log_dir)

        def check(storage):
            assert storage.first_index == 7
            assert storage.last_index == 10
            assert storage.term_at(6) == 2
            assert storage.term_at(5) is None
            assert storage.entries(7, 11) == [entry(2, 7), entry(2, 8), entry(3, 9), entry(3, 10)]
            with pytest.raises(IndexError):
                storage.entries(6, 11)
            assert read_snapshot(storage) == (meta, b"application state")
            assert storage.hard_state == HardState(3, "b")

        check(storage)
        yield storage.close()
        storage = yield storages(log_dir)
        check(storage)
        # The new log holds what is kept; appending continues after it.
        yield storage.append([entry(3, 11)])
        yield storage.close()
        storage = yield storages(log_dir)
        assert storage.last_index == 11

    @deferred_test
    def test_snapshot_is_readable_as_soon_as_commit_is_issued(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        d = write_snapshot(storage, SnapshotMeta(4, 1), b"now")
        assert read_snapshot(storage) == (SnapshotMeta(4, 1), b"now")
        assert storage.first_index == 5
        yield d

    @deferred_test
    def test_stale_files_are_removed(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 31)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), b"10")
        # The generation before the newest stays as a fallback.
        assert files(log_dir) == sorted([FIRST_LOG, log_name(1, 10), snapshot_name(1, 10)])
        yield write_snapshot(storage, SnapshotMeta(20, 1), b"20")
        yield write_snapshot(storage, SnapshotMeta(30, 1), b"30")
        expected = sorted([log_name(1, 20), snapshot_name(1, 20), log_name(1, 30), snapshot_name(1, 30)])
        assert files(log_dir) == expected
        yield storage.close()
        storage = yield storages(log_dir)
        assert files(log_dir) == expected
        assert read_snapshot(storage) == (SnapshotMeta(30, 1), b"30")
        assert (storage.first_index, storage.last_index) == (31, 30)

    @deferred_test
    def test_snapshot_without_its_log_is_discarded(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 21)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), b"10")
        yield storage.close()
        # As if the member crashed between installing a snapshot and its log.
        orphan = os.path.join(log_dir, snapshot_name(1, 15))
        shutil.copy(os.path.join(log_dir, snapshot_name(1, 10)), orphan)
        events = Events()
        storage = yield storages(log_dir, events=events)
        assert not os.path.exists(orphan)
        assert read_snapshot(storage)[0] == SnapshotMeta(10, 1)
        assert storage.last_index == 20
        assert any(e.get("file") == orphan for e in events.warnings())

    @deferred_test
    def test_crash_before_new_log_falls_back_to_previous_generation(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 21)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), b"10")
        yield storage.close()
        os.remove(os.path.join(log_dir, log_name(1, 10)))
        storage = yield storages(log_dir)
        assert storage.open_snapshot() is None
        assert (storage.first_index, storage.last_index) == (1, 20)
        assert files(log_dir) == [FIRST_LOG]

    @deferred_test
    def test_failure_between_snapshot_and_log_keeps_previous_state(self, storages, log_dir, monkeypatch):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 21)])
        yield write_snapshot(storage, SnapshotMeta(5, 1), b"five")

        def crash(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(disk, "_install_file", crash)
        with pytest.raises(StorageError, match="No space"):
            yield write_snapshot(storage, SnapshotMeta(15, 1), b"fifteen")
        with pytest.raises(StorageError):
            yield storage.close()
        monkeypatch.undo()
        # The new snapshot reached its final name, its log did not.
        assert snapshot_name(1, 15) in files(log_dir)
        storage = yield storages(log_dir)
        assert read_snapshot(storage) == (SnapshotMeta(5, 1), b"five")
        assert (storage.first_index, storage.last_index) == (6, 20)
        assert snapshot_name(1, 15) not in files(log_dir)

    @deferred_test
    def test_stale_files_that_cannot_be_removed_only_warn(self, storages, log_dir, monkeypatch):
        events = Events()
        storage = yield storages(log_dir, events=events)
        yield storage.append([entry(1, i) for i in range(1, 21)])
        yield write_snapshot(storage, SnapshotMeta(5, 1), b"five")
        real_remove = os.remove

        def refuse(path):
            if path.endswith(FIRST_LOG):
                raise PermissionError(13, "Permission denied", path)
            return real_remove(path)

        monkeypatch.setattr(os, "remove", refuse)
        yield write_snapshot(storage, SnapshotMeta(15, 1), b"fifteen")
        monkeypatch.undo()
        assert [e for e in events.warnings() if "Permission denied" in e.get("error", "")]
        yield storage.append([entry(1, 21)])
        yield storage.close()
        storage = yield storages(log_dir)
        assert read_snapshot(storage) == (SnapshotMeta(15, 1), b"fifteen")
        assert storage.last_index == 21
        # Removed at the next opportunity.
        assert FIRST_LOG not in files(log_dir)

    @deferred_test
    def test_torn_tail_of_a_log_started_by_a_snapshot(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 11)])
        yield write_snapshot(storage, SnapshotMeta(8, 1), b"eight")
        yield storage.append([entry(2, 11)])
        yield storage.append([entry(2, 12)])
        yield storage.close()
        path = os.path.join(log_dir, log_name(1, 8))
        offsets, size = record_offsets(path)
        os.truncate(path, size - 3)
        storage = yield storages(log_dir)
        assert (storage.first_index, storage.last_index) == (9, 11)
        assert read_snapshot(storage) == (SnapshotMeta(8, 1), b"eight")
        assert os.path.getsize(path) == offsets[-1]

    @deferred_test
    def test_abort_leaves_no_trace(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        writer = storage.snapshot_writer(SnapshotMeta(3, 1))
        writer.fileobj.write(b"partial")
        writer.fileobj.flush()
        assert len(files(log_dir)) == 2
        writer.abort()
        assert files(log_dir) == [FIRST_LOG]
        assert storage.open_snapshot() is None
        assert storage.first_index == 1

    @deferred_test
    def test_half_received_snapshot_leaves_previous_state(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 11)])
        yield write_snapshot(storage, SnapshotMeta(5, 1), b"old")
        writer = storage.snapshot_writer(SnapshotMeta(50, 7))
        writer.fileobj.write(b"first chunk of a snapshot from the leader")
        writer.fileobj.flush()
        # The member dies here: the writer is neither committed nor aborted.
        yield storage.close()
        storage = yield storages(log_dir)
        assert read_snapshot(storage) == (SnapshotMeta(5, 1), b"old")
        assert (storage.first_index, storage.last_index) == (6, 10)
        assert not [name for name in files(log_dir) if name.endswith(".tmp")]

    @deferred_test
    def test_close_discards_unfinished_writers(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        writer = storage.snapshot_writer(SnapshotMeta(3, 1))
        writer.fileobj.write(b"still in the buffer")
        yield storage.close()
        assert files(log_dir) == [FIRST_LOG]
        with pytest.raises(ValueError):
            writer.fileobj.write(b"too late")
            writer.fileobj.flush()

    @deferred_test
    def test_snapshot_file_is_not_writable_after_commit(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        writer = storage.snapshot_writer(SnapshotMeta(3, 1))
        writer.fileobj.write(b"complete")
        d = writer.commit()
        with pytest.raises(ValueError):
            writer.fileobj.write(b"afterwards")
            writer.fileobj.flush()
        yield d
        assert read_snapshot(storage) == (SnapshotMeta(3, 1), b"complete")
        with pytest.raises(StorageError):
            yield writer.commit()

    @deferred_test
    def test_snapshot_from_leader_replaces_disagreeing_log(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        yield write_snapshot(storage, SnapshotMeta(8, 2), b"leader's")
        assert (storage.first_index, storage.last_index) == (9, 8)
        assert storage.term_at(8) == 2
        assert storage.entries(9, 20) == []
        yield storage.append([entry(2, 9)])
        yield storage.close()
        storage = yield storages(log_dir)
        assert (storage.first_index, storage.last_index) == (9, 9)
        assert storage.term_at(8) == 2
        assert read_snapshot(storage) == (SnapshotMeta(8, 2), b"leader's")

    @deferred_test
    def test_snapshot_with_other_term_at_its_index_discards_log(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        yield write_snapshot(storage, SnapshotMeta(3, 2), b"x")
        assert (storage.first_index, storage.last_index) == (4, 3)
        assert storage.term_at(3) == 2

    @deferred_test
    def test_older_snapshot_is_refused(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 6)])
        yield write_snapshot(storage, SnapshotMeta(4, 1), b"4")
        with pytest.raises(StorageError, match="not newer"):
            yield write_snapshot(storage, SnapshotMeta(3, 1), b"3")
        assert read_snapshot(storage) == (SnapshotMeta(4, 1), b"4")
        assert not [name for name in files(log_dir) if name.endswith(".tmp")]

    @deferred_test
    def test_retained_entries_before_the_snapshot(self, storages, log_dir):
        storage = yield storages(log_dir, retain=3)
        yield storage.append([entry(1, i) for i in range(1, 11)] + [entry(2, i) for i in range(11, 21)])
        yield write_snapshot(storage, SnapshotMeta(15, 2), b"15")

        def check(storage):
            assert (storage.first_index, storage.last_index) == (13, 20)
            assert storage.term_at(12) == 2
            assert storage.term_at(15) == 2
            assert storage.term_at(11) is None
            assert [e.index for e in storage.entries(13, 21)] == list(range(13, 21))

        check(storage)
        yield storage.close()
        storage = yield storages(log_dir, retain=3)
        check(storage)
        assert read_snapshot(storage)[0] == SnapshotMeta(15, 2)

    @deferred_test
    def test_source_reads_by_offset_and_outlives_replacement(self, storages, log_dir):
        data = bytes(range(256)) * 1000
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 31)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), data)
        source = storage.open_snapshot()
        try:
            assert source.size == len(data)
            chunks = [source.read(offset, 60000) for offset in range(0, len(data), 60000)]
            assert b"".join(chunks) == data
            assert source.read(len(data), 10) == b""
            yield write_snapshot(storage, SnapshotMeta(20, 1), b"20")
            yield write_snapshot(storage, SnapshotMeta(30, 1), b"30")
            assert snapshot_name(1, 10) not in files(log_dir)
            fileobj = source.open()
            assert fileobj.read() == data
            fileobj.close()
        finally:
            source.close()

    @deferred_test
    def test_damaged_snapshot_falls_back_to_the_previous_one(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 31)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), b"ten")
        yield write_snapshot(storage, SnapshotMeta(20, 1), b"twenty")
        yield storage.append([entry(2, 31)])
        yield storage.close()
        damaged = os.path.join(log_dir, snapshot_name(1, 20))
        flip_byte(damaged, os.path.getsize(damaged) - 1)
        events = Events()
        storage = yield storages(log_dir, events=events)
        assert read_snapshot(storage) == (SnapshotMeta(10, 1), b"ten")
        # Nothing is lost: the older log and the newer one chain.
        assert (storage.first_index, storage.last_index) == (11, 31)
        assert storage.entries(11, 32) == [entry(1, i) for i in range(11, 31)] + [entry(2, 31)]
        assert os.path.exists(damaged)
        assert any(e.get("file") == damaged for e in events.warnings())

    @deferred_test
    def test_damaged_snapshot_without_an_older_one_is_fatal(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 31)])
        yield write_snapshot(storage, SnapshotMeta(10, 1), b"ten")
        yield write_snapshot(storage, SnapshotMeta(20, 1), b"twenty")
        yield storage.close()
        assert FIRST_LOG not in files(log_dir)
        for index in (10, 20):
            flip_byte(os.path.join(log_dir, snapshot_name(1, index)), disk._SNAPSHOT_HEADER_SIZE)
        before = snapshot_of_directory(log_dir)
        with pytest.raises(CorruptLog) as error:
            yield storages(log_dir)
        assert snapshot_name(1, 20) in str(error.value)
        assert "offset" in str(error.value)
        assert snapshot_of_directory(log_dir) == before


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        value = f.read(1)
        f.seek(offset)
        f.write(bytes([value[0] ^ 0x41]))


def snapshot_of_directory(directory):
    result = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            result[name] = f.read()
    return result


def record_offsets(path):
    """:returns: the offset of every record in a log file, and the file size."""
    with open(path, "rb") as f:
        data = f.read()
    offsets = []
    offset = len(disk.LOG_MAGIC)
    while offset < len(data):
        offsets.append(offset)
        length, _ = disk._RECORD.unpack_from(data, offset)
        offset += disk._RECORD.size + length
    assert offset == len(data)
    return offsets, len(data)


class TestRecovery:
    @pytest.fixture
    def three_entries(self, tmp_path, storages):
        """A closed log holding entries 1..3, one record each; returns its directory."""
        source = str(tmp_path / "source")

        @defer.inlineCallbacks
        def build():
            storage = yield storages(source)
            yield storage.save_hard_state(HardState(1, "me"))
            for i in (1, 2, 3):
                yield storage.append([entry(1, i)])
            yield storage.close()

        pytest_twisted.blockon(build())
        return source

    @deferred_test
    def test_torn_last_record_at_every_offset(self, storages, three_entries, tmp_path):
        path = os.path.join(three_entries, FIRST_LOG)
        offsets, size = record_offsets(path)
        last = offsets[-1]
        with open(path, "rb") as f:
            original = f.read()
        for cut in range(last, size):
            member = str(tmp_path / f"cut{cut}")
            os.mkdir(member)
            torn = os.path.join(member, FIRST_LOG)
            with open(torn, "wb") as f:
                f.write(original[:cut])
            events = Events()
            storage = yield storages(member, events=events)
            assert storage.last_index == 2, cut
            assert storage.entries(1, 5) == [entry(1, 1), entry(1, 2)]
            assert storage.hard_state == HardState(1, "me")
            assert os.path.getsize(torn) == last
            if cut > last:
                [warning] = [w for w in events.warnings() if "offset" in w]
                assert (warning["file"], warning["offset"]) == (torn, last)
            # The member goes on: the lost entry is refilled and survives reopening.
            yield storage.append([entry(1, 3)])
            yield storage.close()
            storage = yield storages(member)
            assert storage.last_index == 3
            yield storage.close()

    @deferred_test
    def test_damaged_last_record_at_every_offset(self, storages, three_entries, tmp_path):
        path = os.path.join(three_entries, FIRST_LOG)
        offsets, size = record_offsets(path)
        last = offsets[-1]
        for offset in range(last, size):
            member = str(tmp_path / f"flip{offset}")
            shutil.copytree(three_entries, member)
            flip_byte(os.path.join(member, FIRST_LOG), offset)
            events = Events()
            storage = yield storages(member, events=events)
            assert storage.last_index == 2, offset
            [warning] = events.warnings()
            assert warning["offset"] == last
            yield storage.close()

    @pytest.mark.parametrize("where", ["length", "checksum", "payload", "zeroed"])
    @deferred_test
    def test_damaged_middle_record_is_fatal(self, storages, three_entries, where):
        path = os.path.join(three_entries, FIRST_LOG)
        offsets, _ = record_offsets(path)
        # The record of entry 2: only entry 3's record follows it.
        target = offsets[-2]
        if where == "zeroed":
            # A lost page reads back as zeros; the next record's length field
            # starts with zero bytes too and must still be found.
            with open(path, "r+b") as f:
                f.seek(target)
                f.write(b"\0" * (offsets[-1] - target))
        else:
            flip_byte(path, target + {"length": 3, "checksum": 5, "payload": 10}[where])
        with open(path, "rb") as f:
            before = f.read()
        with pytest.raises(CorruptLog) as error:
            yield storages(three_entries)
        assert path in str(error.value)
        assert f"offset {target}" in str(error.value)
        with open(path, "rb") as f:
            assert f.read() == before

    @deferred_test
    def test_not_a_log_is_fatal(self, storages, log_dir):
        os.mkdir(log_dir)
        path = os.path.join(log_dir, FIRST_LOG)
        with open(path, "wb") as f:
            f.write(b"something else entirely")
        with pytest.raises(CorruptLog, match="offset 0"):
            yield storages(log_dir)
        assert os.path.getsize(path) == len(b"something else entirely")

    @deferred_test
    def test_leftover_temporary_files_are_removed(self, storages, log_dir):
        storage = yield storages(log_dir)
        yield storage.close()
        leftover = os.path.join(log_dir, log_name(3, 9) + ".new.tmp")
        with open(leftover, "wb") as f:
            f.write(b"half a log")
        yield storages(log_dir)
        assert files(log_dir) == [FIRST_LOG]


class TestBadDirectory:
    @deferred_test
    def test_log_dir_is_a_file(self, storages, tmp_path):
        path = tmp_path / "file"
        path.write_bytes(b"not a directory")
        with pytest.raises(ConfigurationError, match="not a directory"):
            yield storages(str(path))
        assert path.read_bytes() == b"not a directory"

    @deferred_test
    def test_log_dir_below_a_file(self, storages, tmp_path):
        path = tmp_path / "file"
        path.write_bytes(b"")
        with pytest.raises(StorageError, match="cannot create"):
            yield storages(str(path / "member"))

    @deferred_test
    def test_log_dir_not_writable(self, storages, tmp_path):
        if os.geteuid() == 0:
            # root ignores permission bits; /proc refuses new files to everyone.
            unwritable = "/proc"
        else:
            unwritable = str(tmp_path / "readonly")
            os.mkdir(unwritable, 0o500)
        with pytest.raises(StorageError, match="not writable"):
            yield storages(unwritable)

    @deferred_test
    def test_second_storage_on_the_same_directory_is_refused(self, storages, log_dir):
        first = yield storages(log_dir)
        yield first.append([entry(1, 1)])
        with pytest.raises(StorageError, match="in use"):
            yield storages(log_dir)
        yield first.close()
        # The lock goes with the storage that held it.
        again = yield storages(log_dir)
        assert again.last_index == 1

    @deferred_test
    def test_unrelated_files_are_left_alone(self, storages, log_dir):
        os.makedirs(os.path.join(log_dir, "subdir"))
        unrelated = {
            "notes.txt": b"mine",
            "backup.log": b"not ours",
            "1.2.snap": b"short names are not ours",
            "00000000000000000001.00000000000000000002.log.bak": b"nor this",
        }
        for name, data in unrelated.items():
            with open(os.path.join(log_dir, name), "wb") as f:
                f.write(data)
        storage = yield storages(log_dir)
        yield storage.append([entry(1, i) for i in range(1, 31)])
        for index in (10, 20, 30):
            yield write_snapshot(storage, SnapshotMeta(index, 1), b"s")
        yield storage.close()
        yield storages(log_dir)
        for name, data in unrelated.items():
            with open(os.path.join(log_dir, name), "rb") as f:
                assert f.read() == data
        assert os.path.isdir(os.path.join(log_dir, "subdir"))


def test_record_framing_uses_crc32_of_length_and_payload():
    import zlib

    value = HardState(7, "x")
    record = disk._frame(value)
    length, crc = disk._RECORD.unpack_from(record)
    payload = record[disk._RECORD.size :]
    assert length == len(payload)
    assert crc == zlib.crc32(record[:4] + payload)
    assert codec.decode(payload) == value


SHUTDOWN_SCRIPT = """
import signal
import sys
from twisted.internet import reactor

signal.alarm(20)  # a process that cannot exit fails the test instead of hanging it
from txraft.messages import Entry
from txraft.storage.disk import DiskStorage

storage = DiskStorage(sys.argv[1], reactor=reactor)

def opened(_):
    storage.append([Entry(1, 1, data=b"written at shutdown")])
    reactor.stop()  # without closing the storage

storage.open().addCallback(opened)
reactor.run()
"""


@deferred_test
def test_reactor_shutdown_flushes_and_stops_the_worker(storages, log_dir):
    from twisted.internet.utils import getProcessOutputAndValue

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, ["-c", SHUTDOWN_SCRIPT, log_dir], env=dict(os.environ, PYTHONPATH=repo), path=repo
    ).addTimeout(40, reactor)
    assert code == 0, err.decode(errors="replace")
    storage = yield storages(log_dir)
    assert storage.entries(1, 2) == [entry(1, 1, b"written at shutdown")]
