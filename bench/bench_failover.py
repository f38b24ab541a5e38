"""
Election timing of a 3-member cluster of real ``twistd raft`` processes.

Two measurements, for the timing given (default: the plugin's defaults):

1. **Spurious elections under load.**  Concurrent writers put keys through
   every member over HTTPS for ``--duration`` seconds while nothing fails;
   any change of term meanwhile is a spurious election (a follower gave up
   on a leader that was alive).
2. **Failover.**  ``--trials`` times: SIGKILL the leader (while the writers
   keep writing), measure the time until a write through a survivor
   succeeds (the figure issue 10 sets a goal for) and until the survivors
   agree on a new leader, restart the old leader and wait until it has
   caught up.

``--cpu-hogs N`` also runs N busy-looping processes throughout, to stand for
other work on the machine (the members then compete for the CPU, which is
what stretches heartbeats into spurious elections); ``--value-size`` sets the
size of each value written.

Run::

    python bench/bench_failover.py                       # plugin defaults
    python bench/bench_failover.py --heartbeat 0.1 --election-timeout 0.2

and it prints the figures; ``--json`` adds them as one JSON line.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from txraft.http_client import ClientError
from txraft.testing.processes import LocalCluster
from txraft.tap import DEFAULTS


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Load:
    """``writers`` coroutines putting keys through the members, round robin."""

    def __init__(self, cluster, writers, value_size=100):
        self.cluster = cluster
        self.value = b"x" * value_size
        self.writers = writers
        self.latencies = []
        self.failures = 0
        self.stopped = False
        self._running = []

    def start(self):
        self._running = [defer.ensureDeferred(self._write(i)) for i in range(self.writers)]

    async def _write(self, n):
        members = self.cluster.members
        i = 0
        while not self.stopped:
            member = members[(n + i) % len(members)]
            i += 1
            if not member.running:
                await self.cluster.sleep(0.02)
                continue
            t = time.monotonic()
            try:
                await self.cluster.client(member, timeout=15).put(f"bench-{n}-{i % 1000}", self.value)
            except ClientError:
                self.failures += 1
            else:
                self.latencies.append(time.monotonic() - t)

    async def stop(self):
        self.stopped = True
        await defer.gatherResults(self._running)


async def first_write(cluster, survivors, started):
    """
    Put a key through the survivors in turn, each try bounded by a short
    client timeout, until one succeeds.

    :returns: seconds from ``started`` (a ``time.monotonic()``) to that success.
    """
    i = 0
    while True:
        member = survivors[i % len(survivors)]
        i += 1
        try:
            await cluster.client(member, timeout=1.0).put("failover-probe", b"x")
        except ClientError:
            await cluster.sleep(0.005)
        else:
            return time.monotonic() - started


async def terms(cluster):
    statuses = await cluster.statuses()
    return {mid: (s["term"] if s else None) for mid, s in statuses.items()}


async def bench(reactor, args):
    directory = tempfile.mkdtemp(prefix="txraft-bench-")
    extra = ["--heartbeat", str(args.heartbeat), "--election-timeout", str(args.election_timeout),
             "--fsync", args.fsync]
    cluster = LocalCluster(directory, extra_args=extra, reactor=reactor, persistent=True)
    figures = {"heartbeat": args.heartbeat, "election_timeout": args.election_timeout, "fsync": args.fsync,
               "writers": args.writers, "cpus": os.cpu_count(), "cpu_hogs": args.cpu_hogs,
               "value_size": args.value_size}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.cpu_hogs)]
    try:
        cluster.start_all()
        leader = await cluster.agreed_leader(timeout=60)
        load = Load(cluster, args.writers, args.value_size)
        load.start()
        await cluster.sleep(1.0)  # let the load build up before counting
        before = await terms(cluster)
        t0 = time.monotonic()
        await cluster.sleep(args.duration)
        after = await terms(cluster)
        elapsed = time.monotonic() - t0
        writes = len(load.latencies)
        spurious = max(after[m] - before[m] for m in before)
        figures.update(load_seconds=round(elapsed, 1), spurious_elections=spurious,
                       writes_per_second=round(writes / elapsed), put_p50_ms=round(1000 * percentile(load.latencies, 50), 1),
                       put_p99_ms=round(1000 * percentile(load.latencies, 99), 1))
        print(f"load: {args.writers} writers for {elapsed:.1f} s: ~{writes / elapsed:.0f} puts/s "
              f"(p50 {figures['put_p50_ms']} ms, p99 {figures['put_p99_ms']} ms), "
              f"terms {sorted(set(before.values()))} -> {sorted(set(after.values()))}: "
              f"{spurious} spurious election(s)", flush=True)

        failovers, agreements, extra_terms, catch_ups, rejoin_terms = [], [], [], [], []
        for trial in range(args.trials):
            leader = await cluster.agreed_leader(timeout=30)
            term = (await cluster.status(leader))["term"]
            survivors = [m for m in cluster.members if m is not leader]
            t = time.monotonic()
            cluster.kill(leader)
            await cluster.wait_exit(leader)
            written = defer.ensureDeferred(first_write(cluster, survivors, t))
            new = await cluster.agreed_leader(survivors, timeout=30, exclude=(leader.id,), )
            agreed = time.monotonic() - t
            failover = await written
            agreements.append(agreed)
            new_term = (await cluster.status(new))["term"]
            failovers.append(failover)
            extra_terms.append(new_term - term - 1)
            t = time.monotonic()
            cluster.start(leader)
            commit = (await cluster.status(new))["commit_index"]
            await cluster.caught_up(leader, commit, timeout=60)
            catch_ups.append(time.monotonic() - t)
            # A rejoining member must not depose the leader: count the terms
            # begun from its restart until a while after it caught up.
            await cluster.sleep(args.settle)
            settled = await cluster.agreed_leader(timeout=30)
            settled_term = (await cluster.status(settled))["term"]
            rejoin_terms.append(settled_term - new_term)
            print(f"trial {trial + 1}: kill -9 {leader.name}: a write through a survivor succeeded after "
                  f"{failover:.3f} s; {new.name} leads, agreed after {agreed:.3f} s "
                  f"(term {term} -> {new_term}); restart + catch-up {catch_ups[-1]:.2f} s; "
                  f"{rejoin_terms[-1]} election(s) while it rejoined", flush=True)
        await load.stop()
        figures.update(
            failover_min_s=round(min(failovers), 3), failover_median_s=round(statistics.median(failovers), 3),
            failover_max_s=round(max(failovers), 3), leader_agreed_median_s=round(statistics.median(agreements), 3),
            failover_split_votes=sum(1 for e in extra_terms if e > 0),
            catch_up_median_s=round(statistics.median(catch_ups), 2), failed_puts=load.failures,
            rejoin_elections=sum(rejoin_terms), rejoins_with_elections=sum(1 for r in rejoin_terms if r))
        print(f"failover (kill -9 of the leader until a write through a survivor succeeds) "
              f"over {args.trials} trials: min {figures['failover_min_s']:.3f} s, median "
              f"{figures['failover_median_s']:.3f} s, max {figures['failover_max_s']:.3f} s "
              f"(survivors agreed on a leader after {figures['leader_agreed_median_s']:.3f} s, median); "
              f"{figures['failover_split_votes']} needed more than one election; "
              f"{figures['rejoins_with_elections']} of {args.trials} restarts caused elections "
              f"({figures['rejoin_elections']} in all); "
              f"{load.failures} puts failed or timed out (while a member was down)")
        if args.json:
            print(json.dumps(figures, sort_keys=True))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        try:
            await cluster.close_clients()
            await cluster.stop()
        finally:
            cluster.kill_all_now()
            shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=float, default=DEFAULTS["heartbeat"])
    parser.add_argument("--election-timeout", type=float, default=DEFAULTS["election-timeout"])
    parser.add_argument("--fsync", default=DEFAULTS["fsync"], choices=["always", "never"])
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers (default %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load without failures")
    parser.add_argument("--trials", type=int, default=5, help="leader kills")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after a restarted member caught up during which elections are counted")
    parser.add_argument("--cpu-hogs", type=int, default=0, help="busy-looping processes meanwhile")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value written")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    sys.exit(main())
