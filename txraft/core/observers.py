"""
Telling the member API, metrics and the application what the core did.

The core holds one :class:`Observers`, a composite
:class:`~txraft.interfaces.IRaftObserver` that passes each event to every
registered observer in registration order.  :class:`ClientObserver` is the
first of them: it delivers ``leader_changed`` to the application's
:class:`~txraft.interfaces.IRaftClient`, so that event has a single path.
:class:`RaftObserver` is a base with every method doing nothing, for observers
that care about a few events.
"""

from __future__ import annotations

from typing import Any, List

from twisted.logger import Logger
from zope.interface import implementer

from txraft.interfaces import IRaftObserver
from txraft.messages import Entry, SnapshotMeta


@implementer(IRaftObserver)
class RaftObserver:
    """An :class:`~txraft.interfaces.IRaftObserver` that ignores every event; subclass it."""

    def applied(self, entry: Entry, outcome: Any) -> None:
        pass

    def applied_through(self, index: int) -> None:
        pass

    def leader_changed(self, leader: str, term: int) -> None:
        pass

    def restored(self, meta: SnapshotMeta) -> None:
        pass

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        pass

    def configuration_changed(self, configuration: Any) -> None:
        pass


class ClientObserver(RaftObserver):
    """
    Delivers leader changes to the application.

    :param me: this member's id, passed to ``client.leader_changed(me, leader)``.
    :param client: the :class:`~txraft.interfaces.IRaftClient`.
    """

    def __init__(self, me: str, client: Any) -> None:
        self.me = me
        self.client = client

    def leader_changed(self, leader: str, term: int) -> None:
        self.client.leader_changed(self.me, leader)


_EVENTS = ("applied", "applied_through", "leader_changed", "restored", "snapshot_taken",
           "configuration_changed")


@implementer(IRaftObserver)
class Observers:
    """
    Every observer of one core, notified in the order they were added.  An
    observer that raises is logged and does not stop the others, nor the core.
    """

    log = Logger()

    def __init__(self) -> None:
        self._observers: List[Any] = []
        self._rebuild()

    def add(self, observer: Any) -> None:
        """Register an :class:`~txraft.interfaces.IRaftObserver` (once)."""
        if observer not in self._observers:
            self._observers.append(observer)
            self._rebuild()

    def remove(self, observer: Any) -> None:
        """Stop notifying ``observer``; unknown observers are ignored."""
        if observer in self._observers:
            self._observers.remove(observer)
            self._rebuild()

    def _rebuild(self) -> None:
        # Bound methods per event, leaving out RaftObserver's do-nothing ones:
        # applied() runs once per entry, so the core should not pay for
        # observers that ignore it.  A new list each time, so notifying never
        # sees a list change under it.
        self._methods = {
            event: [getattr(o, event) for o in self._observers
                    if getattr(type(o), event, None) is not getattr(RaftObserver, event)]
            for event in _EVENTS
        }

    def _each(self, event: str, *args: Any) -> None:
        for method in self._methods[event]:
            try:
                method(*args)
            except Exception:
                self.log.failure("{method!r} raised", method=method)

    def applied(self, entry: Entry, outcome: Any) -> None:
        self._each("applied", entry, outcome)

    def applied_through(self, index: int) -> None:
        self._each("applied_through", index)

    def leader_changed(self, leader: str, term: int) -> None:
        self._each("leader_changed", leader, term)

    def restored(self, meta: SnapshotMeta) -> None:
        self._each("restored", meta)

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        self._each("snapshot_taken", meta)

    def configuration_changed(self, configuration: Any) -> None:
        self._each("configuration_changed", configuration)
