"""
The chaos runner, end to end: real member processes, real faults, the
checker's verdict.  ``python -m txraft.testing.chaos`` runs as a child process,
as a user runs it, and each test checks that it cleaned up after itself.

With root and ``iptables`` the runs include partitions; without, the runner
says it injects process faults only (and the bounded run still has to pass).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from txraft.testing.nemesis import CHAIN_PREFIX, Partitioner, partitions_available

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def chaos(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "txraft.testing.chaos", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def result_of(run):
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result; stdout: {run.stdout[-2000:]} stderr: {run.stderr[-2000:]}"
    return json.loads(lines[-1])


def chains_left(chain):
    """The rules of a run's own chain still in place (other runs may be going on beside this one)."""
    if chain is None or not partitions_available()[0]:
        return []
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    return [line for line in rules.splitlines() if chain in line.split()]


def members_left(out):
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if out in line and "raft" in line]


def test_a_bounded_run_is_linearizable_and_loses_nothing(tmp_path):
    """The CI run: 3 members, 60 s of faults and load, a fixed seed."""
    out = str(tmp_path / "run")
    run = chaos("--members", "3", "--duration", "60", "--seed", "7", "--out", out)
    result = result_of(run)
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert result["linearizable"] and result["violations"] == 0 and result["undecided_keys"] == 0
    assert result["lost_acknowledged_writes"] == 0
    assert result["operations"] > 300 and result["ok"] > 100
    assert sum(result["faults"].values()) >= 5
    if partitions_available()[0]:
        assert result["partitions"] is True
        assert any(kind.startswith("partition") for kind in result["faults"])
    else:
        assert "process faults only" in run.stderr
    assert os.path.exists(os.path.join(out, "history.jsonl"))
    assert os.path.exists(os.path.join(out, "cluster", "member1.out"))
    assert not os.path.exists(os.path.join(out, "cluster", "certs"))
    assert chains_left(result["iptables_chain"]) == [] and members_left(out) == []


def test_a_planted_stale_read_is_caught(tmp_path):
    """Reads from any member's local state (?stale=true) are not linearizable: the run must say so."""
    out = str(tmp_path / "stale")
    run = chaos("--members", "3", "--duration", "15", "--seed", "3", "--out", out,
                "--adapter", "tests.testing.stale_adapter:StaleReads", "--faults", "partition-leader",
                "--hold", "3", "5")
    result = result_of(run)
    assert run.returncode == 1, (result, run.stderr[-2000:])
    assert not result["linearizable"] and result["violations"] >= 1
    with open(os.path.join(out, "violations.txt")) as f:
        assert "no linearization places" in f.read()
    assert chains_left(result["iptables_chain"]) == [] and members_left(out) == []


def test_members_replaced_under_load_lose_nothing(tmp_path):
    """Membership changes as faults: a member removed and killed, a new one added on an empty directory."""
    out = str(tmp_path / "replace")
    run = chaos("--members", "3", "--duration", "15", "--seed", "5", "--out", out, "--faults", "replace,kill",
                "--quiet", "1", "2", "--hold", "1", "3")
    result = result_of(run)
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert result["faults"].get("replace", 0) >= 1
    assert result["linearizable"] and result["lost_acknowledged_writes"] == 0
    with open(os.path.join(out, "result.json")) as f:
        replaced = [x for x in json.load(f)["fault_log"] if x["kind"] == "replace"]
    assert any(len(x["targets"]) == 2 and x["targets"][1].startswith("member") for x in replaced), replaced
    assert members_left(out) == []


def test_ctrl_c_cleans_up(tmp_path):
    out = str(tmp_path / "interrupted")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    child = subprocess.Popen([sys.executable, "-m", "txraft.testing.chaos", "--duration", "120", "--out", out,
                              "--quiet", "0.2", "0.5"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Interrupt once the run is under way: load running and a second fault begun.
        deadline = time.monotonic() + 90
        journal = os.path.join(out, "faults.jsonl")

        def faults_begun():
            if not os.path.exists(journal):
                return 0
            with open(journal) as f:
                return sum(1 for _ in f)

        while faults_begun() < 2:
            assert time.monotonic() < deadline, "no fault began"
            assert child.poll() is None, child.communicate()
            time.sleep(0.1)  # polling another process's file for a condition, with a deadline
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert chains_left(f"{CHAIN_PREFIX}{child.pid}") == [] and members_left(out) == []


def test_the_chains_of_dead_runs_are_removed():
    if not partitions_available()[0]:
        assert Partitioner.reap() == []  # no iptables: nothing to reap, and no error
        return
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = Partitioner(["127.0.0.98", "127.0.0.99"], chain=f"{CHAIN_PREFIX}{dead}")
    stale.open()
    stale.partition([["127.0.0.98"], ["127.0.0.99"]])
    assert chains_left(stale.chain) != []
    assert stale.chain in Partitioner.reap()
    assert chains_left(stale.chain) == []


@pytest.mark.parametrize("args, message", [
    (["--faults", "meteor"], "unknown fault kinds ['meteor']"),
    (["--members", "0"], "--members must be between 1 and 9"),
    (["--adapter", "nosuchmodule:Thing"], "--adapter 'nosuchmodule:Thing' cannot be loaded"),
])
def test_bad_options_are_refused_with_a_reason(tmp_path, args, message):
    run = chaos("--duration", "1", "--out", str(tmp_path / "x"), *args, timeout=60)
    assert run.returncode == 2
    assert message in run.stderr
