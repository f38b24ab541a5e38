"""
A busy leader keeps its leadership: a slow ``apply()`` is spread over many
reactor turns, so the leader's heartbeats (and the followers' replies) are
never stuck behind it for an election timeout.

The leader runs in this process with a deliberately slow application; its two
followers are ``twistd raft`` processes, whose election timers keep running
while the leader works (members sharing one process would stall together,
and would hide the problem).
"""

import random
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from txraft.config import RaftConfig
from txraft.core.observers import RaftObserver
from txraft.kv import KeyValueStore, encode_put
from txraft.member import Raft
from txraft.storage.memory import MemoryStorage
from txraft.testing.processes import LocalCluster

pytestmark = pytest.mark.slow

HEARTBEAT, ELECTION = 0.1, 0.4


class SlowStore(KeyValueStore):
    """The key-value store, spending ``cost`` seconds of CPU in every ``apply()`` while ``slow``."""

    def __init__(self, cost):
        super().__init__()
        self.cost = cost
        self.slow = False

    def apply(self, command, index):
        if self.slow:
            end = time.perf_counter() + self.cost
            while time.perf_counter() < end:
                pass
        return super().apply(command, index)


class LeaderChanges(RaftObserver):
    def __init__(self):
        self.changes = []

    def leader_changed(self, leader, term):
        self.changes.append((leader, term))


async def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def slow_apply_keeps_the_leader(directory):
    timing = ["--heartbeat", str(HEARTBEAT), "--election-timeout", str(ELECTION)]
    cluster = LocalCluster(directory, size=3, tls=False, extra_args=timing)
    here = cluster.members[0]
    config = RaftConfig(listen=here.id, heartbeat=HEARTBEAT, election_timeout=ELECTION, insecure=True,
                        request_timeout=60.0)
    store = SlowStore(cost=0.01)
    raft = Raft(config, store, reactor=reactor, storage=MemoryStorage(), rng=random.Random(1))
    for member in cluster.members:
        raft.add_member(member.id)
    try:
        await raft.start()
        for member in cluster.members[1:]:
            cluster.start(member)
        await until(lambda: raft.status().leader, 30, "a leader")
        asked = [0.0]

        async def we_lead():
            if raft.status().role == "follower" and time.monotonic() - asked[0] > 2:
                # Stand for election (again, if a busy machine made the last try fail).
                asked[0] = time.monotonic()
                raft.start_election()
            statuses = await cluster.statuses(cluster.members[1:])
            return raft.status().role == "leader" and all(
                s is not None and s["leader"] == here.id for s in statuses.values())

        await cluster.wait_for(we_lead, 60, "this member to lead")
        term = raft.status().term
        changes = LeaderChanges()
        raft.core.add_observer(changes)
        # 200 commands of 10 ms of apply() each: two seconds of work for the
        # leader, five election timeouts, committed all at once.
        store.slow = True
        results = await defer.gatherResults([raft.append(encode_put(f"k{i}", b"v")) for i in range(200)])
        store.slow = False
        assert len(results) == 200
        last = raft.status().applied_index

        async def followers_caught_up():
            statuses = await cluster.statuses(cluster.members[1:])
            return all(s is not None and s["applied_index"] >= last for s in statuses.values()) and statuses

        statuses = await cluster.wait_for(followers_caught_up, 30, "the followers to apply everything")
        assert changes.changes == []
        assert raft.status().role == "leader" and raft.status().term == term
        for member_id, status in statuses.items():
            assert status["term"] == term and status["leader"] == here.id, (member_id, status)
    finally:
        await cluster.stop()
        cluster.kill_all_now()
        await raft.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_apply_on_the_leader_does_not_cost_it_leadership(tmp_path):
    await defer.ensureDeferred(slow_apply_keeps_the_leader(str(tmp_path))).addTimeout(120, reactor)
