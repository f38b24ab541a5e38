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
        return [frozenset(x.id for x in group) for group in self._groups()]

    monkeypatch.setattr(Configuration, "voting_sets", every_member_votes)
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
