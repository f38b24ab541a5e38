"""
Faults for a chaos run against real member processes: network partitions
made with ``iptables``, ``kill -9`` and restart, ``SIGSTOP``/``SIGCONT``
pauses, and replacing a member through the membership API, chosen from a seed.

Partitions need members on distinct loopback addresses that dial their peers
from their own address (txraft's members do), and root.  The rules live in a
chain of their own, named after the run's process id, reached from ``INPUT``
and matching only packets between two members' addresses, so clients (which
connect from ``127.0.0.1``) still reach every member, and nothing else on the
machine is touched.  :meth:`Partitioner.close` removes the chain; the chaos
runner calls it on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from twisted.logger import Logger

__all__ = ["Partitioner", "partitions_available", "Fault", "Nemesis", "FAULT_KINDS"]

#: Every kind of fault; ``partition`` kinds need :func:`partitions_available`.
FAULT_KINDS = ("partition-halves", "partition-leader", "partition-bridge", "kill", "kill-leader", "replace",
               "pause", "pause-leader")


#: Every run's chain is this prefix and the runner's process id.
CHAIN_PREFIX = "TXRAFT-CHAOS-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partitions_available() -> Tuple[bool, str]:
    """
    :returns: ``(available, reason)``: whether this process can add
        ``iptables`` rules (root and the command present), and why not.
    """
    if shutil.which("iptables") is None:
        return False, "iptables is not installed"
    if os.geteuid() != 0:
        return False, "not running as root"
    probe = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"iptables does not work here: {probe.stderr.strip()[:200]}"
    return True, ""


class Partitioner:
    """
    Cuts and heals the network between loopback addresses with ``iptables``.

    :param hosts: every member's address.
    :param chain: the chain's name (unique per run).
    """

    log = Logger()

    def __init__(self, hosts: Sequence[str], chain: Optional[str] = None) -> None:
        self.hosts = list(hosts)
        self.chain = chain or f"{CHAIN_PREFIX}{os.getpid()}"
        self._made = False
        self.cut: List[Tuple[str, str]] = []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
        return result

    @classmethod
    def reap(cls) -> List[str]:
        """
        Remove the chains of chaos runs whose process is gone (one killed
        with ``SIGKILL`` cannot clean up after itself).

        :returns: the names of the chains removed.
        """
        if not partitions_available()[0]:
            return []
        listing = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
        reaped = []
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[0] != "-N" or not parts[1].startswith(CHAIN_PREFIX):
                continue
            owner = parts[1][len(CHAIN_PREFIX):]
            if owner.isdigit() and not _alive(int(owner)):
                stale = cls([], chain=parts[1])
                stale._made = True
                stale.close()
                reaped.append(parts[1])
        return reaped

    def open(self) -> None:
        """Make the chain and send ``INPUT`` through it (after removing those of dead runs)."""
        for chain in self.reap():
            self.log.warn("removed the iptables chain {chain} of a chaos run that is gone", chain=chain)
        self._run("-N", self.chain)
        self._made = True
        self._run("-I", "INPUT", "-j", self.chain)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """
        Heal, then cut every pair of addresses that are in different groups
        (an address in no group is cut from all: isolated).  A *bridge* is an
        address put in two groups.
        """
        self.heal()
        side = {}
        for number, group in enumerate(groups):
            for host in group:
                side.setdefault(host, set()).add(number)
        for a in self.hosts:
            for b in self.hosts:
                if a != b and not side.get(a, set()) & side.get(b, set()):
                    self._run("-A", self.chain, "-s", a, "-d", b, "-j", "DROP")
                    self.cut.append((a, b))

    def heal(self) -> None:
        """Remove every rule; the members can reach each other again."""
        if self._made:
            self._run("-F", self.chain)
        self.cut = []

    def close(self) -> None:
        """Remove the rules and the chain (safe to call twice, and after a failed :meth:`open`)."""
        if not self._made:
            return
        self._run("-D", "INPUT", "-j", self.chain, check=False)
        self._run("-F", self.chain, check=False)
        self._run("-X", self.chain, check=False)
        self._made = False


@dataclass
class Fault:
    """One fault of a run, as it was applied (for the JSON result and the log)."""

    kind: str
    start: float
    targets: List[str] = field(default_factory=list)
    end: Optional[float] = None

    def to_json(self):
        return {"kind": self.kind, "targets": self.targets, "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3)}


class Nemesis:
    """
    Applies faults to a :class:`~txraft.testing.processes.LocalCluster`, one
    at a time.

    :param cluster: the cluster.
    :param rng: the run's ``random.Random``.
    :param kinds: which of :data:`FAULT_KINDS` to choose from.
    :param partitioner: a :class:`Partitioner` (``None``: no partitions).
    :param clock: seconds since the run started.
    :param host_for: the loopback address of the Nth member (0-based), for
        the new members of ``replace`` faults.
    :param journal: a file to append each fault to as a JSON line when it
        starts (the live fault log of a run), or ``None``.
    """

    log = Logger()

    def __init__(self, cluster, rng: random.Random, kinds: Sequence[str], partitioner=None,
                 clock=time.monotonic, host_for=None, journal: Optional[str] = None) -> None:
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if partitioner is None:
            kinds = [k for k in kinds if not k.startswith("partition")]
        if not kinds:
            raise ValueError("no fault kind left to inject")
        self.cluster = cluster
        self.rng = rng
        self.kinds = list(kinds)
        self.partitioner = partitioner
        self.clock = clock
        #: number -> loopback address of the member with that number (for replacements)
        self.host_for = host_for or (lambda number: f"127.0.0.{21 + number}")
        self.journal = journal
        self.faults: List[Fault] = []
        self.current: Optional[Fault] = None
        self._stopped: List = []
        self._killed: List = []

    def _hosts(self, members) -> List[str]:
        return [m.host for m in members]

    def live(self) -> List:
        """The members of the cluster that were not replaced."""
        return [m for m in self.cluster.members if not getattr(m, "retired", False)]

    async def start_fault(self, leader=None) -> Fault:
        """
        Apply one fault chosen at random.

        :param leader: the current leader's :class:`Member`, if known
            (leader-targeted kinds pick a random member without one).
        """
        kind = self.rng.choice(self.kinds)
        fault = await self._replace(leader) if kind == "replace" else self._network_or_process_fault(kind, leader)
        if self.journal is not None:
            with open(self.journal, "a") as f:
                f.write(json.dumps(fault.to_json()) + "\n")
        return fault

    def _network_or_process_fault(self, kind: str, leader) -> Fault:
        members = self.live()
        target = leader if kind.endswith("-leader") and leader is not None else self.rng.choice(members)
        fault = Fault(kind, self.clock())
        if kind == "partition-halves":
            self.rng.shuffle(members)
            cut = len(members) // 2
            groups = [members[:cut], members[cut:]]
            self.partitioner.partition([self._hosts(g) for g in groups])
            fault.targets = [",".join(m.name for m in g) for g in groups]
        elif kind == "partition-leader":
            rest = [m for m in members if m is not target]
            self.partitioner.partition([[target.host], self._hosts(rest)])
            fault.targets = [target.name]
        elif kind == "partition-bridge":
            self.rng.shuffle(members)
            bridge, rest = members[0], members[1:]
            half = len(rest) // 2
            groups = [[bridge] + rest[:half], [bridge] + rest[half:]]
            self.partitioner.partition([self._hosts(g) for g in groups])
            fault.targets = [",".join(m.name for m in g) for g in groups]
        elif kind.startswith("kill"):
            if target.running:
                self.cluster.kill(target, signal.SIGKILL)
                self._killed.append(target)
            fault.targets = [target.name]
        elif kind.startswith("pause"):
            if target.running:
                self.cluster.kill(target, signal.SIGSTOP)
                self._stopped.append(target)
            fault.targets = [target.name]
        self.current = fault
        self.faults.append(fault)
        self.log.info("nemesis: {kind} {targets}", kind=kind, targets=fault.targets)
        return fault

    async def _replace(self, leader) -> Fault:
        """
        A membership change under load: remove a member through the API, kill
        it, and add a new member on a fresh address and an empty directory in
        its place (added as a learner, promoted once it has caught up).  The
        removed member is retired for the rest of the run.
        """
        fault = Fault("replace", self.clock())
        self.current = fault
        self.faults.append(fault)
        live = self.live()
        if len(live) < 2:
            fault.targets = ["skipped: one member"]
            return fault
        candidates = [m for m in live if m is not leader] or live
        target = self.rng.choice(candidates)
        others = [m for m in live if m is not target]
        asked = self.rng.choice(others)
        fault.targets = [target.name]
        try:
            await self.cluster.client(asked, timeout=10.0).remove_member(target.id)
        except Exception as e:  # a change in flight, no quorum: the fault is that attempt
            fault.targets.append(f"remove refused: {e}")
            return fault
        target.retired = True
        self.cluster.kill(target, signal.SIGKILL)
        host = self.host_for(len(self.cluster.members))
        new = self.cluster.new_member(join=others, host=host)
        if self.partitioner is not None:
            self.partitioner.hosts.append(host)
        fault.targets.append(new.name)
        try:
            await self.cluster.client(asked, timeout=10.0).add_member(new.id, name=new.name)
        except Exception as e:
            fault.targets.append(f"add refused: {e}")
        self.cluster.start(new)
        self.log.info("nemesis: replaced {old} with {new}", old=target.name, new=new.name)
        return fault

    def heal(self) -> None:
        """End the current fault: heal the network, resume paused members, restart killed ones."""
        if self.partitioner is not None:
            self.partitioner.heal()
        for member in self._stopped:
            self.cluster.kill(member, signal.SIGCONT)
        self._stopped = []
        for member in self._killed:
            if member.process is not None:
                member.process.wait(10)
            self.cluster.start(member)
        self._killed = []
        if self.current is not None:
            self.current.end = self.clock()
            self.current = None

    def close(self) -> None:
        """Heal what can be healed without waiting; remove the partition rules."""
        try:
            if self.partitioner is not None:
                self.partitioner.heal()
            for member in self._stopped:
                self.cluster.kill(member, signal.SIGCONT)
            self._stopped = []
        finally:
            if self.partitioner is not None:
                self.partitioner.close()
