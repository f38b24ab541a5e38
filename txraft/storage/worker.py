"""
The ordered writer: one dedicated thread that does a storage's writes in the
order they were issued, with group commit.

Everything issued in one reactor turn becomes one :class:`Batch`; on the next
turn the batch goes to the worker thread, which writes it (consecutive
records of one file as one ``pwrite``) and fsyncs each file it wrote once.
While that runs, the next batch accumulates.  The reactor never waits for
``fsync``, and a write's Deferred fires only when its batch is durable.  Use
it like this::

    writer = OrderedWriter(reactor, directory, fsync=True,
                           switch=do_switch, done=batch_done, failed=batch_failed)
    writer.start()
    state = yield writer.run(recover_or_explain, directory, True)  # on the worker thread
    writer.batch.write(segment, offset, record)    # segment.wfd, at offset
    yield writer.issue()                           # fires once it is durable
    yield writer.drain()                           # everything issued is done
    writer.stop()

After a failed batch the writer keeps :attr:`OrderedWriter.failure`; the
storage must then refuse further writes (:meth:`OrderedWriter.refusal`).
"""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from txraft.errors import StorageError
from txraft.storage.files import write_all

__all__ = ["Batch", "OrderedWriter"]


class Batch:
    """
    Writes issued in one reactor turn, done by the worker as one write and one fsync.

    :ivar serial: increases by one from batch to batch.
    :ivar operations: ``["write", segment, offset, [bytes, ...], total length]``
        (consecutive records of one file, merged) or ``["switch", switch]``,
        in issue order.
    :ivar written: indexes of the entries this batch writes; they are held in
        memory (tagged with ``serial``) until it is done.
    :ivar waiters: Deferreds to fire, in issue order, when the batch is durable.
    :ivar switches: the ``switch`` operations, in issue order.
    :ivar fsync_seconds: how long each ``fsync`` of a log file took, filled
        in by the worker thread.
    """

    def __init__(self, serial):
        self.serial = serial
        self.operations = []
        self.written = []
        self.waiters = []
        self.switches = []
        self.fsync_seconds = []

    def write(self, segment, offset, data):
        """Write ``data`` at ``offset`` of ``segment`` (through its ``wfd``)."""
        last = self.operations[-1] if self.operations else None
        if last is not None and last[0] == "write" and last[1] is segment and last[2] + last[4] == offset:
            last[3].append(data)
            last[4] += len(data)
        else:
            self.operations.append(["write", segment, offset, [data], len(data)])

    def switch(self, switch):
        """After the writes so far are synced, hand ``switch`` to the writer's ``switch`` callable."""
        self.operations.append(["switch", switch])
        self.switches.append(switch)


