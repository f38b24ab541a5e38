"""
``txraft demo``: a cluster of real ``twistd raft`` processes on loopback,
start to finish.

The demo makes certificates in a temporary directory, starts three members as
``twistd -n --pidfile= raft ...`` processes on 127.0.0.21-23 (free ports),
writes and reads keys through different members over HTTPS with a client
certificate, kills the leader with SIGKILL, shows the new leader and that no
data was lost, restarts the old leader and shows it catching up, prints a
report with timings and removes every process and file.

The cluster is a :class:`txraft.testing.processes.LocalCluster`, which tests
use too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from twisted.internet import defer

# Re-exported: LocalCluster, Member and twistd_command lived here before.
from txraft.testing.processes import LocalCluster, Member, twistd_command

__all__ = ["LocalCluster", "Member", "run_demo", "twistd_command"]


# -- the demo ------------------------------------------------------------------------


class _Report:
    def __init__(self):
        self.started = time.monotonic()
        self.lines = []
        self.figures = {}

    def say(self, text):
        elapsed = time.monotonic() - self.started
        line = f"[{elapsed:6.2f}s] {text}"
        self.lines.append(line)
        print(line, flush=True)

    def figure(self, name, seconds):
        self.figures[name] = round(seconds, 3)


async def _demo(cluster, report):
    m1, m2, m3 = cluster.members
    report.say(f"certificates for {', '.join(m.name for m in cluster.members)} and client "
               f"'{cluster.client_name}' in {os.path.join(cluster.directory, 'certs')}")
    t = time.monotonic()
    cluster.start_all()
    for m in cluster.members:
        report.say(f"started {m.name}: member {m.id}, HTTPS API https://{m.host}:{m.http_port} (pid {m.process.pid})")
    leader = await cluster.agreed_leader(timeout=30.0)
    report.figure("first_leader_s", time.monotonic() - t)
    report.say(f"{leader.name} ({leader.id}) leads; elected {report.figures['first_leader_s']:.2f}s after start")

    written = {}
    for i, m in enumerate(cluster.members, 1):
        key, value = f"city{i}", f"value {i} written via {m.name}"
        t = time.monotonic()
        reply = await cluster.client(m).put(key, value)
        report.figure(f"put_via_{m.name}_s", time.monotonic() - t)
        written[key] = value.encode()
        report.say(f"PUT {key} via {m.name} ({'leader' if m is leader else 'follower'}) -> index {reply['index']} "
                   f"in {1000 * (time.monotonic() - t):.1f} ms")
    for i, key in enumerate(sorted(written)):
        reader = cluster.members[(i + 1) % len(cluster.members)]
        t = time.monotonic()
        value = await cluster.client(reader).get(key)
        if value != written[key]:
            raise AssertionError(f"GET {key} via {reader.name} returned {value!r}, not {written[key]!r}")
        report.say(f"GET {key} via {reader.name} (linearizable) = {value.decode()!r} "
                   f"in {1000 * (time.monotonic() - t):.1f} ms")
    reply = await cluster.client(m2).cas("city1", "wrong guess", "x")
    report.say(f"CAS city1 expecting 'wrong guess' via {m2.name}: refused, current value "
               f"{reply.get('current')!r}")

    # Kill the leader without warning.
    survivors = [m for m in cluster.members if m is not leader]
    report.say(f"kill -9 {leader.name} (the leader, pid {leader.process.pid})")
    t = time.monotonic()
    cluster.kill(leader)
    await cluster.wait_exit(leader)
    new_leader = await cluster.agreed_leader(survivors, timeout=30.0, exclude=(leader.id,))
    report.figure("failover_s", time.monotonic() - t)
    report.say(f"{new_leader.name} ({new_leader.id}) leads after {report.figures['failover_s']:.2f}s")
    for key, value in sorted(written.items()):
        got = await cluster.client(survivors[0]).get(key)
        if got != value:
            raise AssertionError(f"after failover GET {key} returned {got!r}, not {value!r}")
    report.say(f"all {len(written)} keys survived (read through {survivors[0].name})")
    reply = await cluster.client(survivors[-1]).put("written-while-down", f"{leader.name} was down")
    written["written-while-down"] = f"{leader.name} was down".encode()
    target = reply["index"]
    report.say(f"PUT written-while-down via {survivors[-1].name} -> index {target}")

    # Bring the old leader back: it recovers its log from disk and catches up.
    t = time.monotonic()
    cluster.start(leader)
    report.say(f"restarted {leader.name} (pid {leader.process.pid})")
    await cluster.caught_up(leader, target, timeout=30.0)
    report.figure("catch_up_s", time.monotonic() - t)
    value = await cluster.client(leader).get("written-while-down", stale=True)
    if value != written["written-while-down"]:
        raise AssertionError(f"{leader.name} has {value!r} after catching up")
    s = await cluster.status(leader)
    report.say(f"{leader.name} caught up to index {s['applied_index']} in {report.figures['catch_up_s']:.2f}s "
               f"(role {s['role']}, leader {s['leader']}); its own stale read: {value.decode()!r}")
    report.figures["keys"] = len(written)


async def run_demo(reactor, timeout=180.0, as_json=False, directory=None):
    """
    Run the demo.

    :returns: a Deferred-compatible coroutine result: ``True`` on success.
    """
    own_directory = directory is None
    directory = directory or tempfile.mkdtemp(prefix="txraft-demo-")
    report = _Report()
    cluster = None
    ok = False
    try:
        cluster = LocalCluster(directory, reactor=reactor, client_name="demo-client")
        work = defer.ensureDeferred(_demo(cluster, report))
        work.addTimeout(timeout, reactor)
        await work
        ok = True
    except defer.TimeoutError:
        report.say(f"FAILED: the demo did not finish within {timeout:g} s")
    except Exception as e:
        report.say(f"FAILED: {type(e).__name__}: {e}")
    finally:
        if cluster is not None:
            if not ok:
                for m in cluster.members:
                    tail = cluster.output(m).strip().splitlines()[-5:]
                    if tail:
                        print(f"--- last lines of {m.name}:\n  " + "\n  ".join(tail), file=sys.stderr)
            try:
                await cluster.stop(timeout=10.0)
            finally:
                cluster.kill_all_now()
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)
    if ok:
        f = report.figures
        print()
        print("txraft demo: OK")
        print(f"  first leader elected      {f['first_leader_s']:.2f} s after start")
        print(f"  failover after kill -9    {f['failover_s']:.2f} s")
        print(f"  old leader caught up in   {f['catch_up_s']:.2f} s")
        print(f"  keys written, none lost   {f['keys']}")
        print(f"  processes stopped and {directory} removed")
        if as_json:
            print(json.dumps(f, sort_keys=True))
    return ok
