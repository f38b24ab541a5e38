"""
The :class:`~txraft.interfaces.IStorage` contract, checked against every
implementation: the disk store and the in-memory one the simulator uses.  The
Raft core relies only on what is checked here, so the two must agree.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from txraft.errors import StorageClosed, StorageError
from txraft.interfaces import IStorage
from txraft.messages import HardState, SnapshotMeta
from txraft.storage.disk import DiskStorage
from tests.storage.helpers import deferred_test, entry

try:
    from txraft.storage.memory import MemoryStorage
except ImportError:  # pragma: no cover - the memory store is built in parallel
    MemoryStorage = None


def _disk(tmp_path):
    storage = DiskStorage(str(tmp_path / "member"), reactor=reactor)
    return storage.open()


def _memory(tmp_path):
    return MemoryStorage(reactor).open()


KINDS = [pytest.param(_disk, id="disk")]
if MemoryStorage is not None:
    KINDS.append(pytest.param(_memory, id="memory"))


@pytest.fixture(params=KINDS)
def storage(request, tmp_path):
    opened = pytest_twisted.blockon(request.param(tmp_path))
    yield opened
    pytest_twisted.blockon(defer.maybeDeferred(opened.close))


def snapshot(storage, meta, data):
    writer = storage.snapshot_writer(meta)
    writer.fileobj.write(data)
    return writer.commit()


def test_provides_istorage(storage):
    assert verifyObject(IStorage, storage)


def test_fresh_storage_is_empty(storage):
    assert storage.hard_state == HardState()
    assert (storage.first_index, storage.last_index) == (1, 0)
    assert storage.term_at(0) == 0
    assert storage.term_at(1) is None
    assert storage.open_snapshot() is None


def test_reads_see_writes_before_they_are_durable(storage):
    d1 = storage.save_hard_state(HardState(4, "b"))
    d2 = storage.append([entry(4, 1), entry(4, 2)])
    assert storage.hard_state == HardState(4, "b")
    assert storage.last_index == 2
    assert storage.entries(1, 3) == [entry(4, 1), entry(4, 2)]
    return defer.gatherResults([d1, d2])


@deferred_test
def test_append_replaces_from_its_first_index(storage):
    yield storage.append([entry(1, i) for i in range(1, 7)])
    yield storage.append([entry(2, 4, b"new")])
    assert storage.last_index == 4
    assert storage.entries(1, 10) == [entry(1, 1), entry(1, 2), entry(1, 3), entry(2, 4, b"new")]
    assert [storage.term_at(i) for i in range(6)] == [0, 1, 1, 1, 2, None]


@deferred_test
def test_entries_limits(storage):
    yield storage.append([entry(1, i, b"x" * 68) for i in range(1, 6)])
    assert [e.index for e in storage.entries(2, 4)] == [2, 3]
    assert [e.index for e in storage.entries(4, 100)] == [4, 5]
    assert [e.index for e in storage.entries(1, 6, max_bytes=1)] == [1]
    size = entry(1, 1, b"x" * 68).size()
    assert [e.index for e in storage.entries(1, 6, max_bytes=2 * size)] == [1, 2]
    assert [e.index for e in storage.entries(1, 6, max_bytes=3 * size - 1)] == [1, 2]


@deferred_test
def test_writes_become_durable_in_issue_order(storage):
    order = []
    storage.append([entry(1, 1)]).addCallback(lambda _: order.append(1))
    storage.save_hard_state(HardState(1, "a")).addCallback(lambda _: order.append(2))
    storage.append([entry(1, 2)]).addCallback(lambda _: order.append(3))
    storage.durable().addCallback(lambda _: order.append(4))
    yield storage.durable()
    assert order == [1, 2, 3, 4]


def test_invalid_appends_raise(storage):
    with pytest.raises(ValueError):
        storage.append([])
    with pytest.raises(ValueError):
        storage.append([entry(1, 2)])
    with pytest.raises(ValueError):
        storage.append([entry(1, 1), entry(1, 3)])


@deferred_test
def test_snapshot_keeps_entries_after_a_matching_index(storage):
    yield storage.append([entry(1, i) for i in range(1, 11)])
    yield snapshot(storage, SnapshotMeta(6, 1), b"state at 6")
    assert (storage.first_index, storage.last_index) == (7, 10)
    assert storage.term_at(6) == 1
    assert storage.term_at(5) is None
    assert [e.index for e in storage.entries(7, 11)] == [7, 8, 9, 10]
    with pytest.raises(IndexError):
        storage.entries(6, 11)
    source = storage.open_snapshot()
    try:
        assert source.meta == SnapshotMeta(6, 1)
        assert source.size == len(b"state at 6")
        assert source.read(6, 100) == b"at 6"
        assert source.read(100, 5) == b""
        assert source.open().read() == b"state at 6"
    finally:
        source.close()


@deferred_test
def test_snapshot_discards_a_disagreeing_log(storage):
    yield storage.append([entry(1, i) for i in range(1, 6)])
    yield snapshot(storage, SnapshotMeta(4, 3), b"from the leader")
    assert (storage.first_index, storage.last_index) == (5, 4)
    assert storage.term_at(4) == 3
    yield storage.append([entry(3, 5)])
    assert storage.entries(5, 6) == [entry(3, 5)]


@deferred_test
def test_snapshot_is_current_once_commit_is_issued(storage):
    yield storage.append([entry(1, i) for i in range(1, 4)])
    d = snapshot(storage, SnapshotMeta(3, 1), b"three")
    source = storage.open_snapshot()
    try:
        assert source.meta == SnapshotMeta(3, 1)
        assert source.open().read() == b"three"
    finally:
        source.close()
    assert storage.first_index == 4
    yield d


@deferred_test
def test_abort_keeps_the_previous_snapshot(storage):
    yield storage.append([entry(1, i) for i in range(1, 4)])
    yield snapshot(storage, SnapshotMeta(2, 1), b"two")
    writer = storage.snapshot_writer(SnapshotMeta(3, 1))
    writer.fileobj.write(b"half")
    writer.abort()
    source = storage.open_snapshot()
    try:
        assert source.meta == SnapshotMeta(2, 1)
        assert source.open().read() == b"two"
    finally:
        source.close()
    assert storage.first_index == 3


@deferred_test
def test_opening_twice_fails_and_leaves_the_storage_usable(storage):
    """open() is not idempotent: a second call is a mistake (two members on one store), never a no-op."""
    with pytest.raises(StorageError) as raised:
        yield storage.open()
    assert not isinstance(raised.value, StorageClosed)
    yield storage.append([entry(1, 1)])
    assert storage.last_index == 1


@deferred_test
def test_a_closed_storage_refuses_every_write_with_storage_closed(storage):
    yield storage.append([entry(1, 1)])
    yield storage.close()
    with pytest.raises(StorageClosed):
        storage.save_hard_state(HardState(2, "a"))
    with pytest.raises(StorageClosed):
        storage.append([entry(1, 2)])
    with pytest.raises(StorageClosed):
        storage.snapshot_writer(SnapshotMeta(1, 1))
    with pytest.raises(StorageClosed):
        yield storage.open()
    yield storage.close()  # closing again is harmless
