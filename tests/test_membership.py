"""
Runtime membership on the simulator: growing and shrinking a cluster while it
takes writes, the dissertation's dangerous cases (chapter 4), bad input, and
leadership transfer, with the safety checker watching every step.
"""

import pytest

from txraft import errors
from txraft.core.membership import Member
from txraft.testing import SafetyChecker, SimulatedCluster


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def settled(size=3, seed=1, **kwargs):
    checker = SafetyChecker()
    cluster = SimulatedCluster(size, seed=seed, checker=checker, **kwargs)
    cluster.start()
    leader = cluster.wait_for_leader()
    assert leader is not None
    # Let the new leader commit its no-op, so changes are accepted at once.
    cluster.run(0.5)
    return cluster, checker


def finish(cluster, d, timeout=10.0):
    box = outcome(d)
    assert cluster.run_until(lambda: bool(box), timeout), "the Deferred did not fire"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class Writer:
    """Appends a numbered command every few milliseconds and records acknowledgements."""

    def __init__(self, cluster, checker):
        self.cluster, self.checker = cluster, checker
        self.sent = self.acked = 0
        self.call = None

    def start(self):
        self._tick()

    def _tick(self):
        cluster = self.cluster
        members = cluster.in_configuration()
        command = b"w%d" % self.sent
        self.sent += 1
        d = cluster.members[members[self.sent % len(members)]].append(command)
        d.addCallbacks(lambda index, c=command: self._acked(c, index), lambda f: None)
        self.call = cluster.clock.callLater(0.02, self._tick)

    def _acked(self, command, index):
        self.checker.acknowledge(command, index)
        self.acked += 1

    def stop(self):
        if self.call is not None and self.call.active():
            self.call.cancel()


def no_change_in_flight(cluster):
    leader = cluster.leader()
    return leader is not None and not cluster.members[leader].core.change_in_flight()


def promoted(cluster, member_id):
    """Wait until ``member_id`` votes and no change (its promotion) is in flight."""
    return cluster.run_until(
        lambda: member_id in cluster.configuration().voters and no_change_in_flight(cluster), 10)


def voters(cluster):
    return sorted(cluster.configuration().voters)


def test_grow_3_to_5_and_shrink_back_to_3_while_writing():
    cluster, checker = settled()
    writer = Writer(cluster, checker)
    writer.start()
    new = [cluster.launch_new_member() for _ in range(2)]
    for member_id in new:
        finish(cluster, cluster.members[cluster.ids[0]].add_member(member_id))
        # Joined as a learner; promoted by the leader once caught up.
        assert promoted(cluster, member_id)
    assert len(voters(cluster)) == 5
    for member_id in cluster.initial_ids[:2]:
        finish(cluster, cluster.members[new[0]].remove_member(member_id))
    assert voters(cluster) == sorted([cluster.initial_ids[2]] + new)
    acked_before = writer.acked
    cluster.run(1.0)
    writer.stop()
    assert writer.acked > acked_before + 10  # writes went on after the changes
    assert cluster.run_until(cluster.converged, 10)
    cluster.run(cluster.request_timeout)
    checker.check_final(cluster)
    cluster.stop()


def test_a_leader_removed_by_its_own_change_hands_over_and_never_leads_again():
    cluster, checker = settled()
    leader = cluster.agreed_leader()
    finish(cluster, cluster.members[leader].remove_member(leader))
    assert cluster.run_until(lambda: cluster.agreed_leader() not in (None, leader), 5)
    term = cluster.members[cluster.agreed_leader()].core.term
    cluster.run(3.0)  # the removed member's timers keep running; nothing changes
    assert cluster.members[cluster.agreed_leader()].core.term == term
    assert cluster.members[leader].core.role == "follower"
    assert finish(cluster, cluster.members[cluster.ids[1]].append(b"after")) > 0
    cluster.stop()


