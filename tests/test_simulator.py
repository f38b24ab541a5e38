"""
Random fault schedules on the deterministic simulator.

Every schedule checks Raft's safety properties after every event and, once
healed, that the cluster converges with every acknowledged append applied
everywhere.  The suite runs 300 schedules each for 3 and 5 members; a seed
that ever fails is added to REGRESSION_SEEDS with a note of what it found.
"""

import pytest

from txraft.testing import run_schedule
from txraft.testing.__main__ import main

SCHEDULES = 300
CHUNK = 50

# (members, seed): schedules that once exposed a bug.
REGRESSION_SEEDS = [
    # A candidate too stale to win reset every follower's election timer each
    # time it raised the term, so nobody else ever stood (livelock).
    (3, 0), (3, 1), (3, 5), (3, 10), (3, 16), (3, 17), (3, 18), (3, 19),
    # An append placed by a leader that was deposed before replicating it
    # waited for its index to be overwritten; with no later traffic it sat
    # until its timeout on a healthy cluster (caught by the liveness check).
    (3, 68), (3, 75), (3, 94),
    # Membership: learners refused votes, so a member promoted by an entry it
    # had not received yet kept a joint configuration from electing anyone.
    (3, 15),
    # A member holding an uncommitted configuration that removed it had the
    # most complete log; it never stood and no one else could win (deadlock).
    (3, 107), (3, 240),
]


@pytest.mark.slow
@pytest.mark.parametrize("members", [3, 5])
@pytest.mark.parametrize("first", range(0, SCHEDULES, CHUNK))
def test_random_schedules_keep_raft_safe(members, first):
    failures = []
    for seed in range(first, first + CHUNK):
        result = run_schedule(seed, members=members)
        if not result.ok:
            failures.append(f"seed {seed}: {result.error}\n" + "\n".join(result.trace[-30:]))
        assert result.appends > 0
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("members,seed", REGRESSION_SEEDS)
def test_regression_seeds(members, seed):
    result = run_schedule(seed, members=members)
    assert result.ok, result.error


def test_schedules_exercise_the_faults_they_claim():
    results = [run_schedule(seed, members=3) for seed in range(10)]
    assert sum(r.crashes for r in results) > 20
    assert sum(r.acknowledged for r in results) > 100
    assert sum(r.snapshots_installed for r in results) > 0
    assert sum(r.elections for r in results) > 20


def test_schedules_change_the_membership_as_they_run():
    results = [run_schedule(seed, members=3) for seed in range(10)]
    assert sum(r.changes_committed for r in results) > 10
    assert sum(r.transfers for r in results) > 5


def test_checker_catches_learners_that_count(monkeypatch):
    """Counting learners as voters lets them stand and decide; the checker says so."""
    from txraft.core.membership import Configuration

    def every_member_votes(self):
        return tuple(frozenset(x.id for x in group) for group in self._groups())

    monkeypatch.setattr(Configuration, "_voting_sets", property(every_member_votes))
    results = [run_schedule(seed, members=3) for seed in range(20)]
    assert any("learners never" in (r.error or "") for r in results)


def test_same_seed_replays_the_same_schedule():
    first = run_schedule(42, members=5)
    second = run_schedule(42, members=5)
    assert first.trace == second.trace
    assert (first.appends, first.acknowledged) == (second.appends, second.acknowledged)


def test_checker_catches_a_broken_quorum(monkeypatch):
    """The checks can fail: with quorum n//2 (the seed's bug, roughly) two leaders
    share a term or committed entries are lost, and the schedule reports it."""
    from txraft.core import quorum

    monkeypatch.setattr(quorum, "majority", lambda n: max(1, n // 2))
    monkeypatch.setattr(quorum, "quorum_index", lambda ms: sorted(ms, reverse=True)[max(1, len(ms) // 2) - 1])
    results = [run_schedule(seed, members=3, steps=60) for seed in range(5)]
    assert not all(r.ok for r in results)
    assert any("safety" in (r.error or "") or "two leaders" in (r.error or "") for r in results)


def test_checker_catches_votes_for_stale_candidates(monkeypatch):
    """Granting votes without the up-to-date check (5.4.1) loses committed entries."""
    from txraft.core import election

    monkeypatch.setattr(election, "candidate_is_up_to_date", lambda request, storage: True)
    results = [run_schedule(seed, members=3) for seed in range(30)]
    assert not all(r.ok for r in results)


def test_command_line_reports_success(capsys):
    assert main(["--seeds", "3", "--members", "3", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "3 schedules, 3 members: 3 passed, 0 failed" in out


def test_command_line_prints_seed_and_trace_on_a_violation(capsys, monkeypatch):
    from txraft.core import quorum

    monkeypatch.setattr(quorum, "majority", lambda n: 1)
    monkeypatch.setattr(quorum, "quorum_index", lambda ms: max(ms))
    assert main(["--seeds", "3", "--members", "3", "--steps", "60"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "reproduce: python -m txraft.testing" in out
    assert "start" in out  # the event trace


# -- SimulatedCluster's own API, as docs/testing.md describes it ---------------------------


def test_restarting_a_running_member_or_crashing_a_crashed_one_is_refused():
    """A second instance on the same storage would corrupt it: restart() wants a crashed member."""
    from txraft.testing import SimulatedCluster

    cluster = SimulatedCluster(3, seed=3)
    cluster.start()
    leader = cluster.wait_for_leader()
    running = cluster.members[leader]
    with pytest.raises(ValueError, match=r"restart\('127\.0\.0\.\d:7000'\): the member is running; crash\(\) it first"):
        cluster.restart(leader)
    assert cluster.members[leader] is running and not cluster.crashed
    cluster.crash(leader)
    with pytest.raises(ValueError, match=r"crash\(.*\): the member is crashed; restart\(\) it first"):
        cluster.crash(leader)
    with pytest.raises(ValueError, match=r"no such member; the members are \['127.0.0.1:7000'"):
        cluster.crash("10.0.0.1:7000")
    assert cluster.restart(leader) is cluster.members[leader] is not running
    cluster.stop()
    with pytest.raises(RuntimeError, match="the cluster was stopped"):
        cluster.crash(leader)


def test_the_documented_accessors():
    """ids, members, clients, wait_for_leader() and stop(), as docs/testing.md lists them;
    stop() leaves no call on the clock, and appends it fails are consumed, not unhandled."""
    import gc

    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogPublisher

    from txraft.errors import Stopped
    from txraft.testing import RecordingClient, SimulatedCluster

    unhandled = []

    def watch(event):
        if "Unhandled error" in str(event.get("log_format", "")):
            unhandled.append(event)

    cluster = SimulatedCluster(3, seed=5)
    cluster.start()
    assert cluster.ids == ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"]
    leader = cluster.wait_for_leader()
    assert leader in cluster.ids and leader == cluster.leader() == cluster.agreed_leader()
    assert all(isinstance(cluster.clients[i], RecordingClient) for i in cluster.ids)
    outcomes = []
    cluster.members[leader].append(b"x").addBoth(outcomes.append)
    assert cluster.run_until(lambda: outcomes, timeout=5.0)
    assert all(cluster.clients[i].applied.get(outcomes[0]) == b"x" for i in cluster.ids
               if cluster.clients[i].last_index >= outcomes[0])
    pending = cluster.members[leader].append(b"y")
    assert isinstance(pending, Deferred)
    pending.addBoth(outcomes.append)
    cluster.stop()
    assert outcomes[-1].check(Stopped)
    assert cluster.clock.getDelayedCalls() == []
    globalLogPublisher.addObserver(watch)
    try:
        del pending, cluster
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(watch)
    assert not unhandled