class OrderedWriter:
    """
    One worker thread (a ``ThreadPool(1, 1)`` of its own, never the reactor's
    shared pool) doing batches of writes in issue order.

    :param reactor: runs the results of the worker thread (``IReactorThreads``).
    :param directory: the log directory, named in the thread and in errors.
    :param fsync: whether each file written is fsynced at the end of a batch.
    :param switch: ``switch(switch, fsync)``, called on the worker thread for a
        batch's ``switch`` operations (moving writes to a new file).
    :param done: ``done(batch)``, called on the reactor thread when a batch is
        durable, before its Deferreds fire.
    :param failed: ``failed(batch, reason)``, called on the reactor thread when
        a batch failed, before its Deferreds and every pending one fail.

    :ivar batch: the :class:`Batch` being collected; :meth:`issue` adds a
        Deferred to it.
    :ivar failure: the exception of the first failed batch, else ``None``.
    :ivar sync_count: number of ``fsync`` calls made on files written.
    :ivar fsync_observers: callables given the seconds each ``fsync`` of a
        file written took, on the reactor thread once its batch is durable
        (before the batch's Deferreds fire); metrics add theirs here.
    """

    log = Logger()

    def __init__(self, reactor, directory, fsync, switch, done, failed):
        self.directory = directory
        self.fsync = fsync
        self.failure = None
        self.sync_count = 0
        self.fsync_observers = []
        self.batch = Batch(1)
        self._reactor = reactor
        self._switch = switch
        self._done = done
        self._failed = failed
        self._pool = None
        # Invariant: at most one of _in_flight and _flush_call is set.
        self._in_flight = None
        self._flush_call = None
        self._idle_waiters = []

    def start(self):
        """Start the worker thread."""
        self._pool = ThreadPool(1, 1, name=f"txraft-disk:{self.directory}")
        self._pool.start()

    def stop(self):
        """Stop the worker thread (after what it was given)."""
        self._pool.stop()

    def run(self, function, *args):
        """:returns: a Deferred of ``function(*args)``, called on the worker thread in turn."""
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def refusal(self):
        """:returns: the error that refuses a write after an earlier one failed."""
        return StorageError(f"{self.directory}: an earlier write failed: {self.failure}")

    def issue(self):
        """:returns: a Deferred for a write added to the current batch; fires once it is durable."""
        d = defer.Deferred()
        self.batch.waiters.append(d)
        if self._flush_call is None and self._in_flight is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def durable(self):
        """:returns: a Deferred that fires once every write issued so far is durable."""
        if self.batch.waiters:
            d = defer.Deferred()
            self.batch.waiters.append(d)
            return d
        if self._in_flight is not None:
            d = defer.Deferred()
            self._in_flight.waiters.append(d)
            return d
        if self.failure is not None:
            return defer.fail(self.refusal())
        return defer.succeed(None)

    def drain(self):
        """
        Hand the current batch to the worker now.

        :returns: a Deferred that fires when every batch is done.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._flush()
        d = defer.Deferred()
        self._idle_waiters.append(d)
        self._check_idle()
        return d

    def _flush(self):
        """Hand the current batch to the worker unless it is busy (then it waits its turn)."""
        self._flush_call = None
        if self._in_flight is not None or not self.batch.waiters:
            self._check_idle()
            return
        batch, self.batch = self.batch, Batch(self.batch.serial + 1)
        self._in_flight = batch
        d = deferToThreadPool(self._reactor, self._pool, self._run_batch, batch)
        d.addCallbacks(self._batch_done, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _run_batch(self, batch):
        """Worker thread: do a batch's writes in order, then fsync once."""
        fsync = self.fsync
        dirty = []
        for operation in batch.operations:
            if operation[0] == "write":
                _, segment, offset, chunks, _ = operation
                write_all(segment.wfd, b"".join(chunks), offset)
                if segment not in dirty:
                    dirty.append(segment)
            else:
                for segment in dirty:
                    self._sync(batch, segment.wfd, fsync)
                dirty = []
                self._switch(operation[1], fsync)
        for segment in dirty:
            self._sync(batch, segment.wfd, fsync)

    def _sync(self, batch, fd, fsync):
        if fsync:
            started = time.perf_counter()
            os.fsync(fd)
            batch.fsync_seconds.append(time.perf_counter() - started)
            self.sync_count += 1

    def _batch_done(self, _, batch):
        self._in_flight = None
        for observe in self.fsync_observers:
            try:
                for seconds in batch.fsync_seconds:
                    observe(seconds)
            except Exception:
                # An observer's fault must not keep the batch's writes from
                # being acknowledged.
                self.log.failure("fsync observer {observer!r} failed", observer=observe)
        self._done(batch)
        for d in batch.waiters:
            d.callback(None)
        self._flush()

    def _batch_failed(self, reason, batch):
        self._in_flight = None
        self.failure = reason.value
        error = StorageError(f"{self.directory}: write failed: {reason.value}")
        pending, self.batch = self.batch.waiters, Batch(self.batch.serial + 1)
        self._failed(batch, reason)
        for d in batch.waiters + pending:
            d.errback(error)
        self._check_idle()

    def _check_idle(self):
        if self._in_flight is None and not self.batch.waiters and self._flush_call is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
