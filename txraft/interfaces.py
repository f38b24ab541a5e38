"""
The contracts between txraft's parts.

The Raft core depends only on these interfaces: it reads and writes its state
through an :class:`IStorage`, talks to other members through an
:class:`ITransport`, and hands committed commands to an :class:`IRaftClient`.
Each interface has an in-memory implementation (used by the simulator in
:mod:`txraft.testing`) and a real one (the disk store, AMP over TLS).
"""

from __future__ import annotations

from typing import Any, BinaryIO, List, Optional, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from txraft.messages import Entry, HardState, SnapshotMeta


class IRaftClient(Interface):
    """
    The application a Raft member replicates.  Subclass
    :class:`txraft.RaftClient` rather than implementing this from scratch.

    All methods run on the reactor thread.
    """

    def apply(command: bytes, index: int) -> Any:
        """
        Apply a committed command.

        Called in log order with the same ``command`` and ``index`` on every
        member, and at most once per ``append()``.  Must not block and must not
        return a Deferred.

        :param bytes command: the command passed to ``append()``.
        :param int index: its log index; increases from call to call.
        :returns: any value; it is the result of the ``append()`` Deferred on the
            member that accepted the command.
        :raises: any exception; the ``append()`` Deferred fails with
            :class:`txraft.errors.ApplyError` wrapping it.  The entry still
            counts as applied.
        """

    def save_snapshot(fileobj: BinaryIO) -> Optional[Deferred[Any]]:
        """
        Write the application's whole state to ``fileobj``.

        No ``apply()`` runs until this returns, so the application may capture
        its state (copy-on-write) and finish writing later.

        :param fileobj: a binary file open for writing.
        :returns: ``None`` when the snapshot is complete on return, or a
            Deferred that fires when it is completely written; a failure
            discards the snapshot.
        """

    def restore_snapshot(index: int, fileobj: BinaryIO) -> Optional[Deferred[Any]]:
        """
        Replace the application's state with the snapshot in ``fileobj``.

        :param int index: the last log index the snapshot covers.
        :param fileobj: a binary file open for reading, positioned at the
            first byte the application wrote.
        """

    def leader_changed(me: str, leader: str) -> None:
        """
        This member learnt of a new leader.

        :param str me: this member's id.
        :param str leader: the leader's member id, or ``""`` when none is known.
        """


class IRaftObserver(Interface):
    """
    Something that follows what the Raft core does: the member API, metrics,
    tests.  Register one with ``RaftCore.add_observer``.  The application's
    :meth:`IRaftClient.leader_changed` is delivered through this same
    mechanism.

    Methods run on the reactor thread, inside the core's own step: they must
    not block and must not call back into the core.  An exception is logged
    and does not reach the core.
    """

    def applied(entry: Entry, outcome: Any) -> None:
        """
        A command entry was applied.

        :param entry: the :class:`txraft.messages.Entry`.
        :param outcome: what ``apply()`` returned, the
            :class:`txraft.errors.ApplyError` it raised, or
            ``txraft.core.raft.DUPLICATE`` when the session table recognised
            the command as one applied before (and did not apply it again).
        """

    def applied_through(index: int) -> None:
        """
        A batch of entries was applied; the member has applied up to ``index``.

        :param int index: the new applied index.
        """

    def leader_changed(leader: str, term: int) -> None:
        """
        The leader this member knows of changed.

        :param str leader: the new leader's id, or ``""`` when none is known.
        :param int term: this member's term at the change.
        """

    def restored(meta: SnapshotMeta) -> None:
        """
        The application was restored from a snapshot (at start, or one the
        leader sent).

        :param meta: the snapshot's :class:`txraft.messages.SnapshotMeta`.
        """

    def snapshot_taken(meta: SnapshotMeta) -> None:
        """
        A snapshot of this member's own state is durable.

        :param meta: its :class:`txraft.messages.SnapshotMeta`.
        """

    def configuration_changed(configuration: Any) -> None:
        """
        This member's membership configuration changed (an entry appended or
        overwritten, or a snapshot installed); it is in effect already,
        committed or not.

        :param configuration: the :class:`txraft.core.membership.Configuration`.
        """


class ISnapshotWriter(Interface):
    """A snapshot being written.  Nothing of it is visible until :meth:`commit`."""

    meta: SnapshotMeta = Attribute(":class:`txraft.messages.SnapshotMeta` of the snapshot.")
    fileobj: BinaryIO = Attribute("A binary file open for writing.")

    def commit() -> Deferred[Any]:
        """
        Make the snapshot durable and current, then reset the log to begin after
        ``meta.index``.  Entries after ``meta.index`` are kept when the log holds
        ``meta.index`` with ``meta.term``; otherwise the whole log is discarded
        (Raft paper section 7).

        :returns: a Deferred that fires once all of that is durable.
        """

    def abort() -> None:
        """Discard the snapshot; the previous one stays current."""


