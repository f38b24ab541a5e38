"""Deferreds waiting for a number to reach a mark (a heartbeat round, an applied index)."""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import defer


class Waiters:
    """
    Deferreds each waiting for a counter that only grows to reach its mark:
    ReadIndex reads wait for a confirmed heartbeat round, the member API's
    reads for an applied index.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: List[Tuple[int, defer.Deferred[Any]]] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def wait(self, mark: int) -> defer.Deferred[Any]:
        """:returns: a Deferred fired by :meth:`release_through` once ``mark`` is reached."""
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((mark, d))
        return d

    def release_through(self, reached: int, value: Any) -> None:
        """Fire every Deferred whose mark is at most ``reached`` with ``value``."""
        if not self._waiting:
            return
        ready = [w for w in self._waiting if w[0] <= reached]
        self._waiting = [w for w in self._waiting if w[0] > reached]
        for _, d in ready:
            d.callback(value)

    def fail(self, error: BaseException) -> None:
        """Fail every waiting Deferred with ``error``."""
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(error)
