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

Run (needs the ``bench`` extra, ``pip install -e '.[bench]'``)::

    python bench/http_load.py                        # 64 and 1024 connections, 6 s each
    python bench/http_load.py --connections 64 --seconds 3 --no-etcd
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
        context = ssl.create_default_context(cafile=self.cluster.certs["ca"][0])
        context.check_hostname = False  # members' certificates name members, not 127.0.0.x
        context.load_cert_chain(cert, key)
        self.ssl = context
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

    def stop(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


async def load(target, session, connections, seconds, value):
    ok = 0
    failures = {}
    latencies = []
    rng = random.Random(connections)
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
    result = {"connections": connections, "ok": ok, "puts_per_s": round(ok / seconds, 1), "failures": failures,
              "load": os.getloadavg()[0]}
    result.update(percentiles(latencies))
    return result


async def measure(target, args):
    import aiohttp

    value = b"v" * 100
    results = {"sweep": []}
    connector = aiohttp.TCPConnector(limit=max(args.connections) + 8, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await target.find_leader(session)
        for connections in args.connections:
            # Open the connections (TLS handshakes) before measuring.
            await load(target, session, connections, args.warmup, value)
            await target.find_leader(session)  # it may have changed meanwhile
            term = await target.term(session)
            row = await load(target, session, connections, args.seconds, value)
            row["elections"] = await target.term(session) - term
            results["sweep"].append(row)
            print(f"  {target.name:7} {connections:5} connections: {row['puts_per_s']:8,.0f} PUT/s  "
                  f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  failures {row['failures'] or 0}  "
                  f"elections {row['elections']}  "
                  f"(load {row['load']:.2f})", flush=True)
        sequential = await load(target, session, 1, args.seconds, value)
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
