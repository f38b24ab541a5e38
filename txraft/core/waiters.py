"""Deferreds waiting for a number to reach a mark (a heartbeat round, an applied index)."""

from __future__ import annotations

from twisted.internet import defer


class Waiters:
    """
    Deferreds each waiting for a counter that only grows to reach its mark:
    ReadIndex reads wait for a confirmed heartbeat round, the member API's
    reads for an applied index.
    """

    __slots__ = ("_waiting",)

    def __init__(self):
        self._waiting = []  # [(mark, Deferred)]

    def __bool__(self):
        return bool(self._waiting)

    def wait(self, mark):
        """:returns: a Deferred fired by :meth:`release_through` once ``mark`` is reached."""
        d = defer.Deferred()
        self._waiting.append((mark, d))
        return d

    def release_through(self, reached, value):
        """Fire every Deferred whose mark is at most ``reached`` with ``value``."""
        if not self._waiting:
            return
        ready = [w for w in self._waiting if w[0] <= reached]
        self._waiting = [w for w in self._waiting if w[0] > reached]
        for _, d in ready:
            d.callback(value)

    def fail(self, error):
        """Fail every waiting Deferred with ``error``."""
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(error)
