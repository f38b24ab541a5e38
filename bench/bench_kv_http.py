"""
Measure the key-value HTTP API: PUT and GET latency and throughput through
``txraft.http`` in front of an in-process 3-member cluster.

    python bench/bench_kv_http.py [--requests 500] [--concurrency 32] [--value-size 100]

The members are real :class:`txraft.member.Raft` instances with memory storage
joined by a :class:`~txraft.transport.memory.MemoryNetwork` on the real
reactor, so the figures are the cost of HTTP (twisted.web and treq over
loopback TCP), the Raft core and the store, all on one reactor thread with the
client; there is no fsync and no TLS.  ``cpu`` is the process CPU time per
request (server and client together), which a loaded machine disturbs less than
the wall-clock figures.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.web.client import HTTPConnectionPool  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from txraft.config import RaftConfig  # noqa: E402
from txraft.http import create_api  # noqa: E402
from txraft.kv import KeyValueStore  # noqa: E402
from txraft.member import Raft  # noqa: E402
from txraft.storage.memory import MemoryStorage  # noqa: E402
from txraft.transport.memory import MemoryNetwork  # noqa: E402

IDS = ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def sequential(label, n, call):
    samples = []
    cpu = time.process_time()
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    print(f"{label:<44} p50 {percentile(samples, 0.5) * 1e3:6.2f} ms   p99 {percentile(samples, 0.99) * 1e3:6.2f} ms"
          f"   {n / sum(samples):7.0f} req/s   cpu {(time.process_time() - cpu) / n * 1e3:5.2f} ms/req")


async def concurrent(label, n, concurrency, call):
    remaining = iter(range(n))
    samples = []

    async def worker():
        for i in remaining:
            started = time.perf_counter()
            await call(i)
            samples.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    print(f"{label:<44} p50 {percentile(samples, 0.5) * 1e3:6.2f} ms   p99 {percentile(samples, 0.99) * 1e3:6.2f} ms"
          f"   {n / elapsed:7.0f} req/s   cpu {(time.process_time() - cpu) / n * 1e3:5.2f} ms/req")


async def main(reactor, requests, concurrency, value_size):
    network = MemoryNetwork(reactor)
    rafts, urls, ports = {}, {}, []
    for member_id in IDS:
        store = KeyValueStore()
        raft = Raft(RaftConfig(listen=member_id, heartbeat=0.05, election_timeout=0.3, request_timeout=10.0),
                    store, reactor=reactor, transport=network.transport(member_id), storage=MemoryStorage())
        for other in IDS:
            raft.add_member(other)
        rafts[member_id] = raft
        await raft.start()
        port = reactor.listenTCP(0, Site(create_api(raft, store)), interface="127.0.0.1")
        ports.append(port)
        urls[member_id] = "http://127.0.0.1:%d" % port.getHost().port
    while True:
        leaders = [i for i, r in rafts.items() if r.status().role == "leader"]
        if len(leaders) == 1 and all(r.status().leader == leaders[0] for r in rafts.values()):
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    leader = leaders[0]
    follower = next(i for i in IDS if i != leader)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    value = b"v" * value_size

    async def call(method, url, data=None, expect=200):
        response = await treq.request(method, url, data=data, pool=pool)
        await treq.content(response)
        if response.code != expect:
            raise AssertionError(f"{method} {url}: {response.code}")

    def kv(member, key):
        return f"{urls[member]}/v1/kv/{key}"

    print(f"3 members, memory storage and network; {requests} requests, {value_size}-byte values, "
          f"persistent HTTP/1.1 connections")
    await sequential("PUT via leader, one at a time", requests,
                     lambda i: call("PUT", kv(leader, f"k{i}"), value))
    await sequential("PUT via follower, one at a time", requests,
                     lambda i: call("PUT", kv(follower, f"k{i}"), value))
    await sequential("GET linearizable via leader, one at a time", requests,
                     lambda i: call("GET", kv(leader, f"k{i}")))
    await sequential("GET linearizable via follower, one at a time", requests,
                     lambda i: call("GET", kv(follower, f"k{i}")))
    await sequential("GET stale via follower, one at a time", requests,
                     lambda i: call("GET", kv(follower, f"k{i}") + "?stale=true"))
    await concurrent(f"PUT via leader, {concurrency} in flight", requests * 4, concurrency,
                     lambda i: call("PUT", kv(leader, f"c{i}"), value))
    await concurrent(f"PUT via follower, {concurrency} in flight", requests * 4, concurrency,
                     lambda i: call("PUT", kv(follower, f"c{i}"), value))
    await concurrent(f"GET linearizable via follower, {concurrency} in flight", requests * 4, concurrency,
                     lambda i: call("GET", kv(follower, f"c{i}")))
    await concurrent(f"GET stale via follower, {concurrency} in flight", requests * 4, concurrency,
                     lambda i: call("GET", kv(follower, f"c{i}") + "?stale=true"))

    await pool.closeCachedConnections()
    for port in ports:
        await port.stopListening()
    for raft in rafts.values():
        await raft.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        main(reactor, args.requests, args.concurrency, args.value_size)))
