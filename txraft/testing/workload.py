"""
The clients of a chaos run: concurrent workers that invoke operations on a
cluster through an adapter, and record what they saw in a
:class:`~txraft.testing.linearizability.History`.

An adapter is what a user writes to check their own replicated application
(``python -m txraft.testing.chaos --app module:Class --adapter module:Class``).
It knows how to ask one member to run one operation, and it says which
operations to try; the checker's model judges the results.  The built-in
:class:`KeyValueAdapter` drives the key-value store's HTTPS API
(``docs/http-api.md``) as registers: read, write and compare-and-set.

Outcomes follow Jepsen's rules.  An operation that certainly did not happen
(the member refused the connection; the API answered 4xx) is ``fail``; one
that may have happened (a timeout, a 503, a dropped connection) is ``info``,
and the worker then continues as a new process, because the old one may
still have an operation in flight.  Keys rotate: each key takes a bounded
number of operations, then a fresh key replaces it, so the checker's work per
key stays small (as Jepsen's ``independent`` generator does).
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from zope.interface import Attribute, Interface, implementer

from txraft.http_client import ClientError
from txraft.testing.linearizability import History, RegisterModel

__all__ = ["IChaosAdapter", "KeyValueAdapter", "Definite", "Workload"]


class Definite(Exception):
    """Raised by an adapter when an operation certainly did not take effect (recorded as ``fail``)."""


class IChaosAdapter(Interface):
    """How the chaos runner drives one replicated application."""

    model = Attribute(
        "The checker's model of the application "
        "(:class:`~txraft.testing.linearizability.RegisterModel` or one with the same methods).")

    def next_operation(rng, key):
        """
        :param rng: the run's ``random.Random``.
        :param key: the key the operation is for.
        :returns: ``(kind, value)`` of the next operation to invoke.
        """

    def invoke(member, kind, key, value):
        """
        Ask ``member`` (a :class:`~txraft.testing.processes.Member`) to run
        one operation.

        :returns: a Deferred firing with its output (what a read returned,
            whether a compare-and-set swapped); failing with :class:`Definite`
            when it certainly did not happen, with anything else when its
            outcome is unknown.
        """

    def read(member, key):
        """:returns: a Deferred firing with ``key``'s current value, read linearizably (for the final reads)."""

    def close():
        """Close connections; :returns: a Deferred."""


@implementer(IChaosAdapter)
class KeyValueAdapter:
    """
    The built-in key-value store as a set of registers, over its HTTP(S) API.

    :param cluster: the :class:`~txraft.testing.processes.LocalCluster`.
    :param timeout: seconds a client waits for one answer before the
        outcome is unknown.
    :param mix: relative weights of ``read``, ``write`` and ``cas``.
    """

    model = RegisterModel()

    def __init__(self, cluster, timeout: float = 3.0, mix: Sequence[float] = (4, 4, 2)) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.mix = list(mix)
        self._clients: Dict[str, Any] = {}
        self._values = itertools.count(1)
        self._last_seen: Dict[str, Any] = {}

    def _client(self, member):
        client = self._clients.get(member.id)
        if client is None:
            client = self._clients[member.id] = self.cluster.client(member, timeout=self.timeout)
        return client

    def next_operation(self, rng: random.Random, key: str):
        kind = rng.choices(["read", "write", "cas"], weights=self.mix)[0]
        if kind == "read":
            return kind, None
        fresh = str(next(self._values))  # unique values: each read names its write
        if kind == "write":
            return kind, fresh
        # Expect the value last seen, so that many swaps can succeed.
        return kind, (self._last_seen.get(key), fresh)

    def invoke(self, member, kind, key, value):
        return defer.ensureDeferred(self._invoke(member, kind, key, value))

    async def _invoke(self, member, kind, key, value):
        client = self._client(member)
        try:
            if kind == "read":
                found = await client.get(key)
                self._last_seen[key] = found = None if found is None else found.decode("utf-8")
                return found
            if kind == "write":
                await client.put(key, value)
                self._last_seen[key] = value
                return None
            if kind == "cas":
                reply = await client.cas(key, value[0], value[1])
                self._last_seen[key] = value[1] if reply.get("ok") else reply.get("current")
                return bool(reply.get("ok"))
        except ClientError as e:
            if e.status is not None and 400 <= e.status < 500:
                raise Definite(str(e)) from None
            if _refused(e):
                raise Definite(str(e)) from None
            raise
        raise ValueError(f"unknown operation kind {kind!r}")

    def read(self, member, key):
        return self.invoke(member, "read", key, None)

    def close(self):
        return defer.succeed(None)


def _refused(error: ClientError) -> bool:
    cause = error.__cause__ or error.__context__
    return isinstance(cause, ConnectionRefusedError) or "refused" in str(error).lower()


