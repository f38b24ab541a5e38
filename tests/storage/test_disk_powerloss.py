"""
Power loss, simulated: only what was fsynced survives.

``os.fsync`` and ``os.replace`` are wrapped to track what stable storage
holds: for each file name, how many bytes had been fsynced, and a rename only
once its directory was fsynced afterwards.  At arbitrary moments, while writes
are in flight, the test builds the directory a power failure would leave
(each durable name cut to its synced length, followed by random garbage where
unsynced bytes were) and opens it: every write whose Deferred had fired must be
there.  This checks what the SIGKILL test cannot: that a Deferred never fires
before the fsyncs that make its write durable.
"""

import os
import random
import threading

import pytest

from txraft.messages import HardState, SnapshotMeta
from tests.storage.helpers import deferred_test, entry, turn


class StableStorage:
    """
    A model of what survives a power failure, fed by the real ``os.fsync``
    and ``os.replace`` calls of the storage under test (on its worker thread).

    :ivar durable: file path -> bytes known to be on stable storage under that name.
    """

    def __init__(self, directory):
        self.directory = directory
        self.durable = {}
        self._synced = {}  # path -> synced length, whatever the durability of its name
        self._renames = []  # (source, target) not yet made durable by a directory fsync
        self._lock = threading.Lock()
        self._fsync = os.fsync
        self._replace = os.replace
        self._remove = os.remove

    def fsync(self, fd):
        self._fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.dirname(path) != self.directory and path != self.directory:
            return
        with self._lock:
            if os.path.isdir(path):
                for source, target in self._renames:
                    self.durable.pop(source, None)
                    if source in self._synced:
                        self.durable[target] = self._synced[target] = self._synced.pop(source)
                self._renames = []
            else:
                self._synced[path] = os.fstat(fd).st_size
                if path in self.durable:
                    self.durable[path] = self._synced[path]

    def replace(self, source, target):
        with self._lock:
            self._replace(source, target)
            self._renames.append((source, target))

    def remove(self, path):
        # Pessimistic: a removed file is gone at once (were the removal lost,
        # recovery would only find a stale file more).
        with self._lock:
            self._remove(path)
            self.durable.pop(path, None)
            self._synced.pop(path, None)

    def image(self, target, rng):
        """Write the directory a power failure now would leave to ``target``."""
        os.mkdir(target)
        with self._lock:  # the worker neither renames nor removes meanwhile
            for path, length in self.durable.items():
                with open(path, "rb") as f:
                    data = f.read(length)
                unsynced = os.path.getsize(path) - len(data)
                garbage = rng.randbytes(rng.randint(0, max(0, unsynced)))
                with open(os.path.join(target, os.path.basename(path)), "wb") as f:
                    f.write(data + garbage)


@pytest.mark.parametrize("seed", range(4))
@deferred_test
def test_power_loss_keeps_every_acknowledged_write(storages, tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    log_dir = str(tmp_path / "member")
    os.mkdir(log_dir)
    stable = StableStorage(log_dir)
    monkeypatch.setattr(os, "fsync", stable.fsync)
    monkeypatch.setattr(os, "replace", stable.replace)
    monkeypatch.setattr(os, "remove", stable.remove)
    storage = yield storages(log_dir)
    acked_entries = {}
    acked_term = [0]
    next_index = 1
    snapshot_at = 0
    for crash in range(12):
        # A few turns of writes, then a "power failure" while some are in flight.
        for _ in range(rng.randint(1, 4)):
            count = rng.randint(1, 20)
            batch = [entry(1, i, rng.randbytes(rng.randint(1, 200))) for i in range(next_index, next_index + count)]
            next_index += count
            storage.append(batch).addCallback(lambda _, b=batch: acked_entries.update((e.index, e) for e in b))
            term = crash + 1
            storage.save_hard_state(HardState(term, "me")).addCallback(
                lambda _, t=term: acked_term.__setitem__(0, max(acked_term[0], t))
            )
            if rng.random() < 0.3 and next_index - 1 > snapshot_at + 5:
                snapshot_at = next_index - 3
                writer = storage.snapshot_writer(SnapshotMeta(snapshot_at, 1))
                writer.fileobj.write(b"up to %d" % snapshot_at)
                writer.commit()
            yield turn()
        acked, term_acked = dict(acked_entries), acked_term[0]
        image = str(tmp_path / f"crash{crash}")
        stable.image(image, rng)
        survivor = yield storages(image)
        assert survivor.hard_state.term >= term_acked, crash
        for index, value in sorted(acked.items()):
            if index >= survivor.first_index:
                assert survivor.entries(index, index + 1) == [value], (crash, index)
            else:
                source = survivor.open_snapshot()
                assert source is not None and source.meta.index >= index, (crash, index)
                source.close()
        yield survivor.close()
    yield storage.durable()
    assert len(acked_entries) == next_index - 1
