"""
Shared fixtures.

``clean_reactor`` (autouse) fails any test that leaves the global reactor
dirty: a pending DelayedCall, a listening port or an open connection.  Both
pytest-twisted and trial would otherwise let the leak poison later tests.
"""

import pytest
from twisted.internet import reactor


def _selectables():
    # The reactor's own wakers are not the test's business.
    internal = getattr(reactor, "_internalReaders", set())
    return (set(reactor.getReaders()) | set(reactor.getWriters())) - set(internal)


@pytest.fixture(autouse=True)
def clean_reactor():
    before_calls = set(reactor.getDelayedCalls())
    before_selectables = _selectables()
    yield
    leftover_calls = [c for c in reactor.getDelayedCalls() if c not in before_calls and c.active()]
    leftover_selectables = _selectables() - before_selectables
    for call in leftover_calls:
        call.cancel()
    for selectable in leftover_selectables:
        closer = getattr(selectable, "abortConnection", None) or getattr(selectable, "stopListening", None)
        if closer is not None:
            closer()
    problems = []
    if leftover_calls:
        problems.append("pending DelayedCalls: " + ", ".join(repr(c) for c in leftover_calls[:5]))
    if leftover_selectables:
        problems.append("open sockets: " + ", ".join(repr(s) for s in list(leftover_selectables)[:5]))
    if problems:
        pytest.fail("dirty reactor after test: " + "; ".join(problems))
