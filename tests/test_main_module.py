"""``python -m txraft`` is the ``txraft`` command."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_python_dash_m_txraft_is_the_txraft_command():
    via_module = run("-m", "txraft", "--help")
    via_cli = run("-m", "txraft.cli", "--help")
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout == via_cli.stdout
    assert via_module.stdout.startswith("usage: txraft ")


def test_python_dash_m_txraft_runs_a_command_and_keeps_its_exit_status(tmp_path):
    out = tmp_path / "certs"
    done = run("-m", "txraft", "certs", "--out", str(out), "--names", "member1")
    assert done.returncode == 0, done.stderr
    assert (out / "member1.pem").exists()
    refused = run("-m", "txraft", "certs", "--out", str(out), "--names", "member1,member1")
    assert refused.returncode == 2
    assert refused.stderr.startswith("txraft certs: ")
