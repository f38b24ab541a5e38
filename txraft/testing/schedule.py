"""
Random fault schedules: the engine behind ``python -m txraft.testing``.

:func:`run_schedule` builds a :class:`~txraft.testing.cluster.SimulatedCluster`
from a seed, throws a random mix of appends, crashes, restarts, partitions,
forced elections, message loss, duplication and reordering, and membership
changes (adding, removing and replacing members, handing leadership over) at it while the
:class:`~txraft.testing.checks.SafetyChecker` watches every step, then heals
everything and checks that the cluster converges with every acknowledged
command applied on every member.  The same seed replays the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Optional

from twisted.internet import defer

from txraft import errors
from txraft.core.membership import Member
from txraft.testing.checks import SafetyChecker, SafetyViolation
from txraft.testing.cluster import SimulatedCluster


@dataclass
class ScheduleResult:
    """What one schedule did, and how it ended."""

    seed: int
    members: int
    ok: bool
    appends: int = 0
    acknowledged: int = 0
    crashes: int = 0
    elections: int = 0
    snapshots_installed: int = 0
    changes: int = 0
    changes_committed: int = 0
    transfers: int = 0
    error: Optional[str] = None
    trace: List[str] = field(default_factory=list)


def run_schedule(seed, members=3, steps=150, membership=True):
    """
    Run one random schedule.

    With ``membership``, the schedule also adds members (which join as
    learners and are promoted), removes and replaces them, and hands
    leadership over; the cluster that must converge at the end is the final
    configuration's, and a removed member must not disturb it.

    :returns: a :class:`ScheduleResult`; ``ok`` is false when a safety
        property failed or the healed cluster did not converge, and then
        ``error`` says why and ``trace`` lists the events.
    """
    rng = random.Random(seed)
    checker = SafetyChecker()
    cluster = SimulatedCluster(
        members, seed=rng.randrange(2 ** 32), heartbeat=0.05,
        snapshot_threshold=rng.choice([8, 20, 1000]),
        delay=(0.0005, rng.choice([0.002, 0.01, 0.04])),
        drop_rate=rng.choice([0.0, 0.0, 0.02, 0.1]),
        duplicate_rate=rng.choice([0.0, 0.05]),
        fsync_delay=rng.choice([0.0, 0.003, 0.02]),
        checker=checker, request_timeout=3.0,
    )
    result = ScheduleResult(seed, members, ok=False)
    outcomes = []
    timeouts = []  # (simulated time, error class) of appends that timed out
    try:
        cluster.start()
        for step in range(steps):
            _random_step(rng, cluster, checker, result, outcomes, timeouts, membership)
            cluster.run(rng.uniform(0.0, 0.15))
        cluster.note("heal everything and wait for convergence")
        cluster.network.drop_rate = 0.0
        cluster.heal()
        for member_id in sorted(cluster.crashed):
            cluster.restart(member_id)
        if not cluster.run_until(cluster.converged, timeout=60.0):
            raise SafetyViolation("the healed cluster did not converge within 60 simulated seconds: "
                                  + _describe(cluster))
        converged_at = cluster.clock.seconds()
        # Let waiting appends settle, then check every acknowledgement.
        cluster.run(cluster.request_timeout + 1.0)
        checker.check_final(cluster)
        # Liveness: once the healed cluster has converged, every append still
        # waiting on a live member must complete; none may sit until it times out.
        # Appends waiting on a member that was removed (or never added) are
        # left out: nothing tells it what became of them.
        final = set(cluster.in_configuration())
        late = [t for t, kind, at in timeouts if t > converged_at + 1.0 and at in final]
        if late:
            raise SafetyViolation(f"liveness: {len(late)} append(s) timed out at {late[0]:.3f}, "
                                  f"after the cluster converged at {converged_at:.3f}")
        result.ok = True
    except SafetyViolation as e:
        result.error = str(e)
    except Exception as e:  # a crash of the implementation is a failure too
        import traceback

        result.error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        unexpected = [f for f in outcomes if f is not None]
        if unexpected and result.ok:
            result.ok = False
            result.error = f"append() failed unexpectedly: {unexpected[0]}"
        result.acknowledged = len(checker.acknowledged)
        result.elections = len(checker.leaders)
        result.snapshots_installed = sum(c.restores for c in cluster.clients.values()
                                         if hasattr(c, "restores"))
        result.trace = cluster.trace
        cluster.stop()
    return result


def _describe(cluster):
    parts = []
    for member_id in cluster.ids:
        if member_id in cluster.crashed:
            parts.append(f"{member_id}: crashed")
            continue
        s = cluster.members[member_id].status()
        parts.append(f"{member_id}: {s.role} term={s.term} leader={s.leader or '-'} "
                     f"commit={s.commit_index} applied={s.applied_index} last={s.last_index} "
                     f"configuration={cluster.members[member_id].core.configuration.describe()}")
    return "; ".join(parts)


def _random_step(rng, cluster, checker, result, outcomes, timeouts, membership=True):
    running = cluster.running()
    roll = rng.random()
    if roll < 0.45 and running:
        member_id = rng.choice(running)
        command = b"cmd-%d-%d" % (result.seed, result.appends)
        result.appends += 1
        cluster.note(f"append {command.decode()} at {member_id}")
        d = cluster.members[member_id].append(command)
        d.addCallbacks(lambda index, c=command: checker.acknowledge(c, index),
                       lambda f: _expected_failure(f, outcomes, timeouts, cluster.clock, member_id))
    elif roll < 0.52 and running:
        member_id = rng.choice(running)
        cluster.crash(member_id)
        result.crashes += 1
    elif roll < 0.60 and cluster.crashed:
        cluster.restart(rng.choice(sorted(cluster.crashed)))
    elif roll < 0.65:
        ids = list(cluster.ids)
        rng.shuffle(ids)
        cut = rng.randint(1, len(ids) - 1)
        cluster.partition(ids[:cut], ids[cut:])
    elif roll < 0.72:
        cluster.heal()
    elif roll < 0.75 and running:
        member_id = rng.choice(running)
        if not cluster.members[member_id].core.may_stand():
            return  # learners and removed members never stand
        cluster.note(f"force election at {member_id}")
        cluster.members[member_id].start_election()
    elif roll < 0.80 and cluster.leader() is not None:
        # Leaders are where the hard cases start: kill one mid-replication.
        cluster.crash(cluster.leader())
        result.crashes += 1
    elif roll < 0.85 and cluster.leader() is not None:
        leader = cluster.leader()
        cluster.note(f"isolate leader {leader}")
        cluster.network.isolate(leader, cluster.ids)
    elif membership:
        _membership_step(rng, roll, cluster, result, outcomes)


def _membership_step(rng, roll, cluster, result, outcomes):
    """Events with ``roll`` in [0.85, 1): add, remove, replace, transfer."""
    configuration = cluster.configuration()
    members = cluster.in_configuration()
    if configuration is None or not members:
        return
    size = len(cluster.initial_ids)
    voters = sorted(configuration.voters)
    at = rng.choice(members)

    def settle(d, what):
        def done(_):
            result.changes_committed += 1
            cluster.note(f"{what}: done")

        def failed(failure):
            cluster.note(f"{what}: {failure.type.__name__}: {failure.getErrorMessage()}")
            if not failure.check(errors.MembershipError, errors.NotLeader, errors.Timeout, errors.Stopped,
                                 errors.TransportError):
                outcomes.append(f"{what}: {failure.type.__name__}: {failure.getErrorMessage()}")

        d.addCallbacks(done, failed)

    leader = cluster.leader()
    busy = leader is None or cluster.members[leader].core.change_in_flight()
    if roll < 0.89 and len(configuration.ids) < size + 2 and not busy:
        new = cluster.launch_new_member()
        cluster.note(f"add {new} at {at}")
        result.changes += 1
        settle(cluster.members[at].add_member(new), f"add {new}")
    elif roll < 0.93 and len(voters) > max(1, size - 1):
        gone = rng.choice(sorted(configuration.ids))
        cluster.note(f"remove {gone} at {at}")
        result.changes += 1
        settle(cluster.members[at].remove_member(gone), f"remove {gone}")
    elif roll < 0.96 and not busy and len(configuration.ids) < size + 2:
        # Replace a voter with a new member in one (joint) change.
        leader = cluster.members[cluster.leader()]
        gone = rng.choice(voters)
        new = cluster.launch_new_member()
        cluster.note(f"replace {gone} by {new} at {leader.id}")
        result.changes += 1
        try:
            kept = [x for x in configuration.members if x.id != gone]
            term, index = leader.core.propose_members(kept + [Member(new, "", False, promote=True)])
        except errors.RaftError as e:
            cluster.note(f"replace refused: {type(e).__name__}: {e}")
            return
        settle(leader.core.wait_for_change(term, index), f"replace {gone} by {new}")
    elif cluster.leader() is not None:
        leader = cluster.members[cluster.leader()]
        to = rng.choice([None] + [v for v in voters if v != leader.id])
        cluster.note(f"transfer leadership from {leader.id} to {to or 'the most up-to-date voter'}")
        result.transfers += 1
        d = leader.transfer_leadership(to)
        d.addCallbacks(lambda new: cluster.note(f"transfer: {new} leads"),
                       lambda f: settle(defer.fail(f), "transfer"))


def _expected_failure(failure, outcomes, timeouts, clock, member_id):
    # Under faults an append may time out or its member may crash; both are
    # allowed outcomes (nothing was acknowledged).  Anything else is a bug.
    if failure.check(errors.Timeout):
        timeouts.append((clock.seconds(), failure.type.__name__, member_id))
    # A member that learns it was removed answers what waits on it so.
    if failure.check(errors.Timeout, errors.Stopped, errors.ResultUnavailable, errors.MembershipError):
        outcomes.append(None)
    else:
        outcomes.append(f"{failure.type.__name__}: {failure.getErrorMessage()}")
