"""
An in-memory :class:`~txraft.interfaces.ITransport`, with faults on demand.

All members of a :class:`MemoryNetwork` share one clock.  Each message and
each reply is delivered after a random delay (so messages overtake each
other), and may be dropped or duplicated; links can be cut one way or both
ways.  A dropped request simply never answers: the sender's RPC timeout
fires, exactly as with a lost TCP connection.  With no faults configured it is
a plain loopback for tests of applications built on txraft.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterable, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txraft import errors
from txraft.interfaces import ITransport


class MemoryNetwork:
    """
    The medium that joins :class:`MemoryTransport` instances.

    :param clock: ``IReactorTime`` used for delivery delays.
    :param rng: ``random.Random`` deciding delays, drops and duplicates.
    :param delay: ``(low, high)`` seconds for each one-way trip.
    :param float drop_rate: chance that a request or a reply is lost.
    :param float duplicate_rate: chance that a request is delivered twice.
    """

    def __init__(self, clock: IReactorTime, rng: Optional[random.Random] = None,
                 delay: Tuple[float, float] = (0.0, 0.0), drop_rate: float = 0.0,
                 duplicate_rate: float = 0.0) -> None:
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(0)
        self.delay = delay
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self._handlers: Dict[str, Any] = {}  # member id -> its IRPCHandler
        self._cut: Set[Tuple[str, str]] = set()  # (sender, receiver) pairs that deliver nothing
        self.delivered = 0
        self.dropped = 0

    def transport(self, member_id: str) -> MemoryTransport:
        """:returns: the :class:`MemoryTransport` of ``member_id``."""
        return MemoryTransport(self, member_id)

    # -- faults ------------------------------------------------------------

    def cut(self, a, b):
        """Stop delivery from ``a`` to ``b`` and from ``b`` to ``a``."""
        self._cut.update({(a, b), (b, a)})

    def partition(self, *groups: Iterable[str]) -> None:
        """Split members into ``groups``: delivery works only inside a group."""
        self._cut.clear()
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def isolate(self, member_id, members):
        """Cut ``member_id`` off from every one of ``members``."""
        for other in members:
            if other != member_id:
                self.cut(member_id, other)

    def heal(self) -> None:
        """Restore every link."""
        self._cut.clear()

    def connected(self, a, b):
        return (a, b) not in self._cut

    # -- delivery ------------------------------------------------------------

    def _trip(self):
        low, high = self.delay
        return low if high <= low else self.rng.uniform(low, high)

    def _lost(self):
        return self.drop_rate > 0 and self.rng.random() < self.drop_rate

    def send(self, sender, receiver, message):
        result = defer.Deferred()
        copies = 2 if self.duplicate_rate > 0 and self.rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            self.clock.callLater(self._trip(), self._arrive, sender, receiver, message, result)
        return result

    def _arrive(self, sender, receiver, message, result):
        handler = self._handlers.get(receiver)
        if handler is None or not self.connected(sender, receiver) or self._lost():
            self.dropped += 1
            return
        self.delivered += 1
        d = handler.receive(message)
        d.addBoth(self._reply, sender, receiver, result)

    def _reply(self, outcome, sender, receiver, result):
        self.clock.callLater(self._trip(), self._return, outcome, sender, receiver, result)

    def _return(self, outcome, sender, receiver, result):
        if result.called:
            return  # answered already (a duplicate), or abandoned by the sender
        if sender not in self._handlers or not self.connected(receiver, sender) or self._lost():
            self.dropped += 1
            if hasattr(outcome, "trap"):
                outcome.trap(Exception)  # a lost error is not an unhandled error
            return
        if hasattr(outcome, "trap"):
            result.errback(outcome)
        else:
            result.callback(outcome)


@implementer(ITransport)
class MemoryTransport:
    """One member's attachment to a :class:`MemoryNetwork`."""

    def __init__(self, network, member_id):
        self.network = network
        self.id = member_id

    def start(self, handler):
        self.network._handlers[self.id] = handler
        return defer.succeed(None)

    def send(self, peer, message):
        if self.network._handlers.get(self.id) is None:
            return defer.fail(errors.TransportError(f"{self.id} is not started"))
        return self.network.send(self.id, peer, message)

    def stop(self) -> defer.Deferred[None]:
        self.network._handlers.pop(self.id, None)
        return defer.succeed(None)
