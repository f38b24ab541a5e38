"""
Sending a snapshot to a follower that lacks compacted entries, and receiving
one from the leader, in offset-addressed chunks (InstallSnapshot).

Implements Raft paper section 7 (log compaction: InstallSnapshot, Figure 13)
with one chunk in flight per follower, resumed where the follower says it
stopped.  Part of :class:`~txraft.core.raft.RaftCore`; taking and restoring
snapshots is :mod:`txraft.core.compaction`'s.
"""

from __future__ import annotations

from typing import Optional, Union

from twisted.internet import defer

from txraft import messages as m
from txraft.core.progress import Progress
from txraft.core.roles import Leader
from txraft.core.shared import CoreState
from txraft.interfaces import ISnapshotWriter


class _Incoming:
    """A snapshot being received: its writer, and the offset of the next chunk expected."""

    __slots__ = ("writer", "offset")

    def __init__(self, writer: ISnapshotWriter, offset: int) -> None:
        self.writer = writer
        self.offset = offset


class SnapshotTransfer(CoreState):
    """The snapshot-transfer half of :class:`~txraft.core.raft.RaftCore` (a mixin: it shares the core's state)."""

    #: The snapshot being received, or ``None``.
    _incoming: Optional[_Incoming] = None

    # -- leader ----------------------------------------------------------------

    def _start_snapshot(self, leader: Leader, progress: Progress) -> None:
        source = self.storage.open_snapshot()
        if source is None:
            self._fail(f"log compacted below {self.storage.first_index} but no snapshot exists")
        progress.close_snapshot()
        progress.snapshot = source
        progress.snapshot_offset = 0
        self.log.info("{member} sends snapshot {index} to {peer}", member=self.id,
                      index=source.meta.index, peer=progress.peer)
        self._send_snapshot_chunk(leader, progress)

    def _send_snapshot_chunk(self, leader: Leader, progress: Progress) -> None:
        source = progress.snapshot
        assert source is not None, "sending a snapshot chunk without a snapshot"
        offset = progress.snapshot_offset
        data = source.read(offset, self.config.snapshot_chunk)
        done = offset + len(data) >= source.size
        request = m.InstallSnapshot(leader.term, self.id, source.meta.index, source.meta.term,
                                    offset, data, done)
        progress.snapshot_request = request
        self._send(progress.peer, request)

    def _on_snapshot_failure(self, peer: str, request: m.InstallSnapshot, failure: object) -> None:
        leader, progress = self._progress_for_reply(peer, request)
        if progress is not None and progress.snapshot_request is request:
            # Resume at the next heartbeat; the follower says where.
            progress.snapshot_request = None

    def _on_snapshot_reply(self, peer: str, request: m.InstallSnapshot, reply: m.InstallSnapshotReply) -> None:
        leader, progress = self._progress_for_reply(peer, request, reply)
        if progress is None or progress.snapshot_request is not request:
            return
        assert leader is not None and progress.snapshot is not None
        progress.snapshot_request = None
        end = request.offset + len(request.data)
        if request.done and reply.next_offset >= end:
            progress.close_snapshot()
            progress.match_index = max(progress.match_index, request.last_index)
            progress.next_index = progress.match_index + 1
            progress.probing = True
            self._maybe_commit(leader)
            self._replicate(leader, peer)
            return
        progress.snapshot_offset = min(reply.next_offset, progress.snapshot.size)
        self._send_snapshot_chunk(leader, progress)

    # -- follower --------------------------------------------------------------------

    def _drop_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.writer.abort()
            self._incoming = None

    def _handle_install_snapshot(
            self, req: m.InstallSnapshot) -> Union[m.InstallSnapshotReply, defer.Deferred[m.InstallSnapshotReply]]:
        self._check_sender(req.leader, "leader")
        if req.term < self.term:
            return m.InstallSnapshotReply(self.term, 0)
        self._accept_leader(req.term, req.leader)
        meta = m.SnapshotMeta(req.last_index, req.last_term)
        if req.last_index <= self.applied_index:
            # Nothing in it we lack; tell the leader it is done.
            if self._incoming is not None and self._incoming.writer.meta == meta:
                self._drop_incoming()
            return m.InstallSnapshotReply(self.term, req.offset + len(req.data))
        if req.offset == 0:
            self._drop_incoming()
            self._incoming = _Incoming(self.storage.snapshot_writer(meta), 0)
        incoming = self._incoming
        if incoming is None or incoming.writer.meta != meta or incoming.offset != req.offset:
            # Out of sequence: tell the leader where to resume.
            expected = incoming.offset if incoming is not None and incoming.writer.meta == meta else 0
            return m.InstallSnapshotReply(self.term, expected)
        incoming.writer.fileobj.write(req.data)
        incoming.offset += len(req.data)
        if not req.done:
            return m.InstallSnapshotReply(self.term, incoming.offset)
        self._incoming = None
        writer = incoming.writer
        done = writer.commit()
        source = self.storage.open_snapshot()
        assert source is not None, "no snapshot after committing one"
        try:
            configuration = self._restore_from(source)
        finally:
            source.close()
        self._load_configurations(meta.index, configuration)
        self._apply_committed()
        reply = m.InstallSnapshotReply(self.term, incoming.offset)
        return done.addCallback(lambda _: reply)
