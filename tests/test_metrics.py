"""Prometheus metrics of a member (txraft.metrics), checked on the simulator."""

import pytest
from prometheus_client.parser import text_string_to_metric_families
from zope.interface.verify import verifyObject

from txraft import errors
from txraft.interfaces import IRaftObserver, ITransport
from txraft.kv import KeyValueClient, KeyValueStore
from txraft.metrics import CountingTransport, MemberMetrics
from txraft.testing import SimulatedCluster


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def settled(**kwargs):
    # Each member is built on a CountingTransport, as RaftService builds its member.
    cluster = SimulatedCluster(3, seed=kwargs.pop("seed", 1), client_factory=KeyValueStore,
                               wrap_transport=CountingTransport, **kwargs)
    cluster.start()
    assert cluster.wait_for_leader() is not None
    return cluster


def metrics_of(cluster, member_id):
    """The metrics of a member, counting bytes through the transport it was built with."""
    return MemberMetrics(cluster.members[member_id], transport=cluster.transports[member_id])


def sample(metrics, name, **labels):
    metrics.render()  # a scrape, as Prometheus would make
    return metrics.registry.get_sample_value(name, labels)


def follower_of(cluster):
    return next(i for i in cluster.ids if i != cluster.agreed_leader())


def test_counting_transport_is_a_transport():
    from txraft.transport.memory import MemoryNetwork

    verifyObject(ITransport, CountingTransport(MemoryNetwork(None).transport("127.0.0.1:1")))


def test_exposition_parses_and_every_name_is_prefixed():
    cluster = settled()
    metrics = metrics_of(cluster, cluster.ids[0])
    verifyObject(IRaftObserver, metrics)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    names = {f.name for f in families}
    assert all(name.startswith("txraft_") for name in names)
    for expected in ("txraft_term", "txraft_role", "txraft_commit_index", "txraft_applied_index",
                     "txraft_last_index", "txraft_append_latency_seconds", "txraft_elections",
                     "txraft_leader_changes", "txraft_snapshots_taken", "txraft_snapshots_installed",
                     "txraft_replicated_bytes"):
        assert expected in names, expected
    assert metrics.content_type.startswith("text/plain")


def test_each_member_has_its_own_registry():
    cluster = settled()
    all_metrics = {i: metrics_of(cluster, i) for i in cluster.ids}
    leader = cluster.agreed_leader()
    for member_id, metrics in all_metrics.items():
        is_leader = 1.0 if member_id == leader else 0.0
        assert sample(metrics, "txraft_role", role="leader") == is_leader
        assert sample(metrics, "txraft_role", role="follower") == 1.0 - is_leader
        assert sample(metrics, "txraft_role", role="candidate") == 0.0


def test_gauges_follow_the_status_at_scrape_time():
    cluster = settled()
    member = cluster.members[follower_of(cluster)]
    metrics = MemberMetrics(member)
    kv = KeyValueClient(member, cluster.clients[member.id], metrics=metrics)
    for n in range(5):
        outcome(kv.put(f"k{n}", b"v"))
    cluster.run(0.5)
    status = member.status()
    assert sample(metrics, "txraft_term") == status.term
    assert sample(metrics, "txraft_commit_index") == status.commit_index == 6
    assert sample(metrics, "txraft_applied_index") == status.applied_index == 6
    assert sample(metrics, "txraft_last_index") == status.last_index == 6
    assert sample(metrics, "txraft_has_leader") == 1.0
    assert sample(metrics, "txraft_members") == 3.0


def test_append_latency_is_observed_and_failures_counted_by_error():
    cluster = settled(request_timeout=1.0)
    member = cluster.members[follower_of(cluster)]
    metrics = MemberMetrics(member)
    done = outcome(metrics.timed_append(b"\x93\x01\xa1k\xc4\x01v"))
    cluster.run(0.5)
    assert done and not hasattr(done[0], "check")
    assert sample(metrics, "txraft_append_latency_seconds_count") == 1.0
    latency = sample(metrics, "txraft_append_latency_seconds_sum")
    assert 0 < latency < 0.5
    metrics.observe_append(0.25)
    assert sample(metrics, "txraft_append_latency_seconds_count") == 2.0
    cluster.network.isolate(member.id, cluster.ids)
    failed = outcome(metrics.timed_append(b"lost", timeout=0.5))
    cluster.run(1.0)
    assert failed[0].check(errors.Timeout)
    # NoQuorum (a Timeout) when this member knows no leader by then
    counted = [sample(metrics, "txraft_append_failures_total", error=name) for name in ("Timeout", "NoQuorum")]
    assert sorted(counted, key=str) == [1.0, None]
    assert type(failed[0].value).__name__ in ("Timeout", "NoQuorum")
    assert sample(metrics, "txraft_append_latency_seconds_count") == 2.0


def test_linearizable_reads_are_counted_by_outcome():
    cluster = settled(request_timeout=1.0)
    leader = cluster.members[cluster.agreed_leader()]
    member = cluster.members[follower_of(cluster)]
    metrics = MemberMetrics(member)
    kv = KeyValueClient(member, cluster.clients[member.id])
    assert sample(metrics, "txraft_reads_total", outcome="ok") == 0.0
    reads = [outcome(kv.get("k")) for _ in range(3)]
    outcome(kv.get("k", stale=True))  # read locally, no read point: not counted
    cluster.run(0.5)
    assert all(box == [None] for box in reads)
    assert sample(metrics, "txraft_reads_total", outcome="ok") == 3.0
    cluster.network.isolate(member.id, cluster.ids)
    lost = outcome(kv.get("k", timeout=0.5))
    cluster.run(1.0)
    assert lost[0].check(errors.NoQuorum)
    assert sample(metrics, "txraft_reads_total", outcome="no_quorum") == 1.0
    assert sample(metrics, "txraft_reads_total", outcome="ok") == 3.0
    leader_metrics = MemberMetrics(leader)
    waiting = outcome(leader.read_index())  # waits for a heartbeat round
    cluster.stop()
    waiting.pop().trap(errors.Stopped)
    outcome(kv.get("k")).pop().trap(errors.Stopped)
    assert sample(metrics, "txraft_reads_total", outcome="stopped") == 1.0
    assert sample(leader_metrics, "txraft_reads_total", outcome="stopped") == 1.0


