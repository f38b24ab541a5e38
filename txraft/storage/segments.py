"""
The log in memory: the files it lives in, and where each entry lies in them.

A :class:`Segment` is one log file and the descriptors the storage holds on
it; a :class:`LogIndex` keeps, for every entry of the log, only the segment,
offset and length of its record (16 bytes an entry) and the terms as runs, so
a log of any size costs little memory.  Use it like this::

    index = LogIndex(base_index=0, base_term=0)
    index.add(1, 1, segment, offset, length)   # entry 1, term 1, at offset
    index.term_at(1)                           # 1
    segment, offset, length = index.locate(1)  # where to pread it from
    index.truncate_from(1)                     # a conflicting entry replaces it
"""

from __future__ import annotations

import bisect
import os
from array import array

__all__ = ["Segment", "LogIndex"]


class Segment:
    """
    One log file.

    :ivar path: its path.
    :ivar key: ``(index, term)`` of its base, parsed from the name.
    :ivar rfd: descriptor the reactor thread reads entries through (``None``
        until the worker has created the file).
    :ivar wfd: descriptor the worker appends through (only the active log has one).
    """

    def __init__(self, path, key):
        self.path = path
        self.key = key
        self.rfd = None
        self.wfd = None

    def close(self):
        """Close the descriptors this segment still has."""
        for name in ("rfd", "wfd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


class LogIndex:
    """
    Where each entry of the log lives, without the entries themselves.

    Invariants: entries ``base_index + 1 .. last_index`` are stored;
    ``offsets[i - first_index]`` and ``lengths[...]`` locate the record of entry
    ``i`` in the segment with the greatest start ``<= i``; terms are kept as runs
    (``term_starts[k]`` is the first index of a run of ``term_values[k]``), since
    terms change rarely along a log.
    """

    def __init__(self, base_index, base_term):
        self.base_index = base_index
        self.base_term = base_term
        self.offsets = array("Q")
        self.lengths = array("Q")
        self.term_starts = []
        self.term_values = []
        self.segment_starts = []
        self.segments = []

    @property
    def first_index(self):
        return self.base_index + 1

    @property
    def last_index(self):
        return self.base_index + len(self.offsets)

    def term_at(self, index):
        """:returns: the term of entry ``index`` (the base included), or ``None`` if not held."""
        if index == self.base_index:
            return self.base_term
        if not self.base_index < index <= self.last_index:
            return None
        return self.term_values[bisect.bisect_right(self.term_starts, index) - 1]

    def locate(self, index):
        """:returns: ``(segment, offset, length)`` of the record of entry ``index``."""
        k = index - self.first_index
        segment = self.segments[bisect.bisect_right(self.segment_starts, index) - 1]
        return segment, self.offsets[k], self.lengths[k]

    def truncate_from(self, index):
        """Forget every entry at or after ``index``."""
        if index > self.last_index:
            return
        del self.offsets[index - self.first_index :]
        del self.lengths[index - self.first_index :]
        k = bisect.bisect_left(self.term_starts, index)
        del self.term_starts[k:], self.term_values[k:]
        k = bisect.bisect_left(self.segment_starts, index)
        del self.segment_starts[k:], self.segments[k:]

    def add(self, index, term, segment, offset, length):
        """Record entry ``index`` (which must be ``last_index + 1``)."""
        assert index == self.last_index + 1, (index, self.last_index)
        self.offsets.append(offset)
        self.lengths.append(length)
        if not self.term_values or self.term_values[-1] != term:
            self.term_starts.append(index)
            self.term_values.append(term)
        if not self.segments or self.segments[-1] is not segment:
            self.segment_starts.append(index)
            self.segments.append(segment)
