"""
Random fault schedules: the engine behind ``python -m txraft.testing``.

:func:`run_schedule` builds a :class:`~txraft.testing.cluster.SimulatedCluster`
from a seed, throws a random mix of appends, crashes, restarts, partitions,
forced elections, message loss, duplication and reordering at it while the
:class:`~txraft.testing.checks.SafetyChecker` watches every step, then heals
everything and checks that the cluster converges with every acknowledged
command applied on every member.  The same seed replays the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Optional

from txraft import errors
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
    error: Optional[str] = None
    trace: List[str] = field(default_factory=list)


def run_schedule(seed, members=3, steps=150):
    """
    Run one random schedule.

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
            _random_step(rng, cluster, checker, result, outcomes, timeouts)
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
        late = [t for t, kind in timeouts if t > converged_at + 1.0]
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
                     f"commit={s.commit_index} applied={s.applied_index} last={s.last_index}")
    return "; ".join(parts)


def _random_step(rng, cluster, checker, result, outcomes, timeouts):
    running = cluster.running()
    roll = rng.random()
    if roll < 0.45 and running:
        member_id = rng.choice(running)
        command = b"cmd-%d-%d" % (result.seed, result.appends)
        result.appends += 1
        cluster.note(f"append {command.decode()} at {member_id}")
        d = cluster.members[member_id].append(command)
        d.addCallbacks(lambda index, c=command: checker.acknowledge(c, index),
                       lambda f: _expected_failure(f, outcomes, timeouts, cluster.clock))
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


def _expected_failure(failure, outcomes, timeouts, clock):
    # Under faults an append may time out or its member may crash; both are
    # allowed outcomes (nothing was acknowledged).  Anything else is a bug.
    if failure.check(errors.Timeout):
        timeouts.append((clock.seconds(), failure.type.__name__))
    if failure.check(errors.Timeout, errors.Stopped, errors.ResultUnavailable):
        outcomes.append(None)
    else:
        outcomes.append(f"{failure.type.__name__}: {failure.getErrorMessage()}")
