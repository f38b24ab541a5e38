"""
Deduplication of client commands (Raft dissertation section 6.3).

Every ``append()`` carries a :class:`~txraft.messages.RequestId`.  When an
entry is applied, the table decides from the log alone whether this request
was applied before, so every member reaches the same decision and a command
retried after a lost reply is applied at most once.  The table travels in
snapshots so that the decision survives log compaction.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Set

from txraft.messages import RequestId


class _Session:
    __slots__ = ("floor", "seen", "order", "last_index")

    def __init__(self) -> None:
        # Every seq <= floor counts as seen; seen holds the ones above it,
        # order the same as a min-heap, so raising the floor costs only the
        # numbers it passes (not a scan of all of seen on every entry).
        self.floor = 0
        self.seen: Set[int] = set()
        self.order: List[int] = []
        self.last_index = 0

    def raise_floor(self, floor: int) -> None:
        self.floor = floor
        order, seen = self.order, self.seen
        while order and order[0] <= floor:
            seen.discard(heapq.heappop(order))

    def add(self, seq: int) -> None:
        self.seen.add(seq)
        heapq.heappush(self.order, seq)


class SessionTable:
    """
    Which requests have been applied.

    Invariant: decisions depend only on the sequence of entries offered to
    :meth:`admit`, so members applying the same log agree.

    :param int max_sessions: sessions kept; the least recently used (by log
        index, which every member agrees on) is forgotten beyond this.
    """

    def __init__(self, max_sessions: int = 10000) -> None:
        self._sessions: Dict[str, _Session] = {}
        self._max_sessions = max_sessions

    def admit(self, request_id: RequestId, index: int) -> bool:
        """
        Record that the entry at ``index`` carrying ``request_id`` is applied.

        :returns: ``True`` when the command must be applied, ``False`` when it
            is a duplicate of a command applied before (or one its caller has
            abandoned).
        """
        session = self._sessions.get(request_id.session)
        if session is None:
            session = self._sessions[request_id.session] = _Session()
            if len(self._sessions) > self._max_sessions:
                self._evict()
        session.last_index = index
        # The caller no longer waits on anything below lowest_pending.
        if request_id.lowest_pending - 1 > session.floor:
            session.raise_floor(request_id.lowest_pending - 1)
        if request_id.seq <= session.floor or request_id.seq in session.seen:
            return False
        session.add(request_id.seq)
        return True

    def applied(self, request_id: RequestId) -> bool:
        """:returns: whether ``request_id`` counts as applied (or abandoned)."""
        session = self._sessions.get(request_id.session)
        return session is not None and (request_id.seq <= session.floor or request_id.seq in session.seen)

    def _evict(self) -> None:
        oldest = min(self._sessions, key=lambda key: (self._sessions[key].last_index, key))
        del self._sessions[oldest]

    def to_wire(self) -> List[List[Any]]:
        """:returns: a msgpack-ready representation."""
        return [[key, s.floor, sorted(s.seen), s.last_index] for key, s in sorted(self._sessions.items())]

    @classmethod
    def from_wire(cls, raw: Any, max_sessions: int = 10000) -> SessionTable:
        """Inverse of :meth:`to_wire`. :raises ValueError: when malformed."""
        table = cls(max_sessions)
        if not isinstance(raw, list):
            raise ValueError("session table must be a list")
        for item in raw:
            if not (isinstance(item, list) and len(item) == 4):
                raise ValueError(f"malformed session record {item!r:.60}")
            key, floor, seen, last_index = item
            session = _Session()
            session.floor, session.seen, session.last_index = int(floor), set(seen), int(last_index)
            session.order = sorted(session.seen)  # a sorted list is a heap
            table._sessions[str(key)] = session
        return table

    def __len__(self) -> int:
        return len(self._sessions)
