"""
HTTP load on a 3-member ``twistd raft`` cluster (HTTPS with client
certificates, ``fsync always``) and, when the Debian ``etcd-server`` package
is installed, on a 3-member etcd cluster's JSON gateway (plain HTTP), with the
same asyncio client (aiohttp) in the same run.

For each number of keep-alive connections: closed-loop ``PUT``s of 100-byte
values over 10,000 keys, sent to the leader, for ``--seconds``; successful
writes per second, latency percentiles and failures by status (txraft
answers 429 when it is busy; the client then waits ``Retry-After``).  The
members' HTTP connection caps are raised above the largest step, since all
the connections come from one address.  Then
sequential ``PUT`` latency.  Prints the txraft/etcd ratio and a final JSON line.

The client runs on the same machine as the members and takes its share of
the CPU: each step prints the client's CPU (share of one core, and per
``PUT``).  ``--client-processes N`` splits each step's connections between
N client processes measured over the same window, for both systems alike.

Run (needs the ``bench`` extra, ``pip install -e '.[bench]'``)::

    python bench/http_load.py                        # 64 and 1024 connections, 6 s each
    python bench/http_load.py --connections 64 --seconds 3 --no-etcd
    python bench/http_load.py --connections 64 --client-processes 2
"""

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from compare import percentiles  # noqa: E402 (bench/ is on sys.path when run as a script)

KEYS = 10000


class Target:
    """A cluster under test: how to name its leader's URL and how to PUT."""

    name = ""
    ssl = False

    def put_request(self, key, value):
        raise NotImplementedError

    def client_view(self):
        """:returns: a picklable :class:`ClientView` of the leader, for client processes."""
        raise NotImplementedError


class ClientView(Target):
    """What a client process needs to PUT to a target's leader (made in that process)."""

    def __init__(self, name, leader_url, put_style, tls_files=None):
        self.name = name
        self.leader_url = leader_url
        self.put_style = put_style
        self.tls_files = tls_files  # (ca, cert, key), or None for plain HTTP

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("ssl", None)  # an SSLContext does not pickle; rebuilt where it is used
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.tls_files is not None:
            ca, cert, key = self.tls_files
            self.ssl = _client_context(ca, cert, key)

    def put_request(self, key, value):
        if self.put_style == "etcd":
            return EtcdTarget.put_request(self, key, value)
        return TxraftTarget.put_request(self, key, value)


def _client_context(ca, cert, key):
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # members' certificates name members, not 127.0.0.x
    context.load_cert_chain(cert, key)
    return context


class TxraftTarget(Target):
    name = "txraft"

    def __init__(self, directory, connections):
        from txraft.testing.processes import LocalCluster

        # All the load comes from one address: raise the HTTP caps (512 in
        # all, 128 per address by default) above the largest step.
        cap = str(max(connections) + 64)
        self.cluster = LocalCluster(directory, size=3, extra_args=[
            "--max-http-connections", cap, "--max-http-connections-per-address", cap])
        cert, key = self.cluster.certs["client"]
        self.tls_files = (self.cluster.certs["ca"][0], cert, key)
        self.ssl = _client_context(*self.tls_files)
        self.leader_url = None

    def start(self):
        self.cluster.start_all()

    async def find_leader(self, session):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for member in self.cluster.members:
                url = f"https://{member.host}:{member.http_port}"
                try:
                    async with session.get(url + "/v1/status", ssl=self.ssl) as response:
                        status = await response.json()
                except Exception:
                    continue
                if status.get("role") == "leader":
                    self.leader_url = url
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("no txraft leader within 60 s")

    def put_request(self, key, value):
        return "PUT", f"{self.leader_url}/v1/kv/{key}", value

    def client_view(self):
        return ClientView(self.name, self.leader_url, "txraft", self.tls_files)

    async def term(self, session):
        """:returns: the highest term any member reports."""
        terms = [0]
        for member in self.cluster.members:
            try:
                async with session.get(f"https://{member.host}:{member.http_port}/v1/status",
                                       ssl=self.ssl) as response:
                    terms.append((await response.json())["term"])
            except Exception:
                pass
        return max(terms)

    def stop(self):
        for member in self.cluster.members:
            self.cluster.kill(member, 15)
        for member in self.cluster.members:
            if member.process is not None:
                try:
                    member.process.wait(15)
                except subprocess.TimeoutExpired:
                    member.process.kill()
        self.cluster.kill_all_now()


