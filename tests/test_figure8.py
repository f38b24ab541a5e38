"""
Figure 8 of the Raft paper, played on five simulated members.

(a) S1 leads and places X at index i, reaching only S2.  (b) S5 is elected by
S3, S4 and itself and places its own entry at i, reaching nobody.  (c) S1
returns, is elected by S1, S2 and S3, and copies X to S3: X is now on a
majority, but it is from an old term.  (d) S1 fails; S5 returns and is
elected by S3, S4 and itself, because its entry at i has a later term.

If S1 had committed X in (c) by counting replicas, as the seed's commit rule
did, S5 would now overwrite a committed entry.  Raft commits only entries of
the leader's current term by counting (section 5.4.2).
"""

import pytest

from txraft.messages import Role
from txraft.testing import SafetyChecker, SafetyViolation, SimulatedCluster


class OneEntryPerMessage(SimulatedCluster):
    """Batches of one entry, so X can reach S3 without S1's later no-op."""

    def config(self, member_id):
        config = super().config(member_id)
        config.max_batch_bytes = 40
        return config


def play_figure_8():
    cluster = OneEntryPerMessage(5, seed=1, delay=(0.001, 0.001), fsync_delay=0.0, checker=SafetyChecker())
    cluster.start()
    s1, s2, s3, s4, s5 = cluster.ids
    net = cluster.network
    member = cluster.members

    def leads(member_id):
        return lambda: member[member_id].core.role is Role.LEADER

    cluster.wait_for_leader()
    member[s1].start_election()
    assert cluster.run_until(lambda: cluster.agreed_leader() == s1, 2.0)
    cluster.run(0.2)
    i = member[s1].core.storage.last_index + 1

    # (a) X reaches S2 only.
    net.partition([s1, s2], [s3, s4, s5])
    member[s1].core.propose(b"X", None)
    assert cluster.run_until(lambda: cluster.storages[s2].last_index == i, 1.0)
    cluster.crash(s1)

    # (b) S5 wins with S3 and S4 and is cut off before its entry at i leaves.
    net.partition([s3, s4, s5], [s2], [s1])
    member[s5].start_election()
    assert cluster.run_until(leads(s5), 1.0)
    net.isolate(s5, cluster.ids)
    cluster.run(0.05)
    assert cluster.storages[s5].term_at(i) > cluster.storages[s2].term_at(i)
    cluster.crash(s5)

    # (c) S1 returns; S2 and S3 elect it (S1 first catches up on the term).
    cluster.restart(s1)
    net.heal()
    net.isolate(s5, cluster.ids)
    net.isolate(s4, cluster.ids)
    net.cut(s1, s3)
    member[s1].start_election()
    cluster.run(0.01)
    net.heal()
    net.isolate(s5, cluster.ids)
    net.isolate(s4, cluster.ids)
    member[s1].start_election()
    assert cluster.run_until(leads(s1), 1.0)
    assert cluster.run_until(lambda: member[s1].core.progress_of(s3).match_index >= i, 1.0)
    x_on_majority_committed = member[s1].core.commit_index >= i
    net.isolate(s1, cluster.ids)  # before its no-op reaches S3
    cluster.crash(s1)

    # (d) S5 returns and is elected by S3 and S4.
    net.heal()
    net.isolate(s1, cluster.ids)
    net.isolate(s2, cluster.ids)
    cluster.restart(s5)
    assert cluster.run_until(leads(s5), 5.0)
    cluster.run(0.5)
    return cluster, i, x_on_majority_committed


def test_an_old_term_entry_on_a_majority_is_not_committed_and_may_be_replaced():
    cluster, i, committed = play_figure_8()
    assert not committed, "S1 committed an entry of an earlier term by counting replicas"
    s3 = cluster.ids[2]
    replaced = cluster.storages[s3].entries(i, i + 1)[0]
    assert replaced.data != b"X"  # S5's entry took the index, safely
    assert all(b"X" not in cluster.clients[m].applied.values() for m in cluster.running())


def test_the_seed_commit_rule_loses_a_committed_entry(monkeypatch):
    """With the term check removed (the seed's rule), the checker sees S5 lead
    without the entry S1 committed."""
    from txraft.core import replication

    def count_replicas_only(matches, term, storage, configuration):
        return configuration.quorum_index(matches)

    monkeypatch.setattr(replication, "committable", count_replicas_only)
    with pytest.raises(SafetyViolation, match="leader completeness"):
        play_figure_8()
