"""The member API (txraft.Raft): append from any member, errors, status, lifecycle."""

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from txraft import RaftClient, errors
from txraft.interfaces import IRaftClient, IStorage, ITransport
from txraft.member import Raft
from txraft.config import RaftConfig
from txraft.storage.memory import MemoryStorage
from txraft.testing import RecordingClient, SafetyChecker, SimulatedCluster
from txraft.transport.memory import MemoryNetwork


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def settled_cluster(size=3, **kwargs):
    cluster = SimulatedCluster(size, seed=kwargs.pop("seed", 1), checker=SafetyChecker(), **kwargs)
    cluster.start()
    assert cluster.wait_for_leader() is not None
    return cluster


def test_interfaces_are_implemented():
    from txraft.interfaces import IRPCHandler

    clock_storage = MemoryStorage()
    network = MemoryNetwork(None)
    verifyObject(IStorage, clock_storage)
    verifyObject(ITransport, network.transport("127.0.0.1:1"))
    verifyObject(IRaftClient, RaftClient())
    cluster = settled_cluster()
    member = cluster.members[cluster.ids[0]]
    verifyObject(IRPCHandler, member)
    verifyObject(IRPCHandler, member.core)


def test_append_on_a_follower_is_forwarded_and_returns_the_local_apply_result():
    cluster = settled_cluster()
    leader = cluster.agreed_leader()
    follower = next(i for i in cluster.ids if i != leader)
    result = outcome(cluster.members[follower].append(b"hello"))
    cluster.run(0.5)
    assert len(result) == 1 and isinstance(result[0], int)
    index = result[0]
    for member_id in cluster.ids:
        assert cluster.clients[member_id].applied[index] == b"hello"


def test_append_rejects_non_bytes_at_once():
    cluster = settled_cluster()
    with pytest.raises(TypeError, match="bytes"):
        cluster.members[cluster.ids[0]].append("text")


class Failing(RecordingClient):
    def apply(self, command, index):
        super().apply(command, index)
        if command == b"boom":
            raise ValueError("no booms here")
        return index


def test_apply_exception_reaches_the_caller_as_apply_error():
    cluster = settled_cluster(client_factory=Failing)
    result = outcome(cluster.members[cluster.ids[0]].append(b"boom"))
    cluster.run(0.5)
    assert result[0].check(errors.ApplyError)
    assert isinstance(result[0].value.cause, ValueError)
    # The entry still counts as applied, everywhere.
    assert all(b"boom" in cluster.clients[i].applied.values() for i in cluster.ids)


def test_append_without_a_quorum_times_out_with_a_clear_error():
    cluster = settled_cluster(request_timeout=2.0)
    lonely = cluster.ids[0]
    cluster.network.isolate(lonely, cluster.ids)
    result = outcome(cluster.members[lonely].append(b"nobody hears me"))
    cluster.run(2.5)
    assert result and result[0].check(errors.NoQuorum)
    assert isinstance(result[0].value, errors.Timeout)
    assert "no leader" in str(result[0].value)


def test_duplicated_messages_never_apply_a_command_twice():
    cluster = settled_cluster(duplicate_rate=1.0)
    follower = next(i for i in cluster.ids if i != cluster.agreed_leader())
    results = [outcome(cluster.members[follower].append(b"once-%d" % i)) for i in range(20)]
    cluster.run(2.0)
    assert all(len(r) == 1 and isinstance(r[0], int) for r in results)
    for member_id in cluster.ids:
        commands = list(cluster.clients[member_id].applied.values())
        assert sorted(commands) == sorted(b"once-%d" % i for i in range(20))


def test_forwarded_append_retried_after_lost_reply_is_applied_once():
    """A follower whose forwarded Append loses its reply retries with the same
    request id; the session table drops the second copy (dissertation 6.3)."""
    cluster = settled_cluster()
    leader = cluster.agreed_leader()
    follower = next(i for i in cluster.ids if i != leader)
    network = cluster.network
    original = network._return
    lost = []

    def lose_first_forward_reply(outcome_, sender, receiver, result):
        from txraft.messages import ForwardAppendReply

        if isinstance(outcome_, ForwardAppendReply) and not lost:
            lost.append(outcome_)
            return  # the leader placed it; the follower never hears back
        original(outcome_, sender, receiver, result)

    network._return = lose_first_forward_reply
    result = outcome(cluster.members[follower].append(b"exactly-once"))
    cluster.run(3.0)
    assert lost, "the test did not lose the reply"
    assert len(result) == 1 and isinstance(result[0], int)
    for member_id in cluster.ids:
        applied = list(cluster.clients[member_id].applied.values())
        assert applied.count(b"exactly-once") == 1


