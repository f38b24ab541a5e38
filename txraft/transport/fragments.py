"""
Values larger than one AMP value: sending them as a sequence of
:class:`~txraft.transport.commands.Fragment` commands (:func:`upload`), and
reassembling them, within limits, on the receiving connection
(:class:`Reassembly`).

AMP caps one value at 65,535 bytes.  A larger field value is cut into
:data:`FRAGMENT_SIZE` pieces sent in order over the connection that then
carries the command using it; at most :data:`FRAGMENT_WINDOW` pieces are
unacknowledged at a time, because AMP has no back-pressure of its own.  A
receiver holds at most ``max_message`` bytes for one value and for all the
values pending on one connection, and all connections together draw on one
:class:`Budget` (the member protocol gives it twice ``max_message``), so
neither a peer nor many connections can make a member buffer without bound.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from twisted.internet import defer

from txraft import errors as e

__all__ = ["MAX_MESSAGE_BYTES", "FRAGMENT_SIZE", "FRAGMENT_WINDOW", "Budget", "Reassembly", "upload"]

#: Default largest encoded value of one message field (a batch of entries, a
#: command, a snapshot chunk) that a member sends or accepts.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Bytes per Fragment command; also the largest value sent inline.
FRAGMENT_SIZE = 60 * 1024
#: Unacknowledged Fragment commands per transfer (flow control).
FRAGMENT_WINDOW = 4


class Budget:
    """
    Bytes of fragments that all the connections of one member may hold.

    Invariant: ``0 <= used <= limit``.
    """

    def __init__(self, limit):
        self.limit = limit
        self.used = 0


class Reassembly:
    """
    The fragment sequences being received on one connection.

    :param max_message: the most bytes one value may have.
    :param max_pending: the most bytes held for all values together.
    :param budget: the :class:`Budget` shared with other connections, if any.

    Invariant: ``total`` is the sum of the lengths of all parts held (and is
    counted in ``budget.used``), and never exceeds ``max_pending``; no sequence exceeds ``max_message``; ``sizes[blob]``
    is the length of sequence ``blob`` so far, which is where its next
    fragment must start.
    """

    def __init__(self, max_message, max_pending, budget=None):
        self.max_message = max_message
        self.max_pending = max_pending
        self.budget = budget if budget is not None else Budget(max_pending)
        self.parts: Dict[int, List[bytes]] = {}
        self.sizes: Dict[int, int] = {}
        self.total = 0

    def add(self, blob, data, offset=None):
        """
        Append ``data`` to sequence ``blob``.

        :param offset: where ``data`` starts in the value; ``None`` (a sender
            that does not say) skips the check.
        :raises InvalidRequest: when ``offset`` is not where the sequence
            ends (a fragment duplicated, lost or out of order), or a limit
            would be passed; the sequence is dropped.
        """
        so_far = self.sizes.get(blob, 0)
        if offset is not None and offset != so_far:
            self.discard(blob)
            raise e.InvalidRequest(f"fragment of value {blob} at offset {offset}; {so_far} bytes were received")
        size = so_far + len(data)
        if size > self.max_message:
            self.discard(blob)
            raise e.InvalidRequest(f"fragmented value {blob} exceeds the {self.max_message}-byte limit")
        if self.total + len(data) > self.max_pending:
            self.discard(blob)
            raise e.InvalidRequest(f"more than {self.max_pending} bytes of fragments pending on this connection")
        if self.budget.used + len(data) > self.budget.limit:
            self.discard(blob)
            raise e.InvalidRequest(f"more than {self.budget.limit} bytes of fragments pending on this member's "
                                   "connections; try again later")
        self.parts.setdefault(blob, []).append(data)
        self.sizes[blob] = size
        self.total += len(data)
        self.budget.used += len(data)

    def discard(self, blob):
        """Drop sequence ``blob``, if held."""
        self.parts.pop(blob, None)
        self._release(self.sizes.pop(blob, 0))

    def clear(self):
        """Drop every sequence held (the connection closed, or they stopped arriving)."""
        for blob in list(self.parts):
            self.discard(blob)

    def _release(self, size):
        self.total -= size
        self.budget.used -= size

    def take(self, blob) -> bytes:
        """
        :returns: the bytes of sequence ``blob``, which is forgotten.
        :raises TransportError: when no such sequence was received.
        """
        parts = self.parts.pop(blob, None)
        if parts is None:
            raise e.TransportError(f"fragmented value {blob} was not received on this connection")
        self._release(self.sizes.pop(blob))
        return b"".join(parts)


async def upload(
    send: Callable[[int, bytes], defer.Deferred], raw: bytes, *, size=FRAGMENT_SIZE, window=FRAGMENT_WINDOW
):
    """
    Send ``raw`` in pieces of ``size`` bytes, in order, keeping at most
    ``window`` unacknowledged.

    :param send: ``send(offset, data)`` sends one fragment and returns a
        Deferred firing when the receiver acknowledged it.
    :raises: the first failure of ``send``; the acknowledgements still
        outstanding are then ignored.
    """
    unacknowledged = []
    try:
        for offset in range(0, len(raw), size):
            unacknowledged.append(send(offset, raw[offset : offset + size]))
            if len(unacknowledged) >= window:
                await unacknowledged.pop(0)
        while unacknowledged:
            await unacknowledged.pop(0)
    except BaseException:
        for d in unacknowledged:
            d.addErrback(lambda _: None)
        raise
