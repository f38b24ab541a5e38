"""
Deadlines for the requests a member sends: one timer for all of them.

Every request a member sends must fail with ``defer.TimeoutError`` if no
answer comes within ``config.rpc_timeout``.  ``Deferred.addTimeout`` arms a
``DelayedCall`` per request; a leader sends thousands of requests a second,
and each DelayedCall costs a heap insertion, a cancellation and the reactor's
work to drop it.  Every request here has the same timeout, so deadlines come in
the order requests are sent: a queue in that order and one timer, armed for the
oldest deadline, do the same job.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["Deadlines"]


class Deadlines:
    """
    Fails each watched Deferred that has not fired ``timeout`` seconds after
    it was watched: it is cancelled, and the cancellation reaches its
    callbacks as ``defer.TimeoutError`` (as with ``addTimeout``).

    :param clock: the ``IReactorTime`` deadlines are measured by.
    :param float timeout: seconds a watched Deferred may take.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        # (deadline, Deferred), oldest first; fired ones leave lazily.
        self._watched: Deque[Tuple[float, defer.Deferred[Any]]] = deque()
        self._call: Optional[IDelayedCall] = None
        self._expiring: Optional[defer.Deferred[Any]] = None
        self._stopped = False

    def watch(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """:returns: ``d``, which fails with ``defer.TimeoutError`` unless it fires within the timeout."""
        if self._stopped:
            return d
        self._watched.append((self._clock.seconds() + self._timeout, d))
        d.addErrback(self._timed_out, d)
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._expire)
        return d

    def _timed_out(self, failure: Failure, d: defer.Deferred[Any]) -> Failure:
        if d is self._expiring and failure.check(defer.CancelledError):
            raise defer.TimeoutError(self._timeout, "deferred")
        return failure

    def _expire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        watched = self._watched
        while watched and watched[0][0] <= now:
            _, d = watched.popleft()
            if not d.called:
                self._expiring = d
                try:
                    d.cancel()
                finally:
                    self._expiring = None
        while watched and watched[0][1].called:
            watched.popleft()
        if watched and not self._stopped:
            self._call = self._clock.callLater(max(watched[0][0] - now, 0), self._expire)

    def stop(self) -> None:
        """Stop the timer; Deferreds still watched are left to their senders (a stopped transport fails them)."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._watched.clear()