def test_a_removed_member_that_keeps_campaigning_cannot_disrupt_the_cluster():
    """4.2.3: removed servers can disrupt the cluster; PreVote and leader
    stickiness keep them from it."""
    cluster, checker = settled()
    leader = cluster.agreed_leader()
    gone = next(i for i in cluster.ids if i != leader)
    # Cut it off first, so it never learns it was removed, then remove it.
    cluster.network.isolate(gone, cluster.ids)
    finish(cluster, cluster.members[leader].remove_member(gone))
    cluster.heal()
    term = cluster.members[leader].core.term
    for _ in range(5):
        cluster.run(1.0)
        if cluster.members[gone].core.may_stand():
            cluster.members[gone].start_election()  # even forced elections
    assert cluster.agreed_leader() == leader
    assert cluster.members[leader].core.term == term
    cluster.stop()


def test_a_change_by_a_leader_that_has_not_committed_in_its_term_waits():
    """4.1: a leader must commit an entry of its term before it changes the
    configuration; the member API tries again until it has."""
    cluster, checker = settled()
    leader = cluster.agreed_leader()
    cluster.partition([leader], [i for i in cluster.ids if i != leader])
    # Force a new leader among the others, and ask it at once.
    other = next(i for i in cluster.ids if i != leader)
    cluster.members[other].start_election()
    cluster.run_until(lambda: cluster.members[other].core.role == "leader", 2)
    core = cluster.members[other].core
    assert core.storage.term_at(core.commit_index) != core.term
    with pytest.raises(errors.LeaderNotReady):
        core.propose_members(list(core.configuration.members) + [Member("127.0.0.9:7000", voter=False)])
    new = cluster.launch_new_member()
    finish(cluster, cluster.members[other].add_member(new, voter=False))
    assert new in cluster.members[other].core.configuration.ids
    cluster.stop()


def test_two_changes_racing_across_a_change_of_leader_keep_one_configuration():
    """A change proposed by a leader that is then deposed is lost, and the next
    leader's change wins; the loser's caller is told."""
    cluster, checker = settled()
    old = cluster.agreed_leader()
    first, second = cluster.launch_new_member(), cluster.launch_new_member()
    cluster.network.isolate(old, cluster.ids)
    lost = outcome(cluster.members[old].add_member(first))
    rest = [i for i in cluster.initial_ids if i != old]
    assert cluster.run_until(lambda: any(cluster.members[i].core.role == "leader" for i in rest), 5)
    new_leader = next(i for i in rest if cluster.members[i].core.role == "leader")
    finish(cluster, cluster.members[new_leader].add_member(second))
    cluster.heal()
    assert cluster.run_until(lambda: bool(lost), 15)
    assert lost[0].check(errors.MembershipError, errors.Timeout)
    assert cluster.run_until(cluster.converged, 10)
    for member_id in cluster.in_configuration():
        configuration = cluster.members[member_id].core.configuration
        assert second in configuration.ids and first not in configuration.ids
    cluster.stop()


def test_a_member_started_to_join_asks_to_be_added_and_becomes_a_voter():
    cluster, checker = settled()
    new = cluster.launch_new_member(contacts=[cluster.ids[2], cluster.ids[0]])
    assert promoted(cluster, new)
    assert cluster.run_until(cluster.converged, 5)
    # Restarted on its log, it just restarts (it does not ask again).
    cluster.crash(new)
    cluster.restart(new)
    assert cluster.run_until(cluster.converged, 5)
    assert cluster.members[new].core.configuration.is_voter(new)
    cluster.stop()


