"""
``txraft demo``, and :class:`LocalCluster`: members as real ``twistd raft``
processes on loopback.

The demo makes certificates in a temporary directory, starts three members as
``twistd -n --pidfile= raft ...`` processes on 127.0.0.21-23 (free ports),
writes and reads keys through different members over HTTPS with a client
certificate, kills the leader with SIGKILL, shows the new leader and that no
data was lost, restarts the old leader and shows it catching up, prints a
report with timings and removes every process and file.

:class:`LocalCluster` is what the demo, ``tests/test_processes.py`` and
``bench/bench_failover.py`` build clusters with.  It polls members' status
over HTTP with deadlines; it never sleeps on hope.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from txraft.cli import Client, ClientError

__all__ = ["LocalCluster", "Member", "run_demo", "twistd_command"]


def twistd_command():
    """:returns: the argv prefix that runs ``twistd`` with this Python."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def free_port(host):
    """A TCP port free on ``host`` now (each member has its own address, so a clash is unlikely)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Member:
    """
    One member process of a :class:`LocalCluster`.

    :ivar name: its certificate name (``member1``...).
    :ivar id: its member id, ``host:port``.
    :ivar http: base URL of its API.
    :ivar process: the running ``subprocess.Popen``, or ``None``.
    """

    def __init__(self, name, host, port, http_port, directory):
        self.name = name
        self.host = host
        self.port = port
        self.http_port = http_port
        self.id = f"{host}:{port}"
        self.logdir = os.path.join(directory, name)
        self.logfile = os.path.join(directory, name + ".out")
        self.process = None
        self.starts = 0

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def __repr__(self):
        return f"<Member {self.name} {self.id}>"


class LocalCluster:
    """
    A cluster of ``twistd raft`` processes on loopback addresses.

    :param directory: where certificates, logs and process output go.
    :param size: number of members.
    :param hosts: one loopback address per member (default 127.0.0.21, .22...).
    :param tls: certificates and HTTPS (``False``: ``--insecure``).
    :param extra_args: more ``twistd raft`` options for every member.
    :param client_name: name of the client certificate made for the API.
    :param reactor: the reactor (for polling); the global one when ``None``.
    :param persistent: keep HTTP connections open and reuse one client per
        member (for load); :meth:`close_clients` closes them.
    """

    def __init__(self, directory, size=3, hosts=None, tls=True, extra_args=(), client_name="client",
                 reactor=None, persistent=False):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.directory = directory
        self.tls = tls
        self.extra_args = list(extra_args)
        self.client_name = client_name
        self.persistent = persistent
        self._clients = {}
        hosts = hosts or [f"127.0.0.{21 + i}" for i in range(size)]
        self.members = [Member(f"member{i + 1}", host, free_port(host), free_port(host), directory)
                        for i, host in enumerate(hosts)]
        self.certs = None
        if tls:
            from txraft.certs import write_cluster_certs

            self.certs = write_cluster_certs(os.path.join(directory, "certs"),
                                             [m.name for m in self.members], client=client_name)

    # -- processes ---------------------------------------------------------------

    def argv(self, member):
        """:returns: the command line that runs ``member``."""
        peers = ",".join(f"{m.name}@{m.id}" for m in self.members)
        argv = twistd_command() + ["-n", "--pidfile=", "raft", "--listen", member.id, "--peers", peers,
                                   "--logdir", member.logdir, "--http", f"{member.host}:{member.http_port}"]
        if self.tls:
            cert, key = self.certs[member.name]
            argv += ["--cert", cert, "--key", key, "--ca", self.certs["ca"][0],
                     "--client-acl", self.client_name]
        else:
            argv += ["--insecure"]
        return argv + self.extra_args

    def start(self, member):
        """Start ``member``'s process (its output goes to ``member.logfile``)."""
        if member.running:
            raise RuntimeError(f"{member} is already running")
        member.starts += 1
        with open(member.logfile, "ab") as out:
            out.write(f"---- start {member.starts}\n".encode())
            out.flush()
            member.process = subprocess.Popen(self.argv(member), stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, cwd=self.directory)
        return member.process

    def start_all(self):
        for member in self.members:
            self.start(member)

    def kill(self, member, sig=signal.SIGKILL):
        """Send ``sig`` to ``member``'s process (SIGKILL: no flushing, no goodbye)."""
        if member.running:
            member.process.send_signal(sig)

    async def wait_exit(self, member, timeout=10.0):
        """:returns: the exit status of ``member``'s process, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while member.process is not None and member.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{member} did not exit within {timeout:g} s")
            await self.sleep(0.02)
        return None if member.process is None else member.process.returncode

    async def stop(self, timeout=10.0):
        """Stop every process: SIGTERM, then SIGKILL for any still running after ``timeout``."""
        for member in self.members:
            self.kill(member, signal.SIGTERM)
        for member in self.members:
            try:
                await self.wait_exit(member, timeout)
            except TimeoutError:
                self.kill(member, signal.SIGKILL)
                await self.wait_exit(member, 5.0)

    def kill_all_now(self):
        """SIGKILL and reap every process, synchronously (for teardown after errors)."""
        for member in self.members:
            if member.process is not None:
                if member.process.poll() is None:
                    member.process.kill()
                try:
                    member.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def output(self, member):
        """:returns: what ``member``'s processes printed so far."""
        try:
            with open(member.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- clients and conditions ------------------------------------------------------

    def client(self, member, name=None, timeout=15.0):
        """:returns: a :class:`txraft.cli.Client` for ``member``'s API (client certificate ``name``)."""
        if self.persistent:
            cached = self._clients.get((member.id, name, timeout))
            if cached is None:
                cached = self._clients[(member.id, name, timeout)] = self._new_client(member, name, timeout)
            return cached
        return self._new_client(member, name, timeout)

    async def close_clients(self):
        """Close the connections of persistent clients."""
        clients, self._clients = list(self._clients.values()), {}
        await defer.gatherResults([c.close() for c in clients])

    def _new_client(self, member, name, timeout):
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{member.host}:{member.http_port}"
        if not self.tls:
            return Client(url, insecure=True, timeout=timeout, reactor=self.reactor, persistent=self.persistent)
        cert, key = self.certs[name or self.client_name]
        return Client(url, cert, key, self.certs["ca"][0], timeout=timeout, reactor=self.reactor,
                      persistent=self.persistent)

    def sleep(self, seconds):
        return task.deferLater(self.reactor, seconds, lambda: None)

    async def status(self, member, timeout=2.0):
        """:returns: ``member``'s ``/v1/status``, or ``None`` when it does not answer."""
        if not member.running:
            return None
        try:
            return await self.client(member, timeout=timeout).status()
        except ClientError:
            return None

    async def statuses(self, members=None):
        members = self.members if members is None else members
        results = await defer.gatherResults([defer.ensureDeferred(self.status(m)) for m in members])
        return dict(zip([m.id for m in members], results))

    async def wait_for(self, condition, timeout, what, interval=0.05):
        """
        Poll ``condition()`` (a coroutine function) until it returns a true
        value, and return it.

        :raises TimeoutError: naming ``what`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = await condition()
            if last:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            await self.sleep(interval)

    async def agreed_leader(self, members=None, timeout=20.0, exclude=()):
        """
        Wait until every running member among ``members`` names the same
        leader, which says it leads, and is not in ``exclude``.

        :returns: the leader's :class:`Member`.
        """
        members = [m for m in (self.members if members is None else members) if m.running]
        by_id = {m.id: m for m in self.members}

        async def agreed():
            statuses = await self.statuses(members)
            if any(s is None for s in statuses.values()):
                return None
            leaders = {s["leader"] for s in statuses.values()}
            if len(leaders) != 1:
                return None
            leader = leaders.pop()
            if not leader or leader in exclude or leader not in by_id:
                return None
            if statuses.get(leader, {}).get("role") != "leader":
                return None
            return by_id[leader]

        return await self.wait_for(agreed, timeout, "an agreed leader")

    async def caught_up(self, member, index, timeout=20.0):
        """Wait until ``member`` has applied ``index``."""

        async def applied():
            s = await self.status(member)
            return s is not None and s["applied_index"] >= index

        await self.wait_for(applied, timeout, f"{member.name} applied index {index}")


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
