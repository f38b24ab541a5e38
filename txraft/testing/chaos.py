"""
``python -m txraft.testing.chaos``: a fault-injection run against real
``twistd raft`` members, judged by the linearizability checker.

It starts N members over mutual TLS on distinct loopback addresses, runs
concurrent clients through different members (:mod:`txraft.testing.workload`),
injects faults chosen from a seed (:mod:`txraft.testing.nemesis`: partitions,
``kill -9`` and restart, pauses, some aimed at the leader, and membership
changes that replace a member), then heals, waits
for the cluster to recover, reads every key and checks the history
(:mod:`txraft.testing.linearizability`): linearizable, and no acknowledged
write lost.  It prints one JSON line, writes the history, the result and the
members' logs to ``--out``, and removes every process, rule and certificate
it made on every exit, Ctrl-C included.  Without root or ``iptables`` it
injects the process faults only, and says so.

Exit status: 0 when the history is linearizable and no acknowledged write
was lost, 1 when it is not (or could not be decided), 2 when the run could
not be made.  ``docs/testing.md`` says how to read a failure and reproduce it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import sys
import time
from collections import Counter

from twisted.internet import defer, task
from twisted.logger import Logger

from txraft.testing.linearizability import check
from txraft.testing.nemesis import FAULT_KINDS, Nemesis, Partitioner, partitions_available
from txraft.testing.processes import LocalCluster
from txraft.testing.workload import KeyValueAdapter, Workload, lost_writes

__all__ = ["main", "run", "parse_args"]

log = Logger()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m txraft.testing.chaos",
        description="Inject faults into a real txraft cluster and check its history for linearizability.")
    parser.add_argument("--members", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the faults and the workload (default 1)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run this many seeds, from --seed on, each in its own directory (default 1)")
    parser.add_argument("--out", default=None,
                        help="directory for the history, the result and the members' logs "
                             "(default: a new ./txraft-chaos-SEED-TIME)")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"comma-separated fault kinds (default all: {','.join(FAULT_KINDS)})")
    parser.add_argument("--no-partitions", action="store_true", help="inject process faults only")
    parser.add_argument("--quiet", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"),
                        help="seconds between faults (default 1 4)")
    parser.add_argument("--hold", type=float, nargs=2, default=(1.0, 6.0), metavar=("MIN", "MAX"),
                        help="seconds a fault lasts (default 1 6)")
    parser.add_argument("--workers", type=int, default=10, help="concurrent clients (default 10)")
    parser.add_argument("--ops-per-key", type=int, default=150,
                        help="operations on a key before a fresh key replaces it (default 150)")
    parser.add_argument("--client-timeout", type=float, default=3.0,
                        help="seconds a client waits for an answer before its outcome is unknown (default 3)")
    parser.add_argument("--recovery-timeout", type=float, default=60.0,
                        help="seconds the healed cluster has to serve a write again (default 60)")
    parser.add_argument("--app", default=None, help="module:Class of the replicated application (twistd raft --app)")
    parser.add_argument("--adapter", default=None,
                        help="module:Class of its IChaosAdapter (default: txraft.testing.workload.KeyValueAdapter)")
    parser.add_argument("--member-arg", action="append", default=[],
                        help="extra twistd raft option for every member, e.g. --member-arg=--fsync=never")
    parser.add_argument("--max-configurations", type=int, default=5_000_000,
                        help="checker search budget per key before it is reported undecided")
    args = parser.parse_args(argv)
    if args.members < 1 or args.members > 9:
        parser.error("--members must be between 1 and 9")
    if args.duration <= 0 or args.seeds < 1 or args.workers < 1 or args.ops_per_key < 1:
        parser.error("--duration, --seeds, --workers and --ops-per-key must be positive")
    args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(args.faults) - set(FAULT_KINDS))
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    try:
        args.adapter_class = load_class(args.adapter, "--adapter") if args.adapter else KeyValueAdapter
    except ValueError as e:
        parser.error(str(e))
    return args


def load_class(spec, what):
    """:returns: the class named by ``module:Class``; :raises ValueError: naming what was wrong."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"{what} must be module:Class, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {spec!r} cannot be loaded: {e}") from None


