"""
Measure AMPTransport over TLS on loopback: RPC round trips per second for small
AppendEntries, and MB/s for snapshot chunks.

    python bench/bench_transport.py [--seconds 3]

Certificates are made in a temporary directory.  The receiving member's handler
answers at once, so the figures are the transport's own cost (TLS, AMP,
fragmenting, msgpack), one reactor thread serving both ends.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from zope.interface import implementer  # noqa: E402

from txraft import certs  # noqa: E402
from txraft import messages as m  # noqa: E402
from txraft.interfaces import IRPCHandler  # noqa: E402
from txraft.transport.amp import AMPTransport  # noqa: E402


@implementer(IRPCHandler)
class Ack:
    def receive(self, message):
        if isinstance(message, m.AppendEntries):
            return defer.succeed(m.AppendEntriesReply(message.term, True, message.prev_index + len(message.entries)))
        return defer.succeed(m.InstallSnapshotReply(message.term, message.offset + len(message.data)))


async def timed(seconds, one_call, in_flight):
    """Run ``one_call()`` with ``in_flight`` concurrent callers for about ``seconds``; return (calls, elapsed)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller():
        nonlocal done
        while time.perf_counter() < deadline:
            await one_call()
            done += 1

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(caller()) for _ in range(in_flight)])
    return done, time.perf_counter() - start


async def main(reactor, seconds):
    directory = tempfile.mkdtemp(prefix="txraft-bench-")
    paths = certs.write_cluster_certs(directory, ["member1", "member2"])

    def make(n):
        cert, key = paths[f"member{n}"]
        return AMPTransport(f"127.0.0.{10 + n}:0", cert=cert, key=key, ca=paths["ca"][0],
                            acl=["member1", "member2"], reactor=reactor)

    server, client = make(1), make(2)
    await server.start(Ack())
    await client.start(Ack())
    peer = server.address
    entry = m.Entry(1, 1, data=os.urandom(100))
    small = m.AppendEntries(1, client.address, 0, 0, (entry,), 0)
    await client.send(peer, small)
    print(f"AMPTransport over TLS 1.2+ on loopback, {seconds:g} s per figure")

    for in_flight in (1, 8):
        calls, elapsed = await timed(seconds, lambda: client.send(peer, small), in_flight)
        print(f"  AppendEntries, 1 entry of 100 B, {in_flight} in flight: {calls / elapsed:8.0f} round trips/s")

    heartbeat = m.AppendEntries(1, client.address, 0, 0, (), 0)
    calls, elapsed = await timed(seconds, lambda: client.send(peer, heartbeat), 8)
    print(f"  heartbeat (no entries), 8 in flight:           {calls / elapsed:8.0f} round trips/s")

    for size, in_flight, label in ((60 * 1024, 1, "60 KiB chunks, 1 in flight"),
                                   (60 * 1024, 4, "60 KiB chunks, 4 in flight"),
                                   (1024 * 1024, 1, "1 MiB chunks (fragmented), 1 in flight"),
                                   (16 * 1024 * 1024, 1, "16 MiB message (fragmented), 1 in flight")):
        data = os.urandom(size)
        chunk = m.InstallSnapshot(1, client.address, 9, 1, 0, data, False)
        calls, elapsed = await timed(seconds, lambda: client.send(peer, chunk), in_flight)
        print(f"  InstallSnapshot {label}: {calls * size / elapsed / 1e6:7.1f} MB/s ({calls / elapsed:.0f} calls/s)")

    await client.stop()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options.seconds)))
