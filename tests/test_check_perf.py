"""
``txraft check perf`` against a real member: the figures, the verdict and
its exit status, the JSON object, and the refusal to load an unnamed cluster.
"""

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet import defer, reactor

from tests.test_cli import member, pki, txraft, txraft_sync  # noqa: F401 (fixtures)
from txraft.perf import KEY_PREFIX, LoadResult, Thresholds, judge


@pytest_twisted.ensureDeferred
async def test_check_perf_reports_figures_and_passes_within_thresholds(member):  # noqa: F811
    async def body():
        out, err, code = await txraft("check", "perf", "--connections", "4", "--duration", "1.5",
                                      "--min-throughput", "1", "--max-p99", "5000", *member.cli_args)
        assert code == 0, err
        assert "100%" in err  # the progress bar, on standard error
        assert out.splitlines()[-1] == "PASS"
        assert "throughput" in out and "writes/s" in out and "p99" in out
        assert "4 connections for 1.5 s" in out
        # the load's keys are gone afterwards
        for number in range(4):
            assert member.app.get(f"{KEY_PREFIX}{number}") is None

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_check_perf_json_and_a_failing_verdict_exits_1(member):  # noqa: F811
    async def body():
        out, err, code = await txraft("check", "perf", "--connections", "2", "--duration", "1", "--json",
                                      "--no-progress", "--min-throughput", "1000000", *member.cli_args)
        assert code == 1, err
        assert err == ""
        report = json.loads(out)
        assert report["verdict"] == "fail"
        assert report["writes"] > 0 and report["failed"] == 0
        assert 0 < report["throughput"] < 1000000
        assert report["throughput"] == report["writes"] / report["elapsed"]
        assert 0 < report["latency"]["p50"] <= report["latency"]["p99"] <= report["latency"]["max"]
        assert report["failures"] == [f"throughput {report['throughput']:.1f} writes/s is below the minimum "
                                      "1e+06 writes/s"]

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_check_perf_counts_errors_when_no_member_answers(pki):  # noqa: F811
    cert, key = pki["admin"]
    out, err, code = await txraft("check", "perf", "--server", "https://127.0.0.41:1", "--cert", cert,
                                  "--key", key, "--ca", pki["ca"][0], "--duration", "0.5", "--connections", "2",
                                  "--no-progress", "--min-throughput", "0")
    assert code == 1, err
    assert "0 ok" in out and "FAIL" in out and "no write succeeded" in out
    assert "refused" in out


def test_check_perf_needs_a_named_server():
    env = {k: v for k, v in os.environ.items() if k != "TXRAFT_SERVER"}
    result = subprocess.run([sys.executable, "-m", "txraft", "check", "perf", "--insecure"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("txraft check: name the cluster to load with --server URL (or TXRAFT_SERVER); "
                                     "check perf writes to it and has no default")


def test_check_perf_bounds_its_numbers():
    for option, value in (("--connections", "0"), ("--duration", "0"), ("--duration", "100000")):
        result = txraft_sync("check", "perf", "--server", "http://127.0.0.41:1", "--insecure", option, value)
        assert result.returncode == 2, (option, value, result.stderr)
        assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_verdict_names_every_threshold_missed():
    result = LoadResult(server="s", connections=1, duration=1.0, latencies=[0.1, 0.9], errors={"HTTP 503": 2},
                        elapsed=1.0)
    assert result.percentile(50) == 0.1 and result.percentile(99) == 0.9
    assert judge(result, Thresholds(min_throughput=1, max_p99=1.0, max_error_rate=0.5)) == []
    assert judge(result, Thresholds(min_throughput=3, max_p99=0.5, max_error_rate=0.1)) == [
        "throughput 2.0 writes/s is below the minimum 3 writes/s",
        "p99 latency 900.0 ms is above the maximum 500 ms",
        "2 writes failed (50.00%), more than the 10.00% allowed",
    ]
