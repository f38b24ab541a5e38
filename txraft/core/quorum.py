"""Majorities, the arithmetic every Raft decision rests on."""

from typing import Iterable


def majority(size: int) -> int:
    """
    The number of members that forms a quorum: a strict majority.

    The seed used ``(n + 1) / 2``, which lets two members of a four-member
    cluster (or one of two) decide alone; two such halves could then decide
    differently.
    """
    if size < 1:
        raise ValueError(f"a cluster needs at least one member, got {size}")
    return size // 2 + 1


def quorum_index(match_indexes: Iterable[int]) -> int:
    """
    :returns: the highest index stored on a majority, given each member's
        highest stored index (Raft paper section 5.3/5.4: the candidate
        commit index, before the current-term check).
    """
    ordered = sorted(match_indexes, reverse=True)
    return ordered[majority(len(ordered)) - 1]