def test_bad_changes_are_refused_with_a_clear_error_and_change_nothing():
    cluster, checker = settled()
    leader = cluster.members[cluster.agreed_leader()]
    before = leader.core.configuration
    with pytest.raises(errors.MembershipError, match="already a member"):
        finish(cluster, leader.add_member(cluster.ids[1]))
    with pytest.raises(errors.UnknownMember, match="not a member"):
        finish(cluster, leader.remove_member("127.0.0.99:7000"))
    with pytest.raises(TypeError):
        leader.remove_member(None)
    with pytest.raises(errors.ConfigurationError, match="HOST:PORT"):
        leader.add_member("no-port")
    # A learner that has not caught up (it is not even running) cannot be promoted.
    finish(cluster, leader.add_member("127.0.0.9:7000", voter=False))
    with pytest.raises(errors.MembershipError, match="not caught up"):
        finish(cluster, leader.promote("127.0.0.9:7000"))
    # A second change while one is in flight.
    pending = outcome(leader.remove_member("127.0.0.9:7000"))
    with pytest.raises(errors.ChangeInProgress):
        finish(cluster, leader.remove_member(cluster.ids[2]))
    cluster.run(1.0)
    assert pending == [leader.core.configuration]
    assert leader.core.configuration == before
    cluster.stop()


def test_removing_the_last_voter_is_refused():
    cluster, checker = settled(size=1)
    member = cluster.members[cluster.ids[0]]
    with pytest.raises(errors.MembershipError, match="without a voter"):
        finish(cluster, member.remove_member(member.id))
    cluster.stop()


def test_a_learner_stays_a_learner_without_auto_promote_until_promoted():
    cluster, checker = settled()
    for member in cluster.members.values():
        member.config.auto_promote = False
    new = cluster.launch_new_member()
    finish(cluster, cluster.members[cluster.ids[0]].add_member(new))
    cluster.run(1.0)
    assert new not in cluster.configuration().voters
    leader = cluster.members[cluster.agreed_leader()]
    finish(cluster, leader.promote(new))
    assert new in cluster.configuration().voters
    cluster.run(0.5)
    status = {s.id: s for s in leader.membership().members}
    assert status[new].voter and status[new].match_index == leader.core.storage.last_index
    cluster.stop()


def test_a_new_member_catches_up_from_a_snapshot_and_keeps_its_configuration_across_a_crash():
    cluster, checker = settled(snapshot_threshold=20)
    leader = cluster.agreed_leader()
    for i in range(60):
        cluster.members[leader].append(b"x%d" % i)
    cluster.run(2.0)
    new = cluster.launch_new_member()
    finish(cluster, cluster.members[leader].add_member(new))
    assert promoted(cluster, new)
    assert cluster.clients[new].restores >= 1
    cluster.crash(new)
    cluster.restart(new)
    assert cluster.run_until(cluster.converged, 10)
    assert cluster.members[new].core.configuration == cluster.configuration()
    cluster.stop()


def test_leadership_transfer_moves_leadership_without_losing_writes():
    cluster, checker = settled()
    writer = Writer(cluster, checker)
    writer.start()
    cluster.run(0.5)
    leader = cluster.agreed_leader()
    target = next(i for i in cluster.ids if i != leader)
    assert finish(cluster, cluster.members[leader].transfer_leadership(target)) == target
    assert cluster.agreed_leader() == target
    # Any member may ask; the leader picks the most up-to-date voter itself.
    finish(cluster, cluster.members[leader].transfer_leadership())
    cluster.run(1.0)
    writer.stop()
    assert cluster.run_until(cluster.converged, 10)
    cluster.run(cluster.request_timeout)
    checker.check_final(cluster)
    assert writer.acked > 0.8 * writer.sent - 10
    cluster.stop()


def test_a_transfer_to_a_member_that_cannot_lead_is_refused():
    cluster, checker = settled()
    leader = cluster.members[cluster.agreed_leader()]
    with pytest.raises(errors.UnknownMember):
        finish(cluster, leader.transfer_leadership("127.0.0.99:7000"))
    with pytest.raises(TypeError):
        leader.transfer_leadership(7)
    cluster.stop()


def test_stop_with_transfer_hands_over_first():
    cluster, checker = settled()
    leader = cluster.agreed_leader()
    stopping = outcome(cluster.members[leader].stop(transfer=True))
    assert cluster.run_until(lambda: bool(stopping), 2)
    cluster.crashed.add(leader)
    new = cluster.agreed_leader()
    assert new is not None and new != leader
    cluster.stop()
