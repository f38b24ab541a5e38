"""
Fixtures of the storage tests: every test fails if it leaves DelayedCalls or
storage worker threads behind, and ``storages`` closes what a test opened.
"""

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import Logger

from txraft.storage.disk import DiskStorage


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fail a test that leaves DelayedCalls or storage worker threads behind."""
    before = set(reactor.getDelayedCalls())
    yield
    calls = [c for c in reactor.getDelayedCalls() if c not in before]
    for call in calls:
        call.cancel()
    workers = [t.name for t in threading.enumerate() if "txraft-disk" in t.name]
    assert not calls, f"DelayedCalls left behind: {calls}"
    assert not workers, f"storage worker threads left running: {workers}"


@pytest.fixture
def storages():
    """
    Opens storages and closes every one of them after the test, so that no
    worker thread outlives it.  Call as ``storage = yield storages(path, ...)``.
    """
    opened = []

    def open_storage(log_dir, events=None, **kwargs):
        storage = DiskStorage(log_dir, reactor=reactor, **kwargs)
        if events is not None:
            storage.log = Logger(observer=events)
        opened.append(storage)
        return storage.open()

    yield open_storage
    for storage in opened:
        pytest_twisted.blockon(storage.close().addErrback(lambda _: None))


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "member")
