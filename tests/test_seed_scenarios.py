"""
The seed implementation's own scenarios (client_test.go, election_test.go,
raft_test.go), run on the deterministic simulator with safety checks on.
Times are in heartbeats, as the seed's were.
"""

import io

from txraft.testing import RecordingClient, SafetyChecker, SimulatedCluster


def build(size, **kwargs):
    cluster = SimulatedCluster(size, seed=kwargs.pop("seed", 3), checker=SafetyChecker(), **kwargs)
    cluster.start()
    return cluster


def test_client_snapshot_round_trip():
    """TestClientSnapshot: the test client restores exactly what it saved."""
    client = RecordingClient()
    for i, word in enumerate([b"the", b"rain", b"in", b"spain", b"falls", b"mainly", b"on", b"the", b"plain"]):
        client.apply(word, i + 1)
    buffer = io.BytesIO()
    client.save_snapshot(buffer)
    buffer.seek(0)
    restored = RecordingClient()
    restored.restore_snapshot(9, buffer)
    assert restored.applied == client.applied and restored.last_index == 9


def test_election():
    """TestElection: 5 members; stop leaders one by one; no leader without a quorum;
    a restart brings one back; a restarted member agrees within 3 heartbeats."""
    cluster = build(5)
    hb = cluster.heartbeat
    stopped = []
    for _ in range(2):
        leader = cluster.wait_for_leader(timeout=10 * hb)
        assert leader is not None, "too long to find a leader"
        cluster.crash(leader)
        stopped.append(leader)
    third = cluster.wait_for_leader(timeout=10 * hb)
    assert third is not None
    cluster.crash(third)
    # Two of five left: no quorum, so no leader may emerge.
    cluster.run(20 * hb)
    assert cluster.leaders() == [] or all(
        cluster.members[i].core.term < max(cluster.members[j].core.term for j in cluster.running())
        for i in cluster.leaders()) and cluster.agreed_leader() is None
    assert cluster.agreed_leader() is None
    cluster.restart(stopped[0])
    assert cluster.wait_for_leader(timeout=20 * hb) is not None
    cluster.restart(stopped[1])
    assert cluster.run_until(lambda: cluster.agreed_leader() is not None, timeout=3 * hb), \
        "restarted member did not agree on the leader within 3 heartbeats"


def test_two_hundred_forced_elections_each_end_in_agreement():
    """TestPerformanceElection: force 200 elections round-robin; each ends with every
    member agreeing on one leader."""
    cluster = build(5)
    hb = cluster.heartbeat
    assert cluster.wait_for_leader(timeout=10 * hb)
    terms = []
    for i in range(200):
        member_id = cluster.ids[i % 5]
        cluster.members[member_id].start_election()
        cluster.run(hb / 4)
        assert cluster.run_until(lambda: cluster.agreed_leader() is not None, timeout=10 * hb), \
            f"no agreement after forced election {i}"
        terms.append(cluster.members[cluster.agreed_leader()].core.term)
    assert terms == sorted(terms) and len(set(terms)) >= 190


def test_append():
    """TestAppend: 3 members, 100 appends, leader killed, more appends on the new
    leader, the old leader restarted catches up to the same applied log."""
    cluster = build(3, snapshot_threshold=30)
    hb = cluster.heartbeat
    first = cluster.wait_for_leader(timeout=10 * hb)
    results = []
    for i in range(100):
        cluster.members[first].append(b"the rain in spain %d" % i).addBoth(results.append)
    assert cluster.run_until(lambda: len(results) == 100, timeout=40 * hb)
    assert all(isinstance(r, int) for r in results)
    assert cluster.run_until(cluster.converged, timeout=10 * hb)
    cluster.crash(first)
    second = cluster.wait_for_leader(timeout=10 * hb)
    assert second not in (None, first)
    more = []
    for i in range(10):
        cluster.members[second].append(b"the rain in spain %d" % (i + 100)).addBoth(more.append)
    assert cluster.run_until(lambda: len(more) == 10, timeout=20 * hb)
    assert all(isinstance(r, int) for r in more)
    cluster.restart(first)
    assert cluster.run_until(cluster.converged, timeout=10 * hb)
    reference = cluster.clients[second].applied
    assert len(reference) == 110
    for member_id in cluster.ids:
        assert cluster.clients[member_id].applied == reference