def test_elections_and_leader_changes_are_counted():
    cluster = settled()
    all_metrics = {i: metrics_of(cluster, i) for i in cluster.ids}
    old = cluster.agreed_leader()
    challenger = follower_of(cluster)
    cluster.members[challenger].start_election()
    assert cluster.run_until(lambda: cluster.agreed_leader() not in (None, old), 5.0)
    for metrics in all_metrics.values():
        assert sample(metrics, "txraft_elections_total") >= 1.0
        assert sample(metrics, "txraft_leader_changes_total") >= 1.0


def test_snapshots_taken_and_installed_are_counted_and_bytes_replicated_per_peer():
    cluster = settled(snapshot_threshold=8)
    leader = cluster.agreed_leader()
    victim = follower_of(cluster)
    leader_metrics = metrics_of(cluster, leader)
    kv = KeyValueClient(cluster.members[leader], cluster.clients[leader])
    for n in range(30):
        outcome(kv.put(f"k{n}", b"x" * 100))
        cluster.run(0.05)  # one commit at a time, so several snapshots are due
    cluster.run(0.5)
    assert sample(leader_metrics, "txraft_snapshots_taken_total") >= 2.0
    assert sample(leader_metrics, "txraft_snapshot_index") > 0
    # The key-value store's snapshot holds every key of ~100 bytes so far.
    taken = sample(leader_metrics, "txraft_snapshot_bytes")
    assert taken > 8 * 100
    for peer in cluster.ids:
        if peer != leader:
            # 30 entries of a ~110-byte command, plus the entry overhead
            assert sample(leader_metrics, "txraft_replicated_bytes_total", peer=peer, kind="entries") >= 30 * 110
            assert sample(leader_metrics, "txraft_replicated_entries_total", peer=peer) >= 30

    cluster.crash(victim)
    for n in range(30, 60):
        outcome(kv.put(f"k{n}", b"y" * 100))
    cluster.run(1.0)
    restarted = cluster.restart(victim)
    victim_metrics = metrics_of(cluster, restarted.id)
    assert cluster.run_until(cluster.converged, 10.0)
    assert sample(victim_metrics, "txraft_snapshots_installed_total") == 1.0
    assert sample(victim_metrics, "txraft_snapshot_bytes") > taken
    assert sample(leader_metrics, "txraft_replicated_bytes_total", peer=victim, kind="snapshot") > 0


def test_metrics_made_before_start_attach_at_the_first_scrape():
    from twisted.internet.task import Clock

    from txraft.config import RaftConfig
    from txraft.member import Raft
    from txraft.transport.memory import MemoryNetwork

    clock = Clock()
    network = MemoryNetwork(clock)
    transport = CountingTransport(network.transport("127.0.0.1:7000"))
    member = Raft(RaftConfig(listen="127.0.0.1:7000", heartbeat=0.05), KeyValueStore(), reactor=clock,
                  transport=transport)
    metrics = MemberMetrics(member, transport=transport)
    assert sample(metrics, "txraft_term") == 0.0
    assert not metrics.attach()
    member.start()
    clock.advance(1.0)
    assert sample(metrics, "txraft_role", role="leader") == 1.0
    assert metrics.transport is transport
    member.stop()
    assert sample(metrics, "txraft_role", role="stopped") == 1.0


def test_metrics_never_replace_the_transport_of_a_running_member():
    """The member keeps sending through the transport it was built with;
    without a CountingTransport the byte counters are simply not exposed."""
    cluster = SimulatedCluster(3, seed=1, client_factory=KeyValueStore)
    cluster.start()
    leader = cluster.wait_for_leader()
    built_with = cluster.transports[leader]
    metrics = MemberMetrics(cluster.members[leader])
    metrics.render()
    assert cluster.members[leader].core.transport is built_with
    outcome(KeyValueClient(cluster.members[leader], cluster.clients[leader]).put("k", b"v"))
    cluster.run(0.5)
    assert sample(metrics, "txraft_replicated_bytes_total", peer=follower_of(cluster), kind="entries") is None


def test_metrics_take_only_a_counting_transport():
    cluster = settled()
    with pytest.raises(TypeError, match="CountingTransport"):
        MemberMetrics(cluster.members[cluster.ids[0]], transport=object())


def test_connection_counts_of_watched_ports_are_exposed():
    from twisted.internet.task import Clock

    from txraft.transport.limits import ConnectionGuard, ConnectionLimits

    cluster = settled()
    metrics = metrics_of(cluster, cluster.ids[0])
    assert sample(metrics, "txraft_connections_open", port="member") is None
    guard = ConnectionGuard("member", ConnectionLimits(2, 1), Clock())
    metrics.watch_port(guard)
    assert guard.accept("10.0.0.9") and not guard.accept("10.0.0.9")
    assert sample(metrics, "txraft_connections_open", port="member") == 1
    assert sample(metrics, "txraft_connections_refused_total", port="member", reason="source") == 1
    assert sample(metrics, "txraft_connections_timed_out_total", port="member", stage="handshake") == 0
