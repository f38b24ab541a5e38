"""
txraft beside PySyncObj, loaded the same way, in one run.

Each system runs as a cluster of three member processes on loopback.  The
load comes from inside the leader's own process: closed-loop callers, each
appending a 100-byte value to one of 10,000 keys and appending again as soon
as the previous append is applied on the leader.  txraft runs with its disk
log (``fsync always``) and mutual TLS between members; PySyncObj keeps its
log in memory, without fsync or encryption.

For each number of callers in flight it prints the successful appends per
second, latency percentiles, refusals (txraft's ``Busy``, a retryable
backpressure answer: the caller backs off ``retry_after`` seconds, doubled
for each refusal in a row, with jitter), other failures (``Timeout`` and the like), and the elections that
happened during the window.  Then the latency of a single writer on the
leader and through a follower, and each member's resident memory.  The last
line is JSON.

Run (needs the ``bench`` extra: ``pip install -e '.[bench]'``)::

    python bench/compare.py                      # 16 .. 16384 callers, 6 s each
    python bench/compare.py --sweep 256,4096 --seconds 3 --only txraft

With ``TXRAFT_BENCH_PROFILE=/tmp/prof`` each txraft load step is profiled
(cProfile) into ``/tmp/prof-<member>-<callers>.prof``.

The member processes are this script with ``--child``; they take one JSON
command per line on standard input and answer one JSON line on standard output.
"""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KEYS = 10000


