"""
Write unavailability during leadership transfers, a rolling restart and a
kill -9 failover, and a learner catching up, on a cluster of real
``twistd raft`` processes over TLS.

A steady writer puts one key at a time (through any member that is up,
round robin, skipping one that is being restarted) and records when each put
succeeded; the figure for an operation is the longest gap between two
successful writes while it ran.

1. **Transfer**: ``--transfers`` times, ``POST /v1/leader/transfer``.
2. **Rolling restart**: SIGTERM each member in turn (it hands leadership
   over first if it leads), start it again, wait until it has caught up.
3. **kill -9**: SIGKILL the leader once, for comparison, and restart it.
4. **Learner**: with ``--state-mb`` MB of values stored, add a fourth
   member on an empty directory and time it until it is a voter; the writer's
   throughput meanwhile is printed beside its throughput before.

Run::

    python bench/bench_membership.py                 # plugin defaults
    python bench/bench_membership.py --state-mb 100 --json
"""

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, task

from txraft.http_client import ClientError
from txraft.tap import DEFAULTS
from txraft.testing.processes import LocalCluster, SteadyWriter


async def leader_of(cluster, members=None):
    return await cluster.agreed_leader(members, timeout=30)


async def caught_up_all(cluster):
    leader = await leader_of(cluster)
    index = (await cluster.status(leader))["commit_index"]
    for member in cluster.members:
        if member.running:
            await cluster.caught_up(member, index, timeout=60)


async def run(reactor, args):
    directory = tempfile.mkdtemp(prefix="txraft-bench-membership-")
    extra = ["--heartbeat", str(args.heartbeat), "--election-timeout", str(args.election_timeout)]
    cluster = LocalCluster(directory, size=3, extra_args=extra, reactor=reactor, persistent=True)
    figures = {"heartbeat": args.heartbeat, "election_timeout": args.election_timeout}
    try:
        cluster.start_all()
        await leader_of(cluster)
        writer = SteadyWriter(cluster)
        writer.start()
        await cluster.sleep(1.0)

        gaps = []
        for _ in range(args.transfers):
            leader = await leader_of(cluster)
            start = time.monotonic()
            await cluster.client(leader, timeout=10).transfer_leader()
            await leader_of(cluster)
            end = time.monotonic()
            await cluster.sleep(0.5)
            gaps.append(writer.longest_gap(start, end + 0.3))
        figures["transfer_gap_s"] = {"median": statistics.median(gaps), "max": max(gaps)}
        print(f"leadership transfer ({args.transfers}x): longest write gap median {statistics.median(gaps):.3f} s, "
              f"max {max(gaps):.3f} s (heartbeat {args.heartbeat} s)")

        start = time.monotonic()
        restart_gaps = []
        for member in list(cluster.members):
            writer.skip = {member.id}
            t0 = time.monotonic()
            cluster.kill(member, signal.SIGTERM)
            await cluster.wait_exit(member, timeout=30)
            cluster.start(member)
            await leader_of(cluster)
            await caught_up_all(cluster)
            writer.skip = set()
            restart_gaps.append(writer.longest_gap(t0, time.monotonic()))
        end = time.monotonic()
        figures["rolling_restart_gap_s"] = {"max": writer.longest_gap(start, end), "per_member": restart_gaps,
                                            "seconds": end - start}
        print(f"rolling restart of 3 (SIGTERM, transfer first): longest write gap {writer.longest_gap(start, end):.3f} s "
              f"(per member {', '.join(f'{g:.3f}' for g in restart_gaps)}), took {end - start:.1f} s")

        leader = await leader_of(cluster)
        t0 = time.monotonic()
        cluster.kill(leader)
        await cluster.wait_exit(leader)
        writer.skip = {leader.id}
        await leader_of(cluster, [m for m in cluster.members if m is not leader])
        await cluster.sleep(0.5)
        figures["kill9_gap_s"] = writer.longest_gap(t0, time.monotonic())
        print(f"kill -9 of the leader, for comparison: longest write gap {figures['kill9_gap_s']:.3f} s")
        cluster.start(leader)
        await caught_up_all(cluster)
        writer.skip = set()

        if args.state_mb:
            await writer.stop()
            value = "v" * (64 * 1024 - 1024)
            count = args.state_mb * 1024 * 1024 // len(value)
            t0 = time.monotonic()
            leader = await leader_of(cluster)
            client = cluster.client(leader, timeout=30)
            pending = set()
            for i in range(count):
                d = defer.ensureDeferred(client.put(f"bulk-{i}", value))
                pending.add(d)
                d.addBoth(lambda r, d=d: pending.discard(d) or r)
                if len(pending) >= 16:
                    await defer.DeferredList(list(pending), fireOnOneCallback=True)
            await defer.DeferredList(list(pending))
            print(f"stored {count} values, {args.state_mb} MB, in {time.monotonic() - t0:.1f} s")
            writer = SteadyWriter(cluster)
            writer.start()
            await cluster.sleep(3.0)
            before = writer.rate(time.monotonic() - 3.0, time.monotonic())
            founders = list(cluster.members)
            new = cluster.new_member(join=founders)
            writer.skip = {new.id}  # it would wait, through the learner, for the learner to catch up
            t0 = time.monotonic()
            await cluster.client(leader, timeout=30).add_member(new.id, new.name)
            cluster.start(new)

            async def promoted():
                try:
                    document = await cluster.client(founders[0], timeout=5).members()
                except ClientError:
                    return False
                return any(m["id"] == new.id and m["voter"] for m in document["members"]) \
                    and not document["change"]

            await cluster.wait_for(promoted, 600, "the learner's promotion", interval=0.2)
            took = time.monotonic() - t0
            during = writer.rate(t0, time.monotonic())
            figures["learner"] = {"state_mb": args.state_mb, "seconds_to_voter": took,
                                  "writes_per_s_before": before, "writes_per_s_during": during}
            print(f"learner with {args.state_mb} MB of state: voter after {took:.1f} s; steady writer "
                  f"{before:.0f} writes/s before, {during:.0f} writes/s while it caught up")
        await writer.stop()
        figures["write_failures"] = writer.failures
    finally:
        await cluster.close_clients()
        await cluster.stop()
        cluster.kill_all_now()
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=float, default=DEFAULTS["heartbeat"])
    parser.add_argument("--election-timeout", type=float, default=DEFAULTS["election-timeout"])
    parser.add_argument("--transfers", type=int, default=10)
    parser.add_argument("--state-mb", type=int, default=0,
                        help="MB of state before a learner joins (0: skip the learner figure)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    sys.exit(main())
