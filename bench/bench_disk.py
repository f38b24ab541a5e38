"""
Measure :class:`txraft.storage.disk.DiskStorage` on this machine and print the
figures.

    python bench/bench_disk.py [--entries N] [--size BYTES] [--dir PATH]

For each fsync policy it appends ``N`` entries of ``BYTES`` bytes two ways:
one at a time (each append waits for the previous one to be durable, as a
lone client would) and in batches (``--batch`` appends issued in one reactor
turn, which group commit turns into one write and one fsync).  It then times
recovery (:meth:`DiskStorage.open`) of a log holding ``--recover`` entries and
reports the memory recovery kept.  Use ``--dir`` to measure a particular disk;
the default is a temporary directory.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from txraft.messages import Entry  # noqa: E402
from txraft.storage.disk import DiskStorage  # noqa: E402


@defer.inlineCallbacks
def timed_appends(reactor, directory, fsync, count, size, batch):
    """:returns: ``(seconds, fsyncs)`` for ``count`` appends issued ``batch`` per reactor turn."""
    storage = DiskStorage(directory, fsync=fsync, reactor=reactor)
    yield storage.open()
    payload = os.urandom(size)
    start = time.perf_counter()
    index = 1
    while index <= count:
        pending = []
        for _ in range(min(batch, count - index + 1)):
            pending.append(storage.append([Entry(1, index, data=payload)]))
            index += 1
        yield defer.gatherResults(pending)
    elapsed = time.perf_counter() - start
    syncs = storage.sync_count
    yield storage.close()
    return elapsed, syncs


@defer.inlineCallbacks
def timed_recovery(reactor, directory, count, size):
    """:returns: ``(seconds, bytes on disk, bytes kept in memory)`` for reopening ``count`` entries."""
    storage = DiskStorage(directory, fsync="never", reactor=reactor)
    yield storage.open()
    payload = os.urandom(size)
    for start in range(1, count + 1, 1000):
        storage.append([Entry(1, i, data=payload) for i in range(start, min(start + 1000, count + 1))])
        yield storage.durable()
    yield storage.close()
    on_disk = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))

    storage = DiskStorage(directory, fsync="always", reactor=reactor)
    started = time.perf_counter()
    yield storage.open()
    elapsed = time.perf_counter() - started
    assert storage.last_index == count

    # Reading the whole log back in 1 MiB batches, as a leader does for a
    # follower that is catching up (nothing is cached after a reopen).
    started = time.perf_counter()
    low = 1
    while low <= count:
        low += len(storage.entries(low, count + 1, max_bytes=1 << 20))
    reading = time.perf_counter() - started
    yield storage.close()

    # Again under tracemalloc (which slows allocation down) for the memory figure.
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    storage = DiskStorage(directory, fsync="always", reactor=reactor)
    yield storage.open()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    yield storage.close()
    return elapsed, on_disk, kept, reading


def line(label, count, seconds, syncs):
    per_entry = seconds / count * 1e6
    print(f"  {label:<34} {count / seconds:>10,.0f} appends/s {per_entry:>9.1f} us/entry  {syncs:>6} fsyncs")


@defer.inlineCallbacks
def main(reactor, options):
    root = tempfile.mkdtemp(prefix="bench-disk-", dir=options.dir)
    try:
        print(f"DiskStorage, {options.size}-byte entries, in {root}")
        runs = [
            ("always", "one at a time", options.entries // 4, 1),
            ("always", f"batches of {options.batch}", options.entries, options.batch),
            ("never", "one at a time", options.entries, 1),
            ("never", f"batches of {options.batch}", options.entries, options.batch),
        ]
        for n, (fsync, how, count, batch) in enumerate(runs):
            directory = os.path.join(root, f"run{n}")
            seconds, syncs = yield timed_appends(reactor, directory, fsync, count, options.size, batch)
            line(f"fsync={fsync}, {how}", count, seconds, syncs)
        directory = os.path.join(root, "recover")
        seconds, on_disk, kept, reading = yield timed_recovery(reactor, directory, options.recover, options.size)
        print(
            f"  recovery of {options.recover:,} entries ({on_disk / 2**20:.1f} MiB): "
            f"{seconds * 1000:.0f} ms ({seconds / options.recover * 1e6:.1f} us/entry), "
            f"{kept / 2**20:.2f} MiB kept in memory"
        )
        print(
            f"  reading them back with entries() in 1 MiB batches: {reading * 1000:.0f} ms "
            f"({reading / options.recover * 1e6:.1f} us/entry)"
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--entries", type=int, default=4000, help="appends per run (default 4000)")
    parser.add_argument("--size", type=int, default=100, help="bytes of data per entry (default 100)")
    parser.add_argument("--batch", type=int, default=32, help="appends per reactor turn when batching")
    parser.add_argument("--recover", type=int, default=200000, help="entries in the recovery run")
    parser.add_argument("--dir", default=None, help="directory to measure in (default: temporary)")
    options = parser.parse_args()
    task.react(main, [options])
