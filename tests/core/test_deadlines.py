"""Requests' deadlines: addTimeout's behaviour, from one timer."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from txraft.core.deadlines import Deadlines
from tests.core.harness import result_of


def test_a_request_unanswered_in_time_fails_with_timeout_error_at_its_own_deadline():
    clock = Clock()
    deadlines = Deadlines(clock, 2.0)
    first = deadlines.watch(defer.Deferred())
    clock.advance(0.5)
    second = deadlines.watch(defer.Deferred())
    clock.advance(1.4)
    assert not first.called
    clock.advance(0.1)
    with pytest.raises(defer.TimeoutError):
        result_of(first)
    assert not second.called
    clock.advance(0.5)
    with pytest.raises(defer.TimeoutError):
        result_of(second)
    assert clock.getDelayedCalls() == []


def test_an_answer_in_time_passes_untouched_and_many_requests_share_one_timer():
    clock = Clock()
    deadlines = Deadlines(clock, 2.0)
    answered = [deadlines.watch(defer.Deferred()) for _ in range(1000)]
    assert len(clock.getDelayedCalls()) == 1
    for i, d in enumerate(answered):
        d.callback(i)
    clock.advance(2.0)
    assert [result_of(d) for d in answered] == list(range(1000))
    assert clock.getDelayedCalls() == []


def test_a_failure_or_a_cancellation_by_the_sender_is_not_a_timeout():
    clock = Clock()
    deadlines = Deadlines(clock, 2.0)
    refused = deadlines.watch(defer.Deferred())
    refused.errback(ValueError("refused"))
    with pytest.raises(ValueError):
        result_of(refused)
    cancelled = deadlines.watch(defer.Deferred())
    cancelled.cancel()
    with pytest.raises(defer.CancelledError):
        result_of(cancelled)
    clock.advance(3)


def test_stop_leaves_no_timer():
    clock = Clock()
    deadlines = Deadlines(clock, 2.0)
    deadlines.watch(defer.Deferred())
    deadlines.stop()
    assert clock.getDelayedCalls() == []
    unwatched = deadlines.watch(defer.Deferred())
    assert clock.getDelayedCalls() == []
    assert not unwatched.called
