"""
Membership configurations: who belongs to the cluster, who votes, and what
a majority is while a configuration changes.

A :class:`Configuration` is a value carried in the log (entries of kind
:attr:`~txraft.messages.EntryKind.CONFIG`) and in every snapshot's header.
Each member takes the latest configuration in its log as its own as soon as
the entry is appended, committed or not (Raft dissertation section 4.1).

While a change is under way the configuration is *joint* (Raft paper section
6, dissertation 4.3): ``old`` holds the outgoing members, ``members`` the
incoming ones, and an election or a commit needs a majority of the voters of
each set.  Learners (``voter=False``) receive the log but never vote and never
count towards a majority::

    >>> c = Configuration((Member("a:1"), Member("b:1"), Member("c:1", voter=False)))
    >>> c.quorum_index({"a:1": 7, "b:1": 5, "c:1": 9})
    5
    >>> c.has_majority({"a:1", "c:1"})
    False
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

import msgpack

from txraft.core import quorum

#: Bounds on a configuration read from a log entry or a snapshot header.
MAX_MEMBERS = 255
MAX_TEXT = 1024


@dataclass(frozen=True)
class Member:
    """
    One member of a configuration.

    :ivar id: its ``HOST:PORT``.
    :ivar name: the certificate name it must present (``""``: none recorded).
    :ivar voter: whether it votes and counts towards majorities.
    :ivar promote: for a learner, whether the leader promotes it to voter
        once it has caught up (the dissertation's catch-up phase, section
        4.2.1).
    """

    id: str
    name: str = ""
    voter: bool = True
    promote: bool = False


@dataclass(frozen=True)
class Configuration:
    """
    The members of the cluster at one point of the log.

    Invariant: ids are unique within each set; both sets are sorted by id.

    :ivar members: the members of the (incoming) configuration.
    :ivar old: while joint, the members of the outgoing configuration;
        otherwise ``None``.
    """

    members: Tuple[Member, ...]
    old: Optional[Tuple[Member, ...]] = None

    @classmethod
    def of(cls, members: Iterable[Member], old: Optional[Iterable[Member]] = None) -> "Configuration":
        """Build a configuration from iterables of :class:`Member`, sorted."""
        def ordered(group: Iterable[Member]) -> Tuple[Member, ...]:
            return tuple(sorted(group, key=lambda member: member.id))
        return cls(ordered(members), None if old is None else ordered(old))

    @classmethod
    def bootstrap(cls, ids: Iterable[str], names: Optional[Mapping[str, str]] = None) -> "Configuration":
        """The configuration of a cluster started with fixed ``ids``, all voters."""
        names = names or {}
        return cls.of(Member(i, names.get(i, "")) for i in set(ids))

    @property
    def joint(self) -> bool:
        """Whether a change is half done (old and new sets both decide)."""
        return self.old is not None

    def _groups(self) -> Tuple[Tuple[Member, ...], ...]:
        return (self.members,) if self.old is None else (self.members, self.old)

    # A configuration never changes, and the commit rule asks for its voters
    # on every acknowledgement: what is derived from it is worked out once.

    @functools.cached_property
    def ids(self) -> Tuple[str, ...]:
        """Every member id of either set, sorted."""
        return tuple(sorted({m.id for group in self._groups() for m in group}))

    @functools.cached_property
    def _voting_sets(self) -> Tuple[FrozenSet[str], ...]:
        return tuple(frozenset(m.id for m in group if m.voter) for group in self._groups())

    def voting_sets(self) -> List[FrozenSet[str]]:
        """:returns: the voter ids of each set that must agree (one, or two while joint)."""
        return list(self._voting_sets)

    @functools.cached_property
    def voters(self) -> FrozenSet[str]:
        """Ids that vote in either set."""
        return frozenset().union(*self._voting_sets)

    def is_voter(self, member_id: str) -> bool:
        return member_id in self.voters

    def member(self, member_id: str) -> Optional[Member]:
        """:returns: the :class:`Member` with ``member_id`` (the incoming one first), or ``None``."""
        for group in self._groups():
            for m in group:
                if m.id == member_id:
                    return m
        return None

    def names(self) -> FrozenSet[str]:
        """Certificate names recorded for the members (``""`` left out)."""
        return frozenset(m.name for group in self._groups() for m in group if m.name)

    def has_majority(self, ids: Iterable[str]) -> bool:
        """:returns: whether ``ids`` hold a majority of the voters of every set."""
        ids = set(ids)
        for voters in self._voting_sets:
            if not voters or len(voters & ids) < quorum.majority(len(voters)):
                return False
        return True

    def quorum_index(self, values: Mapping[str, int]) -> int:
        """
        :param values: member id -> a number (a match index, a heartbeat round).
        :returns: the highest number a majority of every voting set has
            reached (0 when a set has no voters).
        """
        best = None
        for voters in self._voting_sets:
            if not voters:
                return 0
            reached = quorum.quorum_index([values.get(i, 0) for i in voters])
            best = reached if best is None else min(best, reached)
        return best or 0

    def leave_joint(self) -> "Configuration":
        """:returns: the configuration that ends this joint one (the incoming set alone)."""
        return Configuration(self.members)

    # -- encoding ------------------------------------------------------------------

    def to_wire(self) -> Dict[str, Any]:
        """
        :returns: the msgpack-ready form: ``{"members": [[id, name, voter,
            promote], ...], "old": [...] or None}``.
        """
        def dump(group: Tuple[Member, ...]) -> List[List[Any]]:
            return [[m.id, m.name, m.voter, m.promote] for m in group]
        return {"members": dump(self.members), "old": None if self.old is None else dump(self.old)}

    @classmethod
    def from_wire(cls, raw: Any, what: str = "configuration") -> "Configuration":
        """Inverse of :meth:`to_wire`. :raises ValueError: naming what is malformed."""
        if type(raw) is not dict or "members" not in raw:
            raise ValueError(f"{what} must be a map with members")
        members = _load_group(raw["members"], f"{what}'s members")
        old = raw.get("old")
        return cls.of(members, None if old is None else _load_group(old, f"{what}'s old members"))

    def encode(self) -> bytes:
        """:returns: the bytes stored as a CONFIG entry's data."""
        data: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)  # msgpack has no type hints
        return data

    @classmethod
    def decode(cls, data: bytes) -> "Configuration":
        """Inverse of :meth:`encode`. :raises ValueError: naming what is malformed."""
        if len(data) > MAX_MEMBERS * 2 * (2 * MAX_TEXT + 16):
            raise ValueError(f"configuration of {len(data)} bytes is too large")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types
            raise ValueError(f"configuration is not a valid msgpack value: {e}") from None
        return cls.from_wire(raw)

    def describe(self) -> str:
        """A short text for logs: ``a:1 b:1 (learner c:1)``, with ``old -> new`` while joint."""
        def text(group: Tuple[Member, ...]) -> str:
            return " ".join(m.id if m.voter else f"learner:{m.id}" for m in group) or "(none)"
        return text(self.members) if self.old is None else f"{text(self.old)} -> {text(self.members)}"


def _load_group(raw: Any, what: str) -> List[Member]:
    if type(raw) is not list or len(raw) > MAX_MEMBERS:
        raise ValueError(f"{what} must be a list of at most {MAX_MEMBERS} members")
    members, seen = [], set()
    for item in raw:
        if (type(item) is not list or len(item) != 4 or type(item[0]) is not str or type(item[1]) is not str
                or type(item[2]) is not bool or type(item[3]) is not bool):
            raise ValueError(f"{what} must be [id, name, voter, promote] lists, got {item!r:.60}")
        if not item[0] or len(item[0]) > MAX_TEXT or len(item[1]) > MAX_TEXT:
            raise ValueError(f"{what}: member id or name empty or longer than {MAX_TEXT}")
        if item[0] in seen:
            raise ValueError(f"{what}: {item[0]} appears twice")
        seen.add(item[0])
        members.append(Member(*item))
    return members
