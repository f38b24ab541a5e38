"""
Benchmarks of the Raft core and member API, without disks or sockets.

Prints:
- commit throughput and latency of a 3-member cluster on the real reactor,
  joined by the in-memory transport (so the figures measure txraft's own
  per-command cost: batching, replication, apply, deduplication);
- failover time in the simulator, in heartbeats, over many leader crashes;
- simulator speed in schedules per second.

Run: python bench/bench_core.py [--commands 20000] [--concurrency 256]
"""

import argparse
import random
import statistics
import time

from twisted.internet import defer, task

from txraft import Raft, RaftClient, RaftConfig, errors
from txraft.storage.memory import MemoryStorage
from txraft.testing import SimulatedCluster, run_schedule
from txraft.transport.memory import MemoryNetwork


class Sink(RaftClient):
    def __init__(self):
        self.count = 0

    def apply(self, command, index):
        self.count += 1
        return index


@defer.inlineCallbacks
def throughput(reactor, commands, concurrency):
    network = MemoryNetwork(reactor)
    ids = [f"127.0.0.{i}:7000" for i in (1, 2, 3)]
    members = []
    for me in ids:
        member = Raft(RaftConfig(listen=me, heartbeat=0.05), Sink(), reactor=reactor,
                      transport=network.transport(me), storage=MemoryStorage(), rng=random.Random(me))
        for other in ids:
            member.add_member(other)
        members.append(member)
    for member in members:
        yield member.start()
    while not any(m.status().role == "leader" for m in members):
        yield task.deferLater(reactor, 0.01, lambda: None)
    leader = next(m for m in members if m.status().role == "leader")
    follower = next(m for m in members if m is not leader)
    for name, target in (("leader", leader), ("follower (forwarded)", follower)):
        latencies = []
        sent = 0
        busy = 0

        @defer.inlineCallbacks
        def worker():
            nonlocal sent, busy
            while sent < commands:
                sent += 1
                started = time.perf_counter()
                while True:
                    try:
                        yield target.append(b"x" * 100)
                        break
                    except errors.Busy as refused:
                        # Backpressure: nothing was stored; come back as told.
                        busy += 1
                        yield task.deferLater(reactor, refused.retry_after, lambda: None)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        yield defer.gatherResults([worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
        latencies.sort()
        print(f"append via {name}: {commands} commands of 100 B, {concurrency} in flight: "
              f"{commands / elapsed:,.0f} commits/s; latency p50 {statistics.median(latencies) * 1e3:.2f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms; {busy} Busy refusals retried")
    for member in members:
        yield member.stop()


def failover(crashes=200):
    heartbeats = []
    for seed in range(crashes // 4):
        cluster = SimulatedCluster(5, seed=seed)
        cluster.start()
        cluster.wait_for_leader()
        for _ in range(2):
            cluster.crash(cluster.agreed_leader())
            started = cluster.clock.seconds()
            cluster.wait_for_leader(timeout=30)
            heartbeats.append((cluster.clock.seconds() - started) / cluster.heartbeat)
            cluster.restart(sorted(cluster.crashed)[0])
            cluster.wait_for_leader()
            # a leader that just restarted members may still be stabilising
    heartbeats.sort()
    print(f"failover after a leader crash (5 members, simulator, {len(heartbeats)} crashes): "
          f"median {statistics.median(heartbeats):.1f} heartbeats, p90 {heartbeats[int(len(heartbeats) * 0.9)]:.1f}, "
          f"max {heartbeats[-1]:.1f} (election timeout is 2-3 heartbeats)")


def simulator_speed(n=40):
    for members in (3, 5):
        started = time.perf_counter()
        for seed in range(n):
            run_schedule(seed, members=members)
        elapsed = time.perf_counter() - started
        print(f"simulator: {n / elapsed:.1f} schedules/s with {members} members")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    task.react(lambda reactor: throughput(reactor, args.commands, args.concurrency))


if __name__ == "__main__":
    failover()
    simulator_speed()
    main()
