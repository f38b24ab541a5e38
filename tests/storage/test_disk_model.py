"""
:class:`DiskStorage` against a model: random sequences of writes, snapshots
and reopenings, compared after every step with
:class:`txraft.storage.memory.MemoryStorage` (which never forgets anything it
was told).  Each seed is one reproducible sequence.
"""

import random

import pytest
from txraft.messages import Entry, HardState, SnapshotMeta
from txraft.storage.disk import DiskStorage
from txraft.storage.memory import MemoryStorage
from tests.storage.helpers import deferred_test


def observe(storage):
    """Everything a reader of ``storage`` can see."""
    first, last = storage.first_index, storage.last_index
    source = storage.open_snapshot()
    if source is None:
        snapshot = None
    else:
        try:
            snapshot = (source.meta, source.open().read())
        finally:
            source.close()
    return {
        "hard_state": storage.hard_state,
        "first": first,
        "last": last,
        # Index 0 is left out: the interface says its term is 0, which the
        # memory store answers only while it has no snapshot.
        "terms": [storage.term_at(i) for i in range(max(1, first - 2), last + 3)],
        "entries": storage.entries(first, last + 1),
        "snapshot": snapshot,
    }


def one_step(rng, disk, model, term):
    """Apply one random write to both stores. :returns: the new current term."""
    choice = rng.random()
    if choice < 0.55:
        low = max(model.first_index, model.last_index - 3)
        start = rng.randint(low, model.last_index + 1)
        if start <= model.last_index and rng.random() < 0.5:
            term += 1  # a new leader overwrites an uncommitted suffix
        entries = [
            Entry(term, i, data=rng.randbytes(rng.randint(0, 300)))
            for i in range(start, start + rng.randint(1, 6))
        ]
        disk.append(entries)
        model.append(entries)
    elif choice < 0.75:
        term += rng.randint(0, 1)
        state = HardState(term, rng.choice(["", "a", "b"]))
        disk.save_hard_state(state)
        model.save_hard_state(state)
    elif model.last_index >= model.first_index:
        if rng.random() < 0.8:
            index = rng.randint(model.first_index, model.last_index)
            meta = SnapshotMeta(index, model.term_at(index))
        else:
            # A snapshot from a leader that disagrees with (or is ahead of) this log.
            index = model.last_index + rng.randint(0, 3) or 1
            term += 1
            meta = SnapshotMeta(index, term)
        data = rng.randbytes(rng.randint(0, 2000))
        for storage in (disk, model):
            writer = storage.snapshot_writer(meta)
            writer.fileobj.write(data)
            writer.commit()
    return term


@pytest.mark.parametrize("seed", range(12))
@deferred_test
def test_disk_matches_model(storages, tmp_path, seed):
    rng = random.Random(seed)
    log_dir = str(tmp_path / "member")
    disk = yield storages(log_dir)
    model = MemoryStorage()
    term = 1
    for step in range(150):
        term = one_step(rng, disk, model, term)
        assert observe(disk) == observe(model), f"seed {seed}, step {step}"
        if rng.random() < 0.1:
            yield disk.close()
            disk = yield storages(log_dir)
            assert observe(disk) == observe(model), f"seed {seed}, after reopening at step {step}"
        elif rng.random() < 0.3:
            yield disk.durable()
    yield disk.close()
    disk = yield storages(log_dir)
    assert observe(disk) == observe(model)
    assert isinstance(disk, DiskStorage)

