"""
:class:`RaftClient`, the base class of replicated applications.

Subclass it and override :meth:`~RaftClient.apply`, and for anything that must
survive a restart, :meth:`~RaftClient.save_snapshot` and
:meth:`~RaftClient.restore_snapshot`::

    class Counter(RaftClient):
        def __init__(self):
            self.total = 0

        def apply(self, command, index):
            self.total += int(command)
            return self.total

        def save_snapshot(self, fileobj):
            fileobj.write(str(self.total).encode())

        def restore_snapshot(self, index, fileobj):
            self.total = int(fileobj.read() or b"0")
"""

from __future__ import annotations

from typing import Any, BinaryIO, Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txraft.interfaces import IRaftClient


@implementer(IRaftClient)
class RaftClient:
    """
    An application replicated by Raft; see :class:`txraft.interfaces.IRaftClient`
    for the full contract of each method.

    The defaults keep no state: ``apply`` raises ``NotImplementedError``,
    snapshots are empty, and ``leader_changed`` does nothing.
    """

    def apply(self, command: bytes, index: int) -> Any:
        """Apply ``command`` (bytes) committed at ``index``; return its result."""
        raise NotImplementedError(f"{type(self).__name__} must override apply()")

    def save_snapshot(self, fileobj: BinaryIO) -> Optional[Deferred[Any]]:
        """Write the whole state to ``fileobj``; may return a Deferred."""
        return None

    def restore_snapshot(self, index: int, fileobj: BinaryIO) -> Optional[Deferred[Any]]:
        """Replace the whole state with the snapshot read from ``fileobj``."""

    def leader_changed(self, me: str, leader: str) -> None:
        """This member (``me``) now believes ``leader`` leads (``""``: unknown)."""
