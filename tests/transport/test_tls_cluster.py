"""
Whole members (txraft.member.Raft) over AMP on mutual TLS, on loopback:
three members elect a leader and replicate appends; a member whose
certificate name is not in the ACL is refused while the cluster keeps working.
"""

import socket

import pytest_twisted
from twisted.internet import defer, reactor, task

from txraft.config import RaftConfig
from txraft.member import Raft
from txraft.testing import RecordingClient

from .conftest import MEMBERS, bounded


def free_port(host):
    """A port free on ``host`` right now (each member has its own address, so clashes are unlikely)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TLSCluster:
    def __init__(self, pki):
        self.pki = pki
        self.rafts = []

    def build(self, listens, names, members, acl=tuple(MEMBERS)):
        built = []
        for listen, name in zip(listens, names):
            files = self.pki.files(name)
            config = RaftConfig(listen=listen, heartbeat=0.05, rpc_timeout=1.0, request_timeout=10.0,
                                acl=tuple(acl), **files)
            raft = Raft(config, RecordingClient(), reactor=reactor)
            for member in members:
                raft.add_member(member)
            self.rafts.append(raft)
            built.append(raft)
        return built

    async def stop(self):
        await defer.gatherResults([raft.stop() for raft in self.rafts]).addTimeout(10, reactor)


@pytest_twisted.async_yield_fixture
async def tls_cluster(clean_reactor, pki):
    cluster = TLSCluster(pki)
    yield cluster
    await cluster.stop()
    await task.deferLater(reactor, 0.01, lambda: None)


async def agreed_leader(rafts, timeout=10.0):
    """Wait until exactly one leader is known to every running member."""
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        statuses = [r.status() for r in rafts]
        leaders = {s.id for s in statuses if s.role == "leader"}
        if len(leaders) == 1 and all(s.leader in leaders for s in statuses):
            return leaders.pop()
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"no agreed leader: {[(s.id, s.role, s.leader, s.term) for s in statuses]}")


async def applied_everywhere(rafts, index, timeout=10.0):
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        if all(index in r.client.applied for r in rafts):
            return [r.client.applied[index] for r in rafts]
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"index {index} not applied everywhere")


def addresses(n):
    return [f"127.0.0.{10 + i}:{free_port(f'127.0.0.{10 + i}')}" for i in range(1, n + 1)]


@bounded(30)
async def test_three_members_over_tls_elect_a_leader_and_replicate(tls_cluster):
    listens = addresses(3)
    rafts = tls_cluster.build(listens, MEMBERS, listens)
    await defer.gatherResults([r.start() for r in rafts])
    leader = await agreed_leader(rafts)
    follower = next(r for r in rafts if r.id != leader)
    index = await follower.append(b"via a follower")
    assert await applied_everywhere(rafts, index) == [b"via a follower"] * 3
    by_id = {r.id: r for r in rafts}
    big = b"x" * (1024 * 1024)  # bigger than one AMP value: fragments on every hop
    index = await by_id[leader].append(big)
    assert await applied_everywhere(rafts, index) == [big] * 3


@bounded(30)
async def test_a_member_whose_name_is_not_in_the_acl_is_refused_and_the_cluster_keeps_working(tls_cluster, logged):
    listens = addresses(4)
    rafts = tls_cluster.build(listens[:3], MEMBERS, listens[:3])
    # The outsider believes it is a fourth member and keeps standing for election.
    (outsider,) = tls_cluster.build(listens[3:], ["outsider"], listens, acl=MEMBERS + ["outsider"])
    await defer.gatherResults([r.start() for r in rafts + [outsider]])
    leader = await agreed_leader(rafts)
    for i in range(3):
        index = await rafts[i].append(b"command %d" % i)
        assert await applied_everywhere(rafts, index) == [b"command %d" % i] * 3
    outsider.start_election()
    index = await rafts[0].append(b"after the outsider's election")
    assert await applied_everywhere(rafts, index) == [b"after the outsider's election"] * 3
    assert await agreed_leader(rafts) == leader
    assert outsider.status().role != "leader"
    assert outsider.client.applied == {}
    assert any("refused peer 127.0.0.14" in line and "outsider" in line for line in logged)