def test_status_reports_the_cluster_view():
    cluster = settled_cluster()
    leader = cluster.agreed_leader()
    cluster.members[leader].append(b"x")
    cluster.run(0.5)
    for member_id in cluster.ids:
        status = cluster.members[member_id].status()
        assert status.id == member_id
        assert status.leader == leader
        assert status.role == ("leader" if member_id == leader else "follower")
        assert status.commit_index == status.applied_index == status.last_index == 2
        assert status.members == tuple(sorted(cluster.ids))
        assert status.term >= 1


def test_stopped_members_cannot_restart():
    cluster = settled_cluster()
    member = cluster.members[cluster.ids[0]]
    member.stop()
    assert member.status().role == "stopped"
    failure = outcome(member.start())
    assert failure[0].check(errors.Stopped)
    assert outcome(member.append(b"late"))[0].check(errors.Stopped)


def test_stop_fails_waiting_appends_with_stopped():
    cluster = settled_cluster()
    member_id = cluster.ids[0]
    cluster.network.isolate(member_id, cluster.ids)
    waiting = outcome(cluster.members[member_id].append(b"pending"))
    cluster.members[member_id].stop()
    assert waiting[0].check(errors.Stopped)


def test_leader_changed_hook_is_called():
    seen = []

    class Watching(RecordingClient):
        def leader_changed(self, me, leader):
            seen.append((me, leader))

    cluster = settled_cluster(client_factory=Watching)
    leader = cluster.agreed_leader()
    assert (leader, leader) in seen
    assert all((member_id, leader) in seen for member_id in cluster.ids)


def test_read_index_waits_for_everything_committed_before_it():
    cluster = settled_cluster()
    leader = cluster.agreed_leader()
    follower = next(i for i in cluster.ids if i != leader)
    # Cut the follower off so it has not applied the write when the read starts.
    cluster.network.cut(leader, follower)
    write = outcome(cluster.members[leader].append(b"written"))
    cluster.run(0.2)
    assert isinstance(write[0], int)
    assert write[0] not in cluster.clients[follower].applied
    cluster.heal()
    read = outcome(cluster.members[follower].read_index())
    assert not read
    cluster.run(1.0)
    assert isinstance(read[0], int)
    assert read[0] >= write[0]
    assert cluster.clients[follower].applied[write[0]] == b"written"


def test_single_member_cluster_commits_alone():
    cluster = settled_cluster(size=1)
    result = outcome(cluster.members[cluster.ids[0]].append(b"solo"))
    cluster.run(0.2)
    assert result == [2]


def test_config_rejects_bad_values_with_the_setting_named():
    with pytest.raises(errors.ConfigurationError, match="listen"):
        RaftConfig(listen="nonsense")
    with pytest.raises(errors.ConfigurationError, match="heartbeat"):
        RaftConfig(heartbeat=0)
    with pytest.raises(errors.ConfigurationError, match="fsync"):
        RaftConfig(fsync="sometimes")
    with pytest.raises(errors.ConfigurationError, match="election_timeout"):
        RaftConfig(heartbeat=1.0, election_timeout=0.5)
    with pytest.raises(errors.ConfigurationError, match="trailing_entries must be a non-negative integer"):
        RaftConfig(trailing_entries=-1)


def test_raft_defaults_to_memory_storage_without_log_dir():
    from twisted.internet.task import Clock

    clock = Clock()
    network = MemoryNetwork(clock)
    member = Raft(RaftConfig(listen="127.0.0.1:7000"), RecordingClient(), reactor=clock,
                  transport=network.transport("127.0.0.1:7000"))
    member.start()
    clock.advance(1.0)
    assert member.status().role == "leader"
    result = outcome(member.append(b"solo"))
    clock.advance(0.1)
    assert result == [2]
    member.stop()


def test_a_returning_partitioned_member_does_not_depose_the_leader():
    """With PreVote (dissertation 9.6) a member cut off for a long time does not
    inflate its term, so healing the partition keeps the leader and its term."""
    cluster = settled_cluster(size=5)
    leader = cluster.agreed_leader()
    term = cluster.members[leader].core.term
    loner = next(i for i in cluster.ids if i != leader)
    cluster.network.isolate(loner, cluster.ids)
    cluster.run(5.0)  # dozens of election timeouts
    assert cluster.members[loner].core.term == term
    cluster.heal()
    cluster.run(1.0)
    assert cluster.agreed_leader() == leader
    assert cluster.members[leader].core.term == term


