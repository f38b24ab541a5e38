"""What a leader knows about each follower (Raft paper Figure 2, "Volatile state on leaders")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from txraft.interfaces import ISnapshotSource
    from txraft.messages import InstallSnapshot


class Progress:
    """
    Replication state of one follower, kept by the leader.

    Invariants: ``match_index < next_index``; ``inflight`` counts
    AppendEntries requests that carry entries and have not been answered.

    While ``probing``, the leader does not know where the follower's log
    diverges, so it sends one request at a time; after a success it pipelines
    up to ``max_inflight`` requests, advancing ``next_index`` optimistically.
    """

    __slots__ = (
        "peer", "next_index", "match_index", "inflight", "probing",
        "snapshot", "snapshot_offset", "snapshot_request", "last_reply", "acked_round", "sent_commit",
    )

    def __init__(self, peer: str, next_index: int, now: float) -> None:
        self.peer = peer
        self.next_index = next_index
        self.match_index = 0
        self.inflight = 0
        self.probing = True
        #: ISnapshotSource being sent, or None.
        self.snapshot: Optional[ISnapshotSource] = None
        self.snapshot_offset = 0
        #: The InstallSnapshot chunk awaiting its reply (one at a time), or None.
        self.snapshot_request: Optional[InstallSnapshot] = None
        #: Clock time of the last reply in the current term (check-quorum).
        self.last_reply = now
        #: Highest heartbeat round this follower answered (ReadIndex).
        self.acked_round = 0
        #: The commit index the latest AppendEntries sent to it carried.
        self.sent_commit = 0

    def close_snapshot(self) -> None:
        """Stop sending a snapshot: close its source and forget the chunk in flight."""
        if self.snapshot is not None:
            self.snapshot.close()
        self.snapshot = None
        self.snapshot_offset = 0
        self.snapshot_request = None
