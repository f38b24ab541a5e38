"""
:class:`RaftConfig`: everything a member needs to know about itself.

Timing follows the seed design: the leader sends a heartbeat every
``heartbeat`` seconds; a follower that hears nothing for
``election_timeout`` (default ``2 * heartbeat``) plus a random part of up to
one ``heartbeat`` starts an election.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from txraft.errors import ConfigurationError

FSYNC_POLICIES = ("always", "never")


def parse_host_port(value: object, what: str = "address") -> Tuple[str, int]:
    """
    Split ``"host:port"`` (``"[::1]:port"`` for IPv6).

    :returns: ``(host, port)`` with ``port`` an int.
    :raises ConfigurationError: naming ``what`` when the value is malformed.
    """
    if not isinstance(value, str) or ":" not in value:
        raise ConfigurationError(f"{what} must be HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigurationError(f"{what} must be HOST:PORT, got {value!r}: the host is empty")
    try:
        number = int(port)
    except ValueError:
        raise ConfigurationError(f"{what} must be HOST:PORT, got {value!r}: {port!r} is not a port number")
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"{what} must be HOST:PORT, got {value!r}: port out of range")
    return host, number


@dataclass
class RaftConfig:
    """
    Settings of one member.

    :ivar log_dir: directory for the log and snapshots (disk storage); ``None``
        keeps everything in memory.
    :ivar listen: ``"host:port"`` this member listens on; also its member id.
    :ivar heartbeat: seconds between the leader's heartbeats.
    :ivar election_timeout: base seconds a follower waits for the leader before
        it stands for election; a random extra of up to ``heartbeat`` is added
        each time.  ``None`` means ``2 * heartbeat``.
    :ivar snapshot_threshold: applied entries since the last snapshot that
        trigger a new one (randomized per member by up to +1/8).
    :ivar trailing_entries: entries the disk log keeps before a snapshot's
        index when it compacts, so that a follower a little behind is sent
        those entries rather than the whole snapshot (hashicorp/raft's
        ``TrailingLogs``, etcd's ``SnapshotCatchUpEntries``).  The disk store
        copies them into the new log file on the reactor thread, about 20 us
        an entry: keep it within ``turn_budget``'s reach.
    :ivar request_timeout: seconds ``append()`` waits for its command to be
        applied before it fails with :class:`txraft.errors.Timeout`.
    :ivar rpc_timeout: seconds a member RPC may take before it is abandoned.
    :ivar max_batch_bytes: byte budget of one AppendEntries batch.  Kept
        under one AMP value (64 KiB), so a batch is one message that a
        follower decodes in a short turn and a heartbeat never queues behind
        megabytes of entries (hashicorp/raft bounds batches the same way).
    :ivar max_command_bytes: the largest command a leader places in its log,
        whichever path brought it (``append()``, a follower's forward, the
        HTTP API); larger ones fail with :class:`txraft.errors.InvalidRequest`.
    :ivar max_inflight: AppendEntries requests in flight per follower.
    :ivar snapshot_chunk: bytes per InstallSnapshot chunk.
    :ivar max_uncommitted_entries: commands a leader holds placed but not yet
        committed (backpressure, like etcd's ``MaxUncommittedEntriesSize``);
        beyond it the leader refuses a forwarded append with
        :class:`txraft.errors.Busy` and a local one waits in the admission
        queue (``max_queued_appends``).
    :ivar max_uncommitted_bytes: the same bound in bytes of commands; one
        command is always admitted when nothing is uncommitted.
    :ivar max_queued_appends: ``append()`` calls on this member that may wait
        for room in the leader's bounds (an admission queue, served in order
        as commits drain, each within its own timeout); beyond it they fail
        at once with :class:`txraft.errors.Busy`.  The leader does not queue
        forwarded appends: it refuses them with ``Busy`` beyond its bounds,
        and the follower that forwarded one offers it again every
        ``retry_after`` seconds until the caller's timeout (then ``Busy``:
        nothing was stored).  ``0``: no queue anywhere; every append beyond
        the bounds fails at once (etcd's ``ErrProposalDropped``).
    :ivar fsync: ``"always"`` (durable before replying) or ``"never"``.
    :ivar cert: path of this member's PEM certificate.
    :ivar key: path of this member's PEM private key.
    :ivar ca: path of the cluster CA's PEM certificate.
    :ivar acl: certificate names allowed to connect.
    :ivar insecure: use plain TCP without TLS (never in production).
    :ivar peer_names: member id -> certificate name, for members given as
        ``NAME@HOST:PORT``.
    :ivar auto_promote: a member added as a voter joins as a learner and the
        leader promotes it once it has caught up; when false it stays a
        learner until promoted explicitly.
    :ivar join: members of a running cluster to ask to add this one; a member
        with a non-empty ``join`` and an empty log starts with no
        configuration of its own and waits to be added.
    :ivar name: this member's certificate name, recorded when it joins.
    """

    log_dir: Optional[str] = None
    listen: str = "127.0.0.1:0"
    heartbeat: float = 0.1
    election_timeout: Optional[float] = None
    snapshot_threshold: int = 10000
    trailing_entries: int = 1000
    request_timeout: float = 10.0
    rpc_timeout: float = 2.0
    max_batch_bytes: int = 60 * 1024
    max_command_bytes: int = 1024 * 1024
    max_inflight: int = 8
    snapshot_chunk: int = 60 * 1024
    max_uncommitted_entries: int = 1024
    max_uncommitted_bytes: int = 16 * 1024 * 1024
    max_queued_appends: int = 65536
    fsync: str = "always"
    cert: Optional[str] = None
    key: Optional[str] = None
    ca: Optional[str] = None
    acl: Tuple[str, ...] = ()
    insecure: bool = False
    peer_names: Dict[str, str] = field(default_factory=dict)
    auto_promote: bool = True
    join: Tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def election_base(self) -> float:
        """The fixed part of the election timeout, in seconds."""
        if self.election_timeout is None:
            return 2 * self.heartbeat
        return self.election_timeout

    @property
    def turn_budget(self) -> float:
        """
        Seconds of bulk work (applying entries) the core does in one reactor
        turn before it yields, so heartbeats and their replies are never stuck
        behind it: a small fraction of the election timeout.
        """
        return min(self.heartbeat / 5, self.election_base / 20)

    def validate(self) -> None:
        """:raises ConfigurationError: naming the first bad setting."""
        parse_host_port(self.listen, "listen")
        for name in ("heartbeat", "request_timeout", "rpc_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.election_timeout is not None:
            if not isinstance(self.election_timeout, (int, float)) or self.election_timeout <= self.heartbeat:
                raise ConfigurationError(
                    f"election_timeout must be a number of seconds above heartbeat ({self.heartbeat}), "
                    f"got {self.election_timeout!r}"
                )
        for name in ("snapshot_threshold", "max_batch_bytes", "max_command_bytes", "max_inflight", "snapshot_chunk",
                     "max_uncommitted_entries", "max_uncommitted_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.trailing_entries, int) or isinstance(self.trailing_entries, bool) \
                or self.trailing_entries < 0:
            raise ConfigurationError(
                f"trailing_entries must be a non-negative integer, got {self.trailing_entries!r}")
        if not isinstance(self.max_queued_appends, int) or self.max_queued_appends < 0:
            raise ConfigurationError(
                f"max_queued_appends must be a non-negative integer, got {self.max_queued_appends!r}")
        for contact in self.join:
            parse_host_port(contact, "join")
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigurationError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