class EtcdTarget(Target):
    name = "etcd"

    def __init__(self, directory, etcd):
        from txraft.testing.processes import free_port

        self.etcd = etcd
        self.directory = directory
        hosts = [f"127.0.0.{61 + i}" for i in range(3)]
        self.members = [(f"etcd{i + 1}", h, free_port(h), free_port(h)) for i, h in enumerate(hosts)]
        self.processes = []
        self.leader_url = None

    def start(self):
        initial = ",".join(f"{name}=http://{host}:{peer}" for name, host, peer, _ in self.members)
        for name, host, peer, client in self.members:
            argv = [self.etcd, "--name", name, "--data-dir", os.path.join(self.directory, name),
                    "--listen-peer-urls", f"http://{host}:{peer}",
                    "--initial-advertise-peer-urls", f"http://{host}:{peer}",
                    "--listen-client-urls", f"http://{host}:{client}",
                    "--advertise-client-urls", f"http://{host}:{client}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "bench", "--log-level", "error"]
            log = open(os.path.join(self.directory, name + ".out"), "wb")
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    async def find_leader(self, session):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for _, host, _, client in self.members:
                url = f"http://{host}:{client}"
                try:
                    async with session.post(url + "/v3/maintenance/status", data="{}") as response:
                        status = await response.json()
                except Exception:
                    continue
                header = status.get("header", {})
                if status.get("leader") and status.get("leader") == header.get("member_id"):
                    self.leader_url = url
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("no etcd leader within 60 s")

    async def term(self, session):
        """:returns: the highest raft term any member reports."""
        terms = [0]
        for _, host, _, client in self.members:
            try:
                async with session.post(f"http://{host}:{client}/v3/maintenance/status", data="{}") as response:
                    terms.append(int((await response.json()).get("raftTerm", 0)))
            except Exception:
                pass
        return max(terms)

    def put_request(self, key, value):
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(value).decode()})
        return "POST", f"{self.leader_url}/v3/kv/put", body

    def client_view(self):
        return ClientView(self.name, self.leader_url, "etcd")

    def stop(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


async def load(target, session, connections, seconds, value, seed=0):
    """:returns: the row of one closed-loop step: PUT/s, latency percentiles, failures, client CPU."""
    ok = 0
    failures = {}
    latencies = []
    rng = random.Random(connections * 1000 + seed)
    cpu = _cpu_seconds()
    end = time.perf_counter() + seconds

    async def client():
        nonlocal ok
        while time.perf_counter() < end:
            method, url, body = target.put_request(f"key{rng.randrange(KEYS)}", value)
            started = time.perf_counter()
            try:
                async with session.request(method, url, data=body, ssl=target.ssl) as response:
                    answer = await response.read()
                    code = response.status
                    retry_after = response.headers.get("retry-after")
            except Exception as error:
                name = type(error).__name__
                failures[name] = failures.get(name, 0) + 1
                continue
            if code == 200:
                if time.perf_counter() <= end:
                    ok += 1
                    latencies.append(time.perf_counter() - started)
            else:
                failures[str(code)] = failures.get(str(code), 0) + 1
                if os.environ.get("TXRAFT_BENCH_LOG") and failures[str(code)] == 1:
                    print(f"    first {code}: {answer[:300]!r}", flush=True)
                if code == 429:
                    await asyncio.sleep(float(retry_after or 1) * rng.uniform(0.5, 1.0))

    await asyncio.gather(*(client() for _ in range(connections)))
    return _row(connections, seconds, ok, failures, latencies, _cpu_seconds() - cpu)


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def _row(connections, seconds, ok, failures, latencies, client_cpu, processes=1):
    result = {"connections": connections, "ok": ok, "puts_per_s": round(ok / seconds, 1), "failures": failures,
              "load": os.getloadavg()[0], "client_processes": processes,
              "client_cpu_share": round(client_cpu / seconds, 2),
              "client_cpu_us_per_put": round(client_cpu / max(ok, 1) * 1e6)}
    result.update(percentiles(latencies))
    result["latencies"] = latencies
    return result


def _client_process(view, connections, warmup, seconds, start_at, seed):
    """One client process of a step: its own connections, warmed up, then measured from ``start_at``."""
    import aiohttp

    async def run():
        connector = aiohttp.TCPConnector(limit=connections + 8)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await load(view, session, connections, max(0.5, start_at - time.time()), b"v" * 100, seed)
            return await load(view, session, connections, seconds, b"v" * 100, seed)

    return asyncio.run(run())


def load_in_processes(target, connections, seconds, warmup, processes):
    """
    Load ``target``'s leader from ``processes`` client processes at once,
    ``connections`` split between them: each warms its own connections up for
    ``warmup`` seconds, then all are measured over the same ``seconds``.

    :returns: the step's row, as :func:`load` makes it, for all of them.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    view = target.client_view()
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    start_at = time.time() + 1.0 + warmup  # process start-up, then the warm-up
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_client_process, [view] * processes, shares, [warmup] * processes,
                             [seconds] * processes, [start_at] * processes, range(processes)))
    failures = {}
    for row in rows:
        for name, count in row["failures"].items():
            failures[name] = failures.get(name, 0) + count
    client_cpu = sum(row["client_cpu_share"] for row in rows) * seconds
    return _row(connections, seconds, sum(row["ok"] for row in rows), failures,
                [latency for row in rows for latency in row["latencies"]], client_cpu, processes)


async def measure(target, args):
    import aiohttp

    value = b"v" * 100
    results = {"sweep": []}
    connector = aiohttp.TCPConnector(limit=max(args.connections) + 8, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await target.find_leader(session)
        for connections in args.connections:
            term = await target.term(session)
            if args.client_processes > 1:
                row = await asyncio.get_running_loop().run_in_executor(
                    None, load_in_processes, target, connections, args.seconds, args.warmup, args.client_processes)
            else:
                # Open the connections (TLS handshakes) before measuring.
                await load(target, session, connections, args.warmup, value)
                await target.find_leader(session)  # it may have changed meanwhile
                term = await target.term(session)
                row = await load(target, session, connections, args.seconds, value)
            row["elections"] = await target.term(session) - term
            del row["latencies"]
            results["sweep"].append(row)
            print(f"  {target.name:7} {connections:5} connections: {row['puts_per_s']:8,.0f} PUT/s  "
                  f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  failures {row['failures'] or 0}  "
                  f"elections {row['elections']}  client CPU {row['client_cpu_share']:.0%} of a core "
                  f"in {row['client_processes']} process(es), {row['client_cpu_us_per_put']} us/PUT  "
                  f"(load {row['load']:.2f})", flush=True)
        sequential = await load(target, session, 1, args.seconds, value)
        del sequential["latencies"]
        results["sequential"] = sequential
        print(f"  {target.name:7} sequential PUT: p50 {sequential['p50_ms']} ms, p99 {sequential['p99_ms']} ms",
              flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="64,1024", help="keep-alive connections, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load per step")
    parser.add_argument("--no-etcd", action="store_true", help="leave etcd out even when installed")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="split each step's connections between this many client processes")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    etcd = None if args.no_etcd else shutil.which("etcd")
    print(f"HTTP PUT of 100-byte values over {KEYS} keys to the leader, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    summary = {"bench": "http_load"}
    with tempfile.TemporaryDirectory(prefix="txraft-http-load-") as directory:
        targets = [TxraftTarget(os.path.join(directory, "txraft"), args.connections)]
        if etcd:
            os.makedirs(os.path.join(directory, "etcd"))
            targets.append(EtcdTarget(os.path.join(directory, "etcd"), etcd))
        elif not args.no_etcd:
            print("  (etcd not installed: apt-get install etcd-server to measure it beside txraft)")
        for target in targets:
            print(f"{target.name}:", flush=True)
            target.start()
            try:
                summary[target.name] = asyncio.run(measure(target, args))
            finally:
                target.stop()
    if "etcd" in summary:
        for index, connections in enumerate(args.connections):
            ours = summary["txraft"]["sweep"][index]["puts_per_s"]
            theirs = summary["etcd"]["sweep"][index]["puts_per_s"]
            summary[f"ratio_{connections}"] = round(ours / max(theirs, 1), 2)
            print(f"txraft / etcd at {connections} connections: {summary[f'ratio_{connections}']}x")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