def hosts_for(members, seed):
    """Loopback addresses for one run: distinct per member, and unlikely to be used by anything else."""
    return [f"127.{100 + os.getpid() % 100}.{seed % 250}.{i + 1}" for i in range(members)]


async def _leader(cluster):
    statuses = await cluster.statuses()
    leaders = [s["id"] for s in statuses.values() if s and s.get("role") == "leader"]
    by_id = {m.id: m for m in cluster.members}
    return by_id.get(leaders[0]) if len(leaders) == 1 else None


async def _wait(reactor, seconds):
    await task.deferLater(reactor, seconds, lambda: None)


async def _started(cluster, timeout):
    """Wait for an agreed leader; a member that exits meanwhile fails the run with what it printed."""

    async def leader_or_exit():
        for member in cluster.members:
            if member.process is not None and member.process.poll() is not None:
                raise RuntimeError(f"{member.name} exited at start: {cluster.output(member).strip()[-600:]}")
        return await cluster.agreed_leader(timeout=0.5) if all(m.running for m in cluster.members) else None

    started = time.monotonic()
    while True:
        try:
            return await leader_or_exit()
        except TimeoutError:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no agreed leader within {timeout:g} s of starting the members") from None


async def _recovered(cluster, adapter, rng, timeout):
    """
    :returns: seconds until an update (an operation other than a read, on a
        key of its own, outside the history) succeeds through some member.
    """
    started = time.monotonic()
    attempt = 0
    while time.monotonic() - started < timeout:
        live = [m for m in cluster.members if not getattr(m, "retired", False)]
        member = live[attempt % len(live)]
        attempt += 1
        kind, value = adapter.next_operation(rng, "recovery-probe")
        if kind == "read":
            continue
        try:
            await adapter.invoke(member, kind, "recovery-probe", value)
            return time.monotonic() - started
        except Exception:
            await _wait(cluster.reactor, 0.05)
    raise TimeoutError(f"the cluster served no update within {timeout:g} s of the final heal")