class ISnapshotSource(Interface):
    """The current snapshot, open for reading."""

    meta: SnapshotMeta = Attribute(":class:`txraft.messages.SnapshotMeta` of the snapshot.")
    size: int = Attribute("Length of the snapshot in bytes.")

    def read(offset: int, length: int) -> bytes:
        """:returns: up to ``length`` bytes from ``offset`` (``b""`` past the end)."""

    def open() -> BinaryIO:
        """:returns: a new binary file object positioned at the start."""

    def close() -> None:
        """Release the snapshot."""


class IStorage(Interface):
    """
    A member's persistent state: the hard state (term and vote), the log, and
    the latest snapshot.

    Reads are synchronous and see every write already issued, durable or not.
    Writes return Deferreds that fire once the write is durable; writes become
    durable in the order they were issued, so a later Deferred firing implies
    every earlier write is durable too.

    Life cycle: :meth:`open`, then reads and writes, then :meth:`close`.

    Invariant: ``first_index - 1`` is the index of the latest snapshot (0 with
    none); ``first_index <= last_index + 1``.
    """

    hard_state: HardState = Attribute("The latest :class:`txraft.messages.HardState` written.")
    first_index: int = Attribute("Index of the first entry still stored.")
    last_index: int = Attribute("Index of the last entry stored (the snapshot's index if the log is empty).")

    def open() -> Deferred[Any]:
        """
        Make the storage ready: recover what it holds (or create it empty).
        Call it once, before any other method; an implementation with nothing
        to recover (:class:`~txraft.storage.memory.MemoryStorage`) may also be
        used without it.

        Opening is not idempotent: a second call, or a call after
        :meth:`close`, fails, so that two members can never share one store by
        mistake.

        :returns: a Deferred that fires with this storage once it is ready.
            It fails with :class:`txraft.errors.StorageClosed` after
            :meth:`close`, and with another :class:`txraft.errors.StorageError`
            when the storage was already opened or cannot be recovered.
        """

    def term_at(index: int) -> Optional[int]:
        """
        :returns: the term of the entry at ``index``; the snapshot's term when
            ``index`` is the snapshot's index; 0 for index 0; ``None`` when the
            entry is compacted away or beyond the end.
        """

    def entries(low: int, high: int, max_bytes: Optional[int] = None) -> List[Entry]:
        """
        :returns: the list of entries with ``low <= index < high``, stopping
            before ``max_bytes`` is passed (at least one entry is returned).
        :raises IndexError: when ``low`` is below ``first_index``.
        """

    def save_hard_state(state: HardState) -> Deferred[Any]:
        """:returns: a Deferred that fires when ``state`` is durable."""

    def append(entries: Sequence[Entry]) -> Deferred[Any]:
        """
        Write ``entries`` (consecutive, non-empty), replacing any stored entry
        at or after ``entries[0].index``.  ``entries[0].index`` must be at most
        ``last_index + 1`` and above the snapshot's index.

        :returns: a Deferred that fires when the entries are durable.
        """

    def durable() -> Deferred[Any]:
        """:returns: a Deferred that fires when every write issued so far is durable."""

    def snapshot_writer(meta: SnapshotMeta) -> ISnapshotWriter:
        """:returns: an :class:`ISnapshotWriter` for a new snapshot covering ``meta``."""

    def open_snapshot() -> Optional[ISnapshotSource]:
        """:returns: an :class:`ISnapshotSource` for the latest snapshot, or ``None``."""

    def close() -> Deferred[Any]:
        """
        Flush and release everything.  Closing twice is harmless.  After
        ``close()`` every write (:meth:`save_hard_state`, :meth:`append`,
        :meth:`snapshot_writer`) raises :class:`txraft.errors.StorageClosed`.

        :returns: a Deferred that fires once everything issued is durable.
        """


class IRPCHandler(Interface):
    """What a transport delivers incoming member RPCs to (the Raft core)."""

    def receive(message: Any) -> Deferred[Any]:
        """
        Handle one request from :mod:`txraft.messages`.

        :returns: a Deferred that fires with the reply message, or fails with a
            :class:`txraft.errors.RaftError` the transport carries back to the
            caller as the same type.
        """


class ITransport(Interface):
    """Carries member RPCs between members."""

    def start(handler: Any) -> Deferred[Any]:
        """
        Begin accepting requests and deliver them to ``handler``
        (an :class:`IRPCHandler`).

        :returns: a Deferred that fires once the member can be reached, with
            the ``"host:port"`` it is reached at when the transport chose it
            (listening on port 0), or ``None`` when the member id given to
            the transport stands.
        """

    def send(peer: str, message: Any) -> Deferred[Any]:
        """
        Send ``message`` to the member whose id is ``peer``.

        :returns: a Deferred that fires with the reply, or fails with the
            :class:`txraft.errors.RaftError` the peer raised or a
            :class:`txraft.errors.TransportError`.  Cancelling it abandons
            the call.
        """

    def stop() -> Deferred[Any]:
        """Close every connection and stop listening.  :returns: a Deferred."""