class Workload:
    """
    Concurrent closed-loop workers invoking operations through an adapter.

    :param cluster: the :class:`~txraft.testing.processes.LocalCluster`.
    :param adapter: an :class:`IChaosAdapter`.
    :param rng: the run's ``random.Random`` (operation mix, members, keys).
    :param reactor: the reactor.
    :param workers: concurrent clients.
    :param active_keys: keys in use at once.
    :param ops_per_key: operations a key takes before a fresh one replaces it.
    :param think: seconds a worker waits between operations.

    :ivar history: the :class:`History` recorded.
    """

    def __init__(self, cluster, adapter, rng: random.Random, reactor, workers: int = 10,
                 active_keys: int = 5, ops_per_key: int = 150, think: float = 0.01) -> None:
        self.cluster = cluster
        self.adapter = adapter
        self.rng = rng
        self.reactor = reactor
        self.workers = workers
        self.ops_per_key = ops_per_key
        self.think = think
        started = time.monotonic()
        self.history = History(clock=lambda: time.monotonic() - started,
                               kinds=getattr(adapter.model, "kinds", None))
        self._key_names = (f"r{i}" for i in itertools.count())
        self.active: List[str] = [next(self._key_names) for _ in range(active_keys)]
        self.keys: List[str] = list(self.active)
        self._uses: Dict[str, int] = {}
        self._processes = itertools.count()
        self._running = False
        self._loops: List[defer.Deferred] = []

    def start(self) -> None:
        """Start the workers."""
        self._running = True
        self._loops = [defer.ensureDeferred(self._worker()) for _ in range(self.workers)]

    def stop(self) -> defer.Deferred:
        """:returns: a Deferred firing when every worker has finished its operation in flight."""
        self._running = False
        return defer.gatherResults(self._loops, consumeErrors=True)

    def _key(self) -> str:
        index = self.rng.randrange(len(self.active))
        key = self.active[index]
        self._uses[key] = self._uses.get(key, 0) + 1
        if self._uses[key] >= self.ops_per_key:
            self.active[index] = next(self._key_names)
            self.keys.append(self.active[index])
        return key

    async def _worker(self) -> None:
        process = next(self._processes)
        while self._running:
            member = self.rng.choice([m for m in self.cluster.members if not getattr(m, "retired", False)])
            key = self._key()
            kind, value = self.adapter.next_operation(self.rng, key)
            token = self.history.invoke(process, kind, key, value)
            try:
                output = await self.adapter.invoke(member, kind, key, value)
            except Definite:
                self.history.fail(token)
            except Exception:
                self.history.info(token)
                process = next(self._processes)  # the old one may still be in flight
            else:
                self.history.ok(token, output)
            await task.deferLater(self.reactor, self.think * (0.5 + self.rng.random()), lambda: None)

    async def final_reads(self, members, timeout: float = 60.0) -> Dict[str, Any]:
        """
        Read every key used, once the cluster has healed, and record the reads.

        :returns: key -> value read (keys that could not be read are left out).
        """
        values: Dict[str, Any] = {}
        process = next(self._processes)
        deadline = time.monotonic() + timeout
        for key in self.keys:
            while time.monotonic() < deadline:
                member = self.rng.choice(members)
                token = self.history.invoke(process, "read", key)
                try:
                    value = await self.adapter.read(member, key)
                except Exception:
                    self.history.info(token)
                    process = next(self._processes)
                    await task.deferLater(self.reactor, 0.1, lambda: None)
                    continue
                self.history.ok(token, value)
                values[key] = value
                break
        return values


def lost_writes(operations, final: Dict[str, Any]) -> List[Any]:
    """
    Acknowledged writes that the final reads show were lost.

    For each key, the final value must come from a write that could have
    taken effect after the last acknowledged write of the key: one that was
    not yet complete when that write was invoked.  A final value written
    only by operations that completed before it (or never written at all)
    means the acknowledged write was lost.

    :returns: the lost acknowledged write operations.
    """
    lost = []
    by_key: Dict[Any, list] = {}
    for op in operations:
        if op.kind in ("write", "cas", "delete"):
            by_key.setdefault(op.key, []).append(op)
    for key, value in final.items():
        acked = [op for op in by_key.get(key, ()) if op.status == "ok" and op.kind != "cas" or
                 op.kind == "cas" and op.status == "ok" and op.output]
        if not acked:
            continue
        last = max(acked, key=lambda op: op.complete)
        writers = [op for op in by_key[key] if op.status != "fail" and _written(op) == value]
        if not any(op.complete is None or op.complete >= last.invoke for op in writers):
            lost.append(last)
    return lost


def _written(op) -> Optional[Any]:
    if op.kind == "write":
        return op.value
    if op.kind == "cas":
        return op.value[1]
    return None
