"""
Snapshots of this member's own state: taking one when the log has grown past
the threshold, and restoring the application from one.

Implements Raft paper section 7 (log compaction) on the member's side: the
snapshot holds the application's state, the session table (dissertation
section 6.3) and the membership configuration, and is taken without stopping the core; the log
is compacted once it is durable.  Part of :class:`~txraft.core.raft.RaftCore`;
sending snapshots to followers is :mod:`txraft.core.snapshot_transfer`'s.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from txraft import messages as m
from txraft.core.membership import Configuration
from txraft.core.sessions import SessionTable
from txraft.core.shared import CoreState
from txraft.core.snapshot_header import read_header, write_header
from txraft.interfaces import ISnapshotSource, ISnapshotWriter
from txraft.messages import Role


class Compaction(CoreState):
    """The snapshot half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    # RaftCore sets these first; declared again (for mypy only) because this
    # mixin assigns them, which would otherwise make mypy infer them anew.
    _snapshotting: bool
    _snapshot_index: int
    commit_index: int
    applied_index: int
    sessions: SessionTable

    def _maybe_snapshot(self) -> None:
        if self._snapshotting or self.role is Role.STOPPED:
            return
        if self.applied_index - self._snapshot_index < self._snapshot_threshold:
            return
        term = self.storage.term_at(self.applied_index)
        assert term is not None, "an applied entry is in the log or the snapshot"
        meta = m.SnapshotMeta(self.applied_index, term)
        writer = self.storage.snapshot_writer(meta)
        self._snapshotting = True
        try:
            configuration = self.configuration_at(self.applied_index)
            write_header(writer.fileobj, self.sessions, configuration.ids, configuration)
            d = defer.maybeDeferred(self.client.save_snapshot, writer.fileobj)
        except Exception:
            d = defer.fail(Failure())
        d.addCallback(self._commit_snapshot, writer)
        d.addErrback(self._snapshot_failed, writer)

    def _commit_snapshot(self, _: object, writer: ISnapshotWriter) -> Optional[defer.Deferred[None]]:
        if self.role is Role.STOPPED or self._snapshot_index >= writer.meta.index:
            # Stopped, or a newer snapshot came from the leader meanwhile.
            writer.abort()
            self._snapshotting = False
            return None
        d = writer.commit()
        self._snapshot_index = writer.meta.index
        self._fold_configurations(writer.meta.index)

        def committed(_: object) -> None:
            self._snapshotting = False
            self.log.info("{member} snapshot at {index}", member=self.id, index=writer.meta.index)
            self.observers.snapshot_taken(writer.meta)

        return d.addCallback(committed)

    def _snapshot_failed(self, failure: Failure, writer: ISnapshotWriter) -> None:
        self._snapshotting = False
        writer.abort()
        self.log.failure("{member}: snapshot discarded", failure, member=self.id)

    def _restore_from(self, source: ISnapshotSource) -> Configuration:
        """
        Replace the application's state with ``source`` (an ISnapshotSource).

        :returns: the membership configuration the snapshot ends in.
        """
        meta = source.meta
        fileobj = source.open()
        try:
            self.sessions, configuration = read_header(fileobj)
            self.client.restore_snapshot(meta.index, fileobj)
        finally:
            fileobj.close()
        self.applied_index = meta.index
        self._snapshot_index = max(self._snapshot_index, meta.index)
        self.commit_index = max(self.commit_index, meta.index)
        self.log.info("{member} restored snapshot at {index}", member=self.id, index=meta.index)
        self.observers.restored(meta)
        return configuration
