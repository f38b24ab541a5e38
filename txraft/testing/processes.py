"""
Real ``twistd raft`` members for tests: :class:`LocalCluster` starts a cluster
of member processes on loopback addresses, talks to them through their HTTP
API and waits for conditions with deadlines (it polls; it never sleeps on
hope).  ``txraft demo``, ``tests/test_processes.py`` and
``bench/bench_failover.py`` build their clusters with it, and so can the tests
of an application::

    from txraft.testing.processes import LocalCluster

    async def test_survives_a_leader_crash(tmp_path):
        cluster = LocalCluster(str(tmp_path), size=3)
        try:
            cluster.start_all()
            leader = await cluster.agreed_leader()
            await cluster.client(leader).put("k", "v")
            cluster.kill(leader)
            await cluster.wait_exit(leader)
            survivor = await cluster.agreed_leader(exclude=(leader.id,),
                                                   members=[m for m in cluster.members if m is not leader])
            assert await cluster.client(survivor).get("k") == b"v"
        finally:
            await cluster.stop()
            cluster.kill_all_now()

Members need the ``twistd`` of this Python and the ``txraft`` plugin on its
path (``PYTHONPATH`` is passed through to the processes).  With ``tls=True``
(the default) the cluster writes its own CA, member and client certificates.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar

from twisted.internet import defer, task

from txraft.http_client import Client, ClientError

__all__ = ["LocalCluster", "Member", "SteadyWriter", "twistd_command", "free_port"]

_T = TypeVar("_T")
#: A member's ``/v1/status``, decoded from JSON.
_Status = Dict[str, Any]


def twistd_command() -> List[str]:
    """:returns: the argv prefix that runs ``twistd`` with this Python."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def free_port(host: str) -> int:
    """
    :param str host: a local address.
    :returns: a TCP port free on ``host`` now (each member has its own
        address, so a clash with another process is unlikely).
    """
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Member:
    """
    One member process of a :class:`LocalCluster`.

    :param name: its certificate name.
    :param host: its loopback address.
    :param port: its member port.
    :param http_port: the port of its HTTP API.
    :param directory: the cluster's directory; the member's log directory
        and process output go there.

    :ivar name: its certificate name (``member1``...).
    :ivar id: its member id, ``host:port``.
    :ivar http: base URL of its API.
    :ivar process: the running ``subprocess.Popen``, or ``None``.
    :ivar logdir: its log directory.
    :ivar logfile: the file its processes' output is appended to.
    :ivar starts: how many times it was started.
    :ivar join: ids of members it asks to add it (``--join``), for a
        member added to a running cluster; empty for the founding ones.
    """

    def __init__(self, name: str, host: str, port: int, http_port: int, directory: str) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.http_port = http_port
        self.id = f"{host}:{port}"
        self.logdir = os.path.join(directory, name)
        self.logfile = os.path.join(directory, name + ".out")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        self.join: Tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """Whether its process is alive."""
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        return f"<Member {self.name} {self.id}>"


