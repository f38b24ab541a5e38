"""Helpers shared by the storage tests (fixtures live in conftest.py)."""

import functools

from twisted.internet import defer, reactor, task

from txraft.messages import Entry

#: Seconds any one test may take before it fails instead of hanging.
TEST_TIMEOUT = 60


def deferred_test(f):
    """Run ``f`` as inlineCallbacks with a time limit (pytest-twisted waits for the Deferred)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return defer.inlineCallbacks(f)(*args, **kwargs).addTimeout(TEST_TIMEOUT, reactor)

    return wrapper


def turn():
    """:returns: a Deferred that fires on a later reactor turn."""
    return task.deferLater(reactor, 0, lambda: None)


def entry(term, index, data=None):
    return Entry(term=term, index=index, data=b"cmd%d" % index if data is None else data)