def rss_mb(pid="self"):
    """:returns: the resident memory of process ``pid`` in MB (from /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: RaftConfig settings the command line may override (option --NAME-WITH-DASHES).
CONFIG_OPTIONS = ("max_uncommitted_entries", "trailing_entries")


def config_overrides(args):
    """:returns: ``{setting: value}`` of the RaftConfig settings given on the command line."""
    return {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}


def percentiles(latencies):
    if not latencies:
        return {"p50_ms": None, "p99_ms": None}
    latencies = sorted(latencies)
    return {"p50_ms": round(statistics.median(latencies) * 1e3, 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 3)}


class _NeverRaised(Exception):
    """Stands for an exception class the txraft under test does not have."""


class _NoTurnMonitor:
    longest = 0.0

    def __init__(self, clock, histogram):
        pass

    def start(self):
        pass

    def stop(self):
        pass


# -- txraft member process ---------------------------------------------------------------------


def txraft_child(args):
    from twisted.internet import defer, reactor, stdio, task
    from twisted.protocols.basic import LineReceiver

    from txraft import RaftConfig, errors
    from txraft.kv import KeyValueStore, encode_put
    from txraft.core.observers import RaftObserver
    from prometheus_client import CollectorRegistry, Histogram

    from txraft.member import Raft

    try:
        from txraft.metrics import TurnMonitor
    except ImportError:  # a txraft from before the monitor (to measure it too)
        TurnMonitor = _NoTurnMonitor
    Busy = getattr(errors, "Busy", _NeverRaised)

    class LeaderWatcher(RaftObserver):
        def __init__(self, changes):
            self.changes = changes

        def leader_changed(self, leader, term):
            self.changes.append((leader, term))

    ids = args.ids.split(",")
    names = [f"member{i + 1}" for i in range(len(ids))]
    me = ids[args.index]
    certs = os.path.join(args.dir, "certs")
    config = RaftConfig(
        listen=me, log_dir=os.path.join(args.dir, names[args.index]), fsync="always",
        heartbeat=args.heartbeat, election_timeout=args.election_timeout,
        cert=os.path.join(certs, names[args.index] + ".pem"), key=os.path.join(certs, names[args.index] + ".key"),
        ca=os.path.join(certs, "ca.pem"), acl=tuple(names), peer_names=dict(zip(ids, names)),
        request_timeout=10.0,
        **config_overrides(args))
    store = KeyValueStore()
    raft = Raft(config, store, reactor=reactor)
    turns = TurnMonitor(reactor, Histogram("turns", "reactor turns", registry=CollectorRegistry()))
    for other in ids:
        raft.add_member(other)
    value = b"v" * args.value_bytes
    commands = [encode_put(f"key{k}", value) for k in range(KEYS)]

    async def lead():
        deadline = time.monotonic() + 30
        while True:
            status = raft.status()
            if status.role == "leader" and status.commit_index >= status.last_index:
                return {"leader": raft.id, "term": status.term}
            if status.leader and status.role != "leader" and not lead.asked:
                lead.asked = True
                raft.start_election()
            if time.monotonic() > deadline:
                raise RuntimeError("could not become the leader")
            await task.deferLater(reactor, 0.05, lambda: None)

    lead.asked = False

    async def load(callers, seconds):
        ok = busy = 0
        failures = {}
        latencies = []
        start_term = raft.status().term
        leader_changes = []
        watcher = LeaderWatcher(leader_changes)
        raft.core.add_observer(watcher)
        rng = random.Random(callers)
        end = time.perf_counter() + seconds

        async def caller():
            nonlocal ok, busy
            refusals = 0
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    await raft.append(commands[rng.randrange(KEYS)])
                except Busy as refusal:
                    # Back off as a client should: the hint, doubled per
                    # refusal in a row, with jitter.
                    busy += 1
                    delay = refusal.retry_after * rng.uniform(0.5, 1.5) * 2 ** min(refusals, 5)
                    refusals += 1
                    await task.deferLater(reactor, delay, lambda: None)
                    continue
                except errors.RaftError as failure:
                    name = type(failure).__name__
                    failures[name] = failures.get(name, 0) + 1
                    continue
                refusals = 0
                if time.perf_counter() <= end:
                    ok += 1
                    latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        turns.longest = 0.0
        profile = None
        if os.environ.get("TXRAFT_BENCH_PROFILE"):
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        # Start the callers 256 per reactor turn: creating thousands of
        # coroutines in one turn would itself block the leader's reactor.
        running = []
        while len(running) < callers:
            running.extend(defer.ensureDeferred(caller()) for _ in range(min(256, callers - len(running))))
            await task.deferLater(reactor, 0, lambda: None)
        await defer.gatherResults(running)
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{os.environ['TXRAFT_BENCH_PROFILE']}-{args.index}-{callers}.prof")
        raft.core.remove_observer(watcher)
        result = {"callers": callers, "seconds": round(time.perf_counter() - began, 2), "ok": ok,
                  "appends_per_s": round(ok / seconds, 1), "busy": busy, "failures": failures,
                  "elections": raft.status().term - start_term, "leader_changes": len(leader_changes),
                  "longest_turn_ms": round(turns.longest * 1e3, 1), "rss_mb": round(rss_mb(), 1)}
        result.update(percentiles(latencies))
        return result

    async def handle(command):
        kind = command["cmd"]
        if kind == "lead":
            return await lead()
        if kind == "load":
            return await load(command["callers"], command["seconds"])
        if kind == "status":
            status = raft.status()
            reply = {"id": raft.id, "role": status.role, "term": status.term, "rss_mb": round(rss_mb(), 1),
                     "longest_turn_ms": round(turns.longest * 1e3, 1)}
            turns.longest = 0.0
            return reply
        if kind == "quit":
            turns.stop()
            await raft.stop()
            reactor.callLater(0, reactor.stop)
            return {"bye": True}
        raise ValueError(f"unknown command {kind!r}")

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            d = defer.ensureDeferred(handle(json.loads(line)))
            d.addErrback(lambda f: {"error": f.getErrorMessage()})
            d.addCallback(lambda reply: self.sendLine(json.dumps(reply).encode()))

    async def start():
        await raft.start()
        if args.gc_tuned:
            # As twistd raft does: full collections of a large heap paused
            # the reactor for hundreds of milliseconds.
            from txraft.service import tune_garbage_collector

            tune_garbage_collector()
        turns.start()
        if os.environ.get("TXRAFT_BENCH_LOG"):
            def trace():
                st = raft.status()
                sys.stderr.write(f"TRACE {time.time():.3f} {raft.id} {st.role} t{st.term} c{st.commit_index} "
                                 f"a{st.applied_index} l{st.last_index} u{raft.core.uncommitted()} "
                                 f"p{len(raft._proposals._pending)} turn{turns.longest * 1e3:.0f}\n")
            task.LoopingCall(trace).start(0.1)
            import gc

            gc_started = {}

            def gc_watch(phase, info):
                if phase == "start":
                    gc_started["t"] = time.perf_counter()
                else:
                    took = time.perf_counter() - gc_started.get("t", time.perf_counter())
                    if took > 0.02:
                        sys.stderr.write(f"GC {time.time():.3f} {raft.id} gen{info['generation']} "
                                         f"{took * 1e3:.0f} ms collected {info['collected']}\n")

            gc.callbacks.append(gc_watch)
        stdio.StandardIO(Commands())
        sys.stdout.write(json.dumps({"ready": raft.id}) + "\n")
        sys.stdout.flush()

    if os.environ.get("TXRAFT_BENCH_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()).addErrback(_die))
    reactor.run()


def _die(failure):
    sys.stderr.write(failure.getTraceback())
    os._exit(1)


# -- PySyncObj member process --------------------------------------------------------------------


def pysyncobj_child(args):
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KeyValue(SyncObj):
        def __init__(self, me, partners):
            super().__init__(me, partners, SyncObjConf(dynamicMembershipChange=False))
            self.data = {}

        @replicated
        def put(self, key, value):
            self.data[key] = value
            return len(self.data)

    ids = args.ids.split(",")
    me = ids[args.index]
    kv = KeyValue(me, [i for i in ids if i != me])
    value = "v" * args.value_bytes
    sys.stdout.write(json.dumps({"ready": me}) + "\n")
    sys.stdout.flush()

    def load(callers, seconds):
        lock = threading.Lock()
        counts = {"ok": 0, "failures": {}}
        latencies = []
        start_term = kv.raftCurrentTerm
        rng = random.Random(callers)
        end = time.perf_counter() + seconds
        done = threading.Event()
        live = [callers]

        def issue():
            started = time.perf_counter()
            kv.put(f"key{rng.randrange(KEYS)}", value, callback=lambda result, error: finished(started, error))

        def finished(started, error):
            now = time.perf_counter()
            with lock:
                if error:
                    name = str(error)
                    counts["failures"][name] = counts["failures"].get(name, 0) + 1
                elif now <= end:
                    counts["ok"] += 1
                    latencies.append(now - started)
                if now < end:
                    again = True
                else:
                    again = False
                    live[0] -= 1
                    if live[0] == 0:
                        done.set()
            if again:
                issue()

        for _ in range(callers):
            issue()
        done.wait(seconds + 15)
        result = {"callers": callers, "ok": counts["ok"], "appends_per_s": round(counts["ok"] / seconds, 1),
                  "busy": 0, "failures": counts["failures"], "elections": kv.raftCurrentTerm - start_term,
                  "unfinished": live[0], "rss_mb": round(rss_mb(), 1)}
        result.update(percentiles(latencies))
        return result

    for line in sys.stdin:
        command = json.loads(line)
        kind = command["cmd"]
        if kind == "status":
            status = kv.getStatus()
            reply = {"id": me, "role": "leader" if status.get("state") == 2 else "follower",
                     "leader": str(status.get("leader")), "term": kv.raftCurrentTerm, "rss_mb": round(rss_mb(), 1)}
        elif kind == "lead":
            deadline = time.monotonic() + 30
            while kv._getLeader() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            reply = {"leader": str(kv._getLeader()), "term": kv.raftCurrentTerm}
        elif kind == "load":
            reply = load(command["callers"], command["seconds"])
        elif kind == "quit":
            kv.destroy()
            reply = {"bye": True}
        else:
            reply = {"error": f"unknown command {kind!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if kind == "quit":
            return


# -- the parent ------------------------------------------------------------------------------------


class Child:
    def __init__(self, argv, env, log):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                        text=True, bufsize=1)

    def ask(self, command, timeout=None):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"member process exited with {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self):
        try:
            if self.process.poll() is None:
                self.ask({"cmd": "quit"})
                self.process.wait(15)
        except Exception:
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def free_port(host):
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_cluster(system, args, directory, log):
    """
    Start a 3-member cluster of ``system`` and make (or find) its leader.

    :returns: ``(children, leader)``, the :class:`Child` processes.
    """
    hosts = [f"127.0.0.{41 + i}" for i in range(3)] if system == "txraft" else [f"127.0.0.{51 + i}" for i in range(3)]
    ids = [f"{h}:{free_port(h)}" for h in hosts]
    work = os.path.join(directory, system)
    os.makedirs(work)
    if system == "txraft":
        from txraft.certs import write_cluster_certs

        write_cluster_certs(os.path.join(work, "certs"), [f"member{i + 1}" for i in range(3)])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    children = []
    try:
        for index in range(3):
            argv = [sys.executable, os.path.abspath(__file__), "--child", system, "--index", str(index),
                    "--ids", ",".join(ids), "--dir", work, "--value-bytes", str(args.value_bytes),
                    "--heartbeat", str(args.heartbeat), "--election-timeout", str(args.election_timeout)]
            if getattr(args, "gc_tuned", False):
                argv.append("--gc-tuned")
            for name, value in config_overrides(args).items():
                argv += ["--" + name.replace("_", "-"), str(value)]
            children.append(Child(argv, env, log))
        for child in children:
            child.read()  # ready
        if system == "txraft":
            leader = children[0]
            leader.ask({"cmd": "lead"})
        else:
            leader_id = children[0].ask({"cmd": "lead"})["leader"]
            leader = next(c for c, i in zip(children, ids) if i == leader_id)
    except BaseException:
        for child in children:
            child.close()
        raise
    return children, leader


def run_system(system, args, directory):
    log = open(os.path.join(args.workdir or directory, f"{system}-members.log"), "w")
    children = []
    try:
        children, leader = start_cluster(system, args, directory, log)
        follower = next(c for c in children if c is not leader)
        rows = []
        for callers in args.sweep:
            for child in children:
                child.ask({"cmd": "status"})  # resets the longest turn
            row = leader.ask({"cmd": "load", "callers": callers, "seconds": args.seconds})
            row["load"] = os.getloadavg()[0]
            row["longest_turn_ms_members"] = [c.ask({"cmd": "status"}).get("longest_turn_ms") for c in children]
            rows.append(row)
            print(f"  {system:9} {callers:6} callers: {row['appends_per_s']:9,.0f}/s  p50 {row['p50_ms']} ms  "
                  f"p99 {row['p99_ms']} ms  busy {row['busy']}  failures {row['failures'] or 0}  "
                  f"elections {row['elections']}  longest turns {row['longest_turn_ms_members']} ms  "
                  f"leader RSS {row['rss_mb']} MB  (load {row['load']:.2f})",
                  flush=True)
        single = leader.ask({"cmd": "load", "callers": 1, "seconds": args.single_seconds})
        forwarded = follower.ask({"cmd": "load", "callers": 1, "seconds": args.single_seconds})
        print(f"  {system:9} single writer on the leader: p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms; "
              f"through a follower: p50 {forwarded['p50_ms']} ms, p99 {forwarded['p99_ms']} ms", flush=True)
        memory = [c.ask({"cmd": "status"})["rss_mb"] for c in children]
        print(f"  {system:9} resident memory per member: {memory} MB", flush=True)
        best = max(r["appends_per_s"] for r in rows)
        return {"sweep": rows, "best_appends_per_s": best, "single_writer_leader": single,
                "single_writer_follower": forwarded, "rss_mb": memory}
    finally:
        for child in children:
            child.close()
        log.close()


def main():
    from txraft.tap import DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="16,64,256,1024,4096,16384",
                        help="callers in flight, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of load per step")
    parser.add_argument("--single-seconds", type=float, default=3.0, help="seconds of single-writer load")
    parser.add_argument("--only", choices=("txraft", "pysyncobj"), help="run one system only")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--heartbeat", type=float, default=DEFAULTS["heartbeat"],
                        help="txraft heartbeat (twistd raft default)")
    parser.add_argument("--election-timeout", type=float, default=DEFAULTS["election-timeout"],
                        help="txraft election timeout (twistd raft default)")
    parser.add_argument("--gc-tuned", action="store_true",
                        help="txraft members freeze start-up objects and collect garbage less often")
    parser.add_argument("--max-uncommitted-entries", type=int,
                        help="txraft RaftConfig.max_uncommitted_entries (default: txraft's own default)")
    parser.add_argument("--trailing-entries", type=int,
                        help="txraft RaftConfig.trailing_entries (default: txraft's own default)")
    parser.add_argument("--workdir", help="where the members' directories go (default: a temporary one)")
    parser.add_argument("--child", choices=("txraft", "pysyncobj"), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "txraft":
        return txraft_child(args)
    if args.child == "pysyncobj":
        return pysyncobj_child(args)
    args.sweep = [int(c) for c in args.sweep.split(",")]
    systems = [args.only] if args.only else ["txraft", "pysyncobj"]
    print(f"3 members each, 100-byte values over {KEYS} keys, closed-loop callers in the leader's process, "
          f"{args.seconds:g} s per step; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="txraft-compare-", dir=args.workdir) as directory:
        for system in systems:
            label = ("fsync always, mutual TLS" if system == "txraft" else "in memory, no fsync, no TLS")
            print(f"{system} ({label}):", flush=True)
            results[system] = run_system(system, args, directory)
    summary = {"bench": "compare", "results": results, "cpus": os.cpu_count(), "load_end": os.getloadavg()[0]}
    if "txraft" in results and "pysyncobj" in results:
        summary["ratio_best"] = round(results["txraft"]["best_appends_per_s"]
                                      / max(results["pysyncobj"]["best_appends_per_s"], 1), 2)
        print(f"txraft best / PySyncObj best: {summary['ratio_best']}x", flush=True)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
