"""
A log directory written by txraft 0.1.0 opens with this code, unchanged.

``fixtures/logdir-0.1.0`` was written by ``fixtures/make_logdir.py`` run on
the 0.1.0 tree (commit 8482018): a one-member key-value cluster, 40 puts and
a delete, with a snapshot taken at index 28 and entries after it.  Opening it
exercises the file names, the record framing, the snapshot header and the
session table as that release wrote them.
"""

import shutil
from pathlib import Path

from twisted.internet import reactor

from tests.storage.helpers import deferred_test
from txraft.config import RaftConfig
from txraft.kv import KeyValueStore, encode_put
from txraft.member import Raft
from txraft.storage.disk import DiskStorage
from txraft.transport.memory import MemoryNetwork

FIXTURE = Path(__file__).parent / "fixtures" / "logdir-0.1.0"
MEMBER = "127.0.0.1:7001"


def member(log_dir):
    config = RaftConfig(log_dir=str(log_dir), listen=MEMBER, snapshot_threshold=25,
                        heartbeat=0.02, election_timeout=0.05, insecure=True)
    store = KeyValueStore()
    raft = Raft(config, store, reactor=reactor, transport=MemoryNetwork(reactor).transport(MEMBER),
                storage=DiskStorage(str(log_dir), fsync="always", reactor=reactor))
    return raft, store


def expected_items():
    return {f"k{i:02d}": b"v%d" % i for i in range(40) if i != 7}


@deferred_test
def test_a_0_1_0_log_directory_opens_and_keeps_every_write(tmp_path):
    log_dir = tmp_path / "logdir"
    shutil.copytree(FIXTURE, log_dir)
    raft, store = member(log_dir)
    yield raft.start()
    try:
        yield raft.read_index()
        assert raft.status().last_index >= 42
        assert raft.status().term >= 1
        assert dict(store.items()) == expected_items()
        yield raft.append(encode_put("after", b"upgrade"))
    finally:
        yield raft.stop()
    # and what this code wrote beside the old files opens again
    raft, store = member(log_dir)
    yield raft.start()
    try:
        yield raft.read_index()
        assert dict(store.items()) == {**expected_items(), "after": b"upgrade"}
    finally:
        yield raft.stop()