class LocalCluster:
    """
    A cluster of ``twistd raft`` processes on loopback addresses.

    Making it writes the certificates and picks free ports; nothing runs
    until :meth:`start` or :meth:`start_all`.  Always end with :meth:`stop`
    (and :meth:`kill_all_now` after an error) so no process outlives the test.

    :param directory: where certificates, logs and process output go.
    :param size: number of members.
    :param hosts: one loopback address per member (default 127.0.0.21, .22...).
    :param tls: certificates and HTTPS (``False``: ``--insecure``).
    :param extra_args: more ``twistd raft`` options for every member.
    :param client_name: name of the client certificate made for the API.
    :param reactor: the reactor (for polling); the global one when ``None``.
    :param persistent: keep HTTP connections open and reuse one client per
        member (for load); :meth:`close_clients` closes them.

    :ivar members: the :class:`Member` list, ``member1`` first.
    :ivar certs: name -> ``(cert, key)`` paths, with ``"ca"``; ``None``
        without TLS.
    """

    def __init__(self, directory: str, size: int = 3, hosts: Optional[Sequence[str]] = None, tls: bool = True,
                 extra_args: Iterable[str] = (), client_name: str = "client", reactor: Any = None,
                 persistent: bool = False) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.directory = directory
        self.tls = tls
        self.extra_args = list(extra_args)
        self.client_name = client_name
        self.persistent = persistent
        self._clients: Dict[Tuple[str, Optional[str], float], Client] = {}
        hosts = hosts or [f"127.0.0.{21 + i}" for i in range(size)]
        self.members = [Member(f"member{i + 1}", host, free_port(host), free_port(host), directory)
                        for i, host in enumerate(hosts)]
        self.certs: Optional[Dict[str, Tuple[str, str]]] = None
        if tls:
            from txraft.certs import write_cluster_certs

            self.certs = write_cluster_certs(os.path.join(directory, "certs"),
                                             [m.name for m in self.members], client=client_name)

    # -- processes ---------------------------------------------------------------

    def argv(self, member: Member) -> List[str]:
        """:returns: the command line that runs ``member``."""
        peers = ",".join(f"{m.name}@{m.id}" for m in self.members if not m.join or m is member)
        argv = twistd_command() + ["-n", "--pidfile=", "raft", "--listen", member.id, "--peers", peers,
                                   "--logdir", member.logdir, "--http", f"{member.host}:{member.http_port}"]
        if member.join:
            argv += ["--join", ",".join(member.join)]
        if self.certs is not None:
            cert, key = self.certs[member.name]
            argv += ["--cert", cert, "--key", key, "--ca", self.certs["ca"][0],
                     "--client-acl", self.client_name]
            if any(m.join for m in self.members):
                # Members added later must admit every member made so far;
                # the founders admit them through the configuration.
                argv += ["--acl", ",".join(m.name for m in self.members)]
        else:
            argv += ["--insecure"]
        return argv + self.extra_args

    def start(self, member: Member) -> subprocess.Popen[bytes]:
        """
        Start ``member``'s process (its output goes to ``member.logfile``).

        :returns: the ``subprocess.Popen``.
        :raises RuntimeError: when it is already running.
        """
        if member.running:
            raise RuntimeError(f"{member} is already running")
        member.starts += 1
        with open(member.logfile, "ab") as out:
            out.write(f"---- start {member.starts}\n".encode())
            out.flush()
            process = member.process = subprocess.Popen(self.argv(member), stdout=out, stderr=subprocess.STDOUT,
                                                        stdin=subprocess.DEVNULL, cwd=self.directory)
        return process

    def new_member(self, join: Iterable[Member], host: Optional[str] = None) -> Member:
        """
        Make (but do not start) a member to add to the running cluster: a
        certificate from the cluster CA, free ports, and ``--join`` with the
        ids of ``join`` (the members it asks to add it).

        :returns: the :class:`Member`, appended to :attr:`members`.
        """
        number = len(self.members) + 1
        name = f"member{number}"
        host = host or f"127.0.0.{20 + number}"
        if self.certs is not None:
            from txraft.certs import write_cluster_certs

            self.certs.update(write_cluster_certs(os.path.join(self.directory, "certs"), [name]))
        member = Member(name, host, free_port(host), free_port(host), self.directory)
        member.join = tuple(m.id for m in join)
        self.members.append(member)
        return member

    def start_all(self) -> None:
        """Start every member's process."""
        for member in self.members:
            self.start(member)

    def kill(self, member: Member, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``member``'s process (SIGKILL: no flushing, no goodbye)."""
        if member.process is not None and member.running:
            member.process.send_signal(sig)

    async def wait_exit(self, member: Member, timeout: float = 10.0) -> Optional[int]:
        """:returns: the exit status of ``member``'s process, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while member.process is not None and member.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{member} did not exit within {timeout:g} s")
            await self.sleep(0.02)
        return None if member.process is None else member.process.returncode

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every process: SIGTERM, then SIGKILL for any still running after ``timeout``."""
        for member in self.members:
            self.kill(member, signal.SIGTERM)
        for member in self.members:
            try:
                await self.wait_exit(member, timeout)
            except TimeoutError:
                self.kill(member, signal.SIGKILL)
                await self.wait_exit(member, 5.0)

    def kill_all_now(self) -> None:
        """SIGKILL and reap every process, synchronously (for teardown after errors)."""
        for member in self.members:
            if member.process is not None:
                if member.process.poll() is None:
                    member.process.kill()
                try:
                    member.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def output(self, member: Member) -> str:
        """:returns: what ``member``'s processes printed so far."""
        try:
            with open(member.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- clients and conditions ------------------------------------------------------

    def client(self, member: Member, name: Optional[str] = None, timeout: float = 15.0) -> Client:
        """:returns: a :class:`txraft.http_client.Client` for ``member``'s API (client certificate ``name``)."""
        if self.persistent:
            cached = self._clients.get((member.id, name, timeout))
            if cached is None:
                cached = self._clients[(member.id, name, timeout)] = self._new_client(member, name, timeout)
            return cached
        return self._new_client(member, name, timeout)

    async def close_clients(self) -> None:
        """Close the connections of persistent clients."""
        clients, self._clients = list(self._clients.values()), {}
        await defer.gatherResults([c.close() for c in clients])

    def _new_client(self, member: Member, name: Optional[str], timeout: float) -> Client:
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{member.host}:{member.http_port}"
        if self.certs is None:
            return Client(url, insecure=True, timeout=timeout, reactor=self.reactor, persistent=self.persistent)
        cert, key = self.certs[name or self.client_name]
        return Client(url, cert, key, self.certs["ca"][0], timeout=timeout, reactor=self.reactor,
                      persistent=self.persistent)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """:returns: a Deferred firing after ``seconds`` on the cluster's reactor."""
        return task.deferLater(self.reactor, seconds, lambda: None)

    async def status(self, member: Member, timeout: float = 2.0) -> Optional[_Status]:
        """:returns: ``member``'s ``/v1/status``, or ``None`` when it does not answer."""
        if not member.running:
            return None
        try:
            return await self.client(member, timeout=timeout).status()
        except ClientError:
            return None

    async def statuses(self, members: Optional[Sequence[Member]] = None) -> Dict[str, Optional[_Status]]:
        """:returns: member id -> its status (``None``: no answer), for ``members`` (default all)."""
        members = self.members if members is None else members
        results = await defer.gatherResults([defer.ensureDeferred(self.status(m)) for m in members])
        return dict(zip([m.id for m in members], results))

    async def wait_for(self, condition: Callable[[], Awaitable[Optional[_T]]], timeout: float, what: str,
                       interval: float = 0.05) -> _T:
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

    async def agreed_leader(self, members: Optional[Sequence[Member]] = None, timeout: float = 20.0,
                            exclude: Iterable[str] = ()) -> Member:
        """
        Wait until every running member among ``members`` names the same
        leader, which says it leads, and is not in ``exclude``.

        :returns: the leader's :class:`Member`.
        """
        members = [m for m in (self.members if members is None else members) if m.running]
        by_id = {m.id: m for m in self.members}

        async def agreed() -> Optional[Member]:
            statuses = await self.statuses(members)
            answers = [s for s in statuses.values() if s is not None]
            if len(answers) != len(statuses):
                return None
            leaders = {s["leader"] for s in answers}
            if len(leaders) != 1:
                return None
            leader = leaders.pop()
            if not leader or leader in exclude or leader not in by_id:
                return None
            if (statuses.get(leader) or {}).get("role") != "leader":
                return None
            return by_id[leader]

        return await self.wait_for(agreed, timeout, "an agreed leader")

    async def caught_up(self, member: Member, index: int, timeout: float = 20.0) -> None:
        """Wait until ``member`` has applied ``index``."""

        async def applied() -> bool:
            s = await self.status(member)
            return s is not None and s["applied_index"] >= index

        await self.wait_for(applied, timeout, f"{member.name} applied index {index}")


class SteadyWriter:
    """
    Puts numbered keys through a cluster's running members in turn, one at a
    time, until stopped, and records every acknowledgement: a steady load
    whose gaps show how long a fault or a membership change kept writes out.

    :param cluster: the :class:`LocalCluster`.
    :param targets: the members to write through (default: all the
        cluster's); assign :attr:`targets` or :attr:`skip` anew at any time.
    :param float timeout: seconds each put may take.

    :ivar acknowledged: ``{key: value}`` of every acknowledged put.
    :ivar times: ``time.monotonic()`` of each acknowledgement, in order.
    :ivar failures: puts that failed or timed out (their outcome is unknown).
    :ivar skip: ids of members not to write through.
    """

    def __init__(self, cluster: LocalCluster, targets: Optional[Iterable[Member]] = None,
                 timeout: float = 10.0) -> None:
        self.cluster = cluster
        self.targets = list(cluster.members if targets is None else targets)
        self.skip: Set[str] = set()
        self.timeout = timeout
        self.acknowledged: Dict[str, bytes] = {}
        self.times: List[float] = []
        self.failures = 0
        self._stopped = False
        self._done: Optional[defer.Deferred[None]] = None

    def start(self) -> None:
        """Begin writing."""
        self._done = defer.ensureDeferred(self._run())

    async def stop(self) -> None:
        """Stop writing; fires once the put in flight has finished."""
        self._stopped = True
        assert self._done is not None, "stop() before start()"
        await self._done

    async def _run(self) -> None:
        i = 0
        while not self._stopped:
            live = [m for m in self.targets if m.running and m.id not in self.skip]
            if not live:
                await self.cluster.sleep(0.05)
                continue
            member = live[i % len(live)]
            key, value = f"steady-{i}", f"value {i}"
            i += 1
            try:
                await self.cluster.client(member, timeout=self.timeout).put(key, value)
            except ClientError:
                self.failures += 1
                await self.cluster.sleep(0.01)
            else:
                self.times.append(time.monotonic())
                self.acknowledged[key] = value.encode()

    async def at_least(self, more: int, timeout: float = 30.0, what: str = "writes") -> None:
        """Wait until ``more`` puts beyond those acknowledged so far are acknowledged."""
        target = len(self.acknowledged) + more

        async def enough() -> bool:
            return len(self.acknowledged) >= target

        await self.cluster.wait_for(enough, timeout, f"{more} more {what}")

    def gaps(self) -> List[float]:
        """:returns: the seconds between successive acknowledgements."""
        return [b - a for a, b in zip(self.times, self.times[1:])]

    def longest_gap(self, start: float, end: float) -> float:
        """:returns: the longest time without an acknowledgement between monotonic times ``start`` and ``end``."""
        inside = [t for t in self.times if start <= t <= end]
        before = [t for t in self.times if t < start][-1:]
        after = [t for t in self.times if t > end][:1]
        points = before + inside + after
        return max((b - a for a, b in zip(points, points[1:])), default=float("nan"))

    def rate(self, start: float, end: float) -> float:
        """:returns: acknowledgements per second between monotonic times ``start`` and ``end``."""
        return sum(1 for t in self.times if start <= t <= end) / max(end - start, 1e-9)