def test_a_member_whose_disk_was_wiped_catches_up_from_a_snapshot():
    """The seed's TestRemoteSnapshot on the simulator: the leader notices that the
    follower lost entries it had acknowledged and sends it a snapshot."""
    from txraft.storage.memory import MemoryStorage

    cluster = settled_cluster(snapshot_threshold=10)
    leader = cluster.agreed_leader()
    results = []
    for i in range(40):
        cluster.members[leader].append(b"w%d" % i).addBoth(results.append)
    cluster.run(2.0)
    assert len(results) == 40
    wiped = next(i for i in cluster.ids if i != leader)
    cluster.crash(wiped)
    cluster.storages[wiped] = MemoryStorage(cluster.clock, cluster.fsync_delay)
    cluster.restart(wiped)
    assert cluster.run_until(cluster.converged, timeout=5.0)
    assert cluster.clients[wiped].restores == 1
    assert cluster.clients[wiped].applied == cluster.clients[leader].applied


def test_append_placed_by_a_deposed_leader_completes_through_the_next_one():
    """The entry a leader placed may vanish with it, and with no later traffic
    nothing is ever written at that index again; the member submits its waiting
    commands again when a new leader appears (applied at most once)."""
    cluster = settled_cluster(size=3)
    leader = cluster.agreed_leader()
    result = outcome(cluster.members[leader].append(b"orphan"))
    cluster.network.isolate(leader, cluster.ids)  # before the entry leaves
    cluster.run(1.0)  # the others elect a new leader; the old one steps down
    assert cluster.agreed_leader() is None or cluster.agreed_leader() != leader
    cluster.heal()
    cluster.run(2.0)
    assert result and isinstance(result[0], int), result
    for member_id in cluster.ids:
        assert list(cluster.clients[member_id].applied.values()).count(b"orphan") == 1


@pytest_twisted.ensureDeferred
async def test_listening_on_port_zero_makes_the_bound_address_the_member_id():
    from twisted.internet import reactor

    from txraft.transport.amp import AMPTransport

    config = RaftConfig(listen="127.0.0.41:0", heartbeat=0.05, insecure=True)
    member = Raft(config, RecordingClient(), reactor=reactor,
                  transport=AMPTransport.from_config(config, reactor))

    async def body():
        await member.start()
        host, _, port = member.id.rpartition(":")
        assert host == "127.0.0.41" and int(port) > 0
        assert member.status().members == (member.id,)
        index = await member.append(b"solo")
        assert member.client.applied[index] == b"solo"

    try:
        await defer.ensureDeferred(body()).addTimeout(10, reactor)
    finally:
        await member.stop()
        # Closing the listening port finishes on the next reactor turn.
        from twisted.internet import task

        await task.deferLater(reactor, 0.01, lambda: None)


def test_every_member_logs_who_leads_each_term_as_it_learns_it():
    """Followers log the leader of each new term too, with the fields member, leader and term."""
    from twisted.logger import formatEvent, globalLogPublisher

    from txraft.interfaces import IRaftObserver
    from txraft.member import _LeaderLog

    verifyObject(IRaftObserver, _LeaderLog("127.0.0.1:7000"))

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        cluster = SimulatedCluster(3, seed=4)
        cluster.start()
        first = cluster.wait_for_leader()
        cluster.crash(first)
        second = cluster.wait_for_leader()
        cluster.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    told = {}  # (member, term) -> (leader, text)
    for event in events:
        if {"member", "leader", "term"} <= event.keys():
            told[event["member"], event["term"]] = (event["leader"], formatEvent(event))
    terms = sorted({term for (_, term) in told})
    last = terms[-1]
    assert {member for (member, term) in told if term == last} == set(cluster.ids) - {first}
    for member in set(cluster.ids) - {first}:
        leader, text = told[member, last]
        assert leader == second
        assert text == (f"{member} leads term {last}" if member == second
                        else f"{member} follows {second}, leader of term {last}")
    assert any(text == f"{m} follows {first}, leader of term {t}"
               for (m, t), (leader, text) in told.items() if leader == first and m != first)