async def run(reactor, args, seed, out):
    """
    One chaos run.

    :returns: the result (a dict, also written to ``out/result.json``).
    """
    # The faults and the clients draw from generators of their own, so the
    # fault schedule (kinds, timing, which member) replays from the seed
    # whatever the clients did meanwhile.
    rng = random.Random(f"{seed}-faults")
    client_rng = random.Random(f"{seed}-clients")
    os.makedirs(out, exist_ok=True)
    available, why = (False, "--no-partitions") if args.no_partitions else partitions_available()
    wants_partitions = any(k.startswith("partition") for k in args.faults)
    cluster_dir = os.path.join(out, "cluster")
    os.makedirs(cluster_dir, exist_ok=True)
    extra = list(args.member_arg) + (["--app", args.app] if args.app else [])
    cluster = LocalCluster(cluster_dir, size=args.members, hosts=hosts_for(args.members, seed),
                           extra_args=extra, reactor=reactor)
    adapter = args.adapter_class(cluster, timeout=args.client_timeout)
    partitioner = Partitioner([m.host for m in cluster.members]) if available and wants_partitions else None
    nemesis = None

    def cleanup():
        # Synchronous, so it also runs from a reactor shutdown trigger on Ctrl-C.
        try:
            if nemesis is not None:
                nemesis.close()
            elif partitioner is not None:
                partitioner.close()
        finally:
            cluster.kill_all_now()

    trigger = reactor.addSystemEventTrigger("before", "shutdown", cleanup)
    try:
        if partitioner is not None:
            partitioner.open()
        prefix = hosts_for(args.members, seed)[0].rsplit(".", 1)[0]
        nemesis = Nemesis(cluster, rng, args.faults, partitioner, host_for=lambda n: f"{prefix}.{n + 1}",
                          journal=os.path.join(out, "faults.jsonl"))
        cluster.start_all()
        await _started(cluster, timeout=30.0)
        workload = Workload(cluster, adapter, client_rng, reactor, workers=args.workers,
                            ops_per_key=args.ops_per_key)
        started = time.monotonic()
        nemesis.clock = lambda: time.monotonic() - started
        workload.start()
        while time.monotonic() - started < args.duration:
            await _wait(reactor, rng.uniform(*args.quiet))
            if time.monotonic() - started >= args.duration:
                break
            leader = await _leader(cluster) if any(k.endswith("-leader") for k in nemesis.kinds) else None
            await nemesis.start_fault(leader)
            await _wait(reactor, rng.uniform(*args.hold))
            nemesis.heal()
        await workload.stop()
        nemesis.heal()
        healed = time.monotonic()
        recovery = await _recovered(cluster, adapter, client_rng, args.recovery_timeout)
        final = await workload.final_reads([m for m in cluster.members if not getattr(m, "retired", False)])
        await adapter.close()
        await cluster.stop()
        elapsed = healed - started
    finally:
        cleanup()
        reactor.removeSystemEventTrigger(trigger)

    operations = workload.history.operations()
    workload.history.dump(os.path.join(out, "history.jsonl"))
    checked = check(operations, model=adapter.model, max_configurations=args.max_configurations)
    lost = lost_writes(operations, final)
    statuses = Counter(op.status for op in operations)
    result = {
        "seed": seed,
        "members": args.members,
        "seconds": round(elapsed, 1),
        "faults": dict(Counter(f.kind for f in nemesis.faults)),
        "partitions": bool(partitioner is not None) if wants_partitions else "not asked",
        "partitions_unavailable": None if (partitioner is not None or not wants_partitions) else why,
        "iptables_chain": None if partitioner is None else partitioner.chain,
        "operations": len(operations),
        "ok": statuses.get("ok", 0),
        "fail": statuses.get("fail", 0),
        "info": statuses.get("info", 0),
        "availability": round(statuses.get("ok", 0) / max(1, len(operations)), 3),
        "keys": checked.keys,
        "linearizable": checked.ok,
        "violations": len(checked.failures),
        "undecided_keys": len(checked.unknown),
        "lost_acknowledged_writes": len(lost),
        "recovery_seconds": round(recovery, 2),
        "out": out,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({**result, "fault_log": [x.to_json() for x in nemesis.faults],
                   "check": checked.to_json(),
                   "lost": [op.to_json() for op in lost]}, f, indent=2, default=str)
    if checked.failures:
        with open(os.path.join(out, "violations.txt"), "w") as f:
            f.write(checked.explain())
    # Certificates and keys are not worth keeping; the logs and data are.
    shutil.rmtree(os.path.join(cluster_dir, "certs"), ignore_errors=True)
    return result


async def _main(reactor, args):
    worst = 0
    for seed in range(args.seed, args.seed + args.seeds):
        out = args.out
        if out is None:
            out = os.path.abspath(f"txraft-chaos-{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        elif args.seeds > 1:
            out = os.path.join(out, f"seed-{seed}")
        if not args.no_partitions and any(k.startswith("partition") for k in args.faults):
            available, why = partitions_available()
            if not available:
                print(f"txraft chaos: no partitions ({why}); injecting process faults only", file=sys.stderr)
        result = await run(reactor, args, seed, out)
        print(json.dumps(result), flush=True)
        if not result["linearizable"] or result["lost_acknowledged_writes"]:
            worst = 1
    return worst


def main(argv=None):
    # --app and --adapter modules import from the current directory, in this
    # process and in the members (which run in their own directories).
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    args = parse_args(argv)

    async def entry(reactor):
        try:
            code = await _main(reactor, args)
        except (TimeoutError, RuntimeError, OSError) as e:
            print(f"txraft chaos: the run could not be made: {e}", file=sys.stderr)
            code = 2
        return code

    def react_main(reactor):
        return defer.ensureDeferred(entry(reactor)).addCallback(_exit_code)

    task.react(react_main)


def _exit_code(code):
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
