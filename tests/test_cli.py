"""
The ``txraft`` command line: ``certs`` writes a CA and certificates and never
overwrites; ``put/get/delete/cas/status`` talk to a member's API with readable
or JSON output and one-line failures with a non-zero status.  The commands
run as real processes against an in-process member.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task, utils

from txraft import certs
from txraft.config import RaftConfig
from txraft.service import RaftService

pytest.importorskip("txraft.http")
from txraft.kv import KeyValueStore  # noqa: E402


def txraft_sync(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "txraft.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


async def txraft(*args):
    """Run the command line without blocking the reactor: ``(stdout, stderr, status)``."""
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, ["-m", "txraft.cli", *args],
                                                          env=dict(os.environ), reactor=reactor)
    return out.decode(), err.decode(), code


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- certs ------------------------------------------------------------------------


def test_certs_writes_a_ca_and_one_pair_per_name(tmp_path):
    out = tmp_path / "certs"
    result = txraft_sync("certs", "--out", str(out), "--names", "member1,member2,member3", "--client", "admin")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(
        ["ca.pem", "ca.key"] + [f"{n}.{e}" for n in ("member1", "member2", "member3", "admin") for e in ("pem", "key")])
    ca = certs.load_certificate(str(out / "ca.pem"))
    member = certs.load_certificate(str(out / "member2.pem"))
    assert member.issuer == ca.subject
    assert "member2" in result.stdout
    assert oct(os.stat(out / "member2.key").st_mode & 0o777) == "0o600"


def test_certs_reuses_the_ca_and_never_overwrites(tmp_path):
    out = tmp_path / "certs"
    assert txraft_sync("certs", "--out", str(out), "--names", "member1").returncode == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    result = txraft_sync("certs", "--out", str(out), "--names", "member1,member2", "--json")
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout)
    assert set(paths) == {"ca", "member1", "member2"}
    for name, data in before.items():
        assert (out / name).read_bytes() == data, f"{name} was overwritten"
    ca = certs.load_certificate(str(out / "ca.pem"))
    assert certs.load_certificate(str(out / "member2.pem")).issuer == ca.subject


def test_certs_refuses_a_bad_name_in_one_line(tmp_path):
    result = txraft_sync("certs", "--out", str(tmp_path / "c"), "--names", "member1,member1")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "duplicate" in result.stderr


# -- the client commands -------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.write_cluster_certs(str(tmp_path_factory.mktemp("cli-pki")), ["member1"], client="admin")


@pytest_twisted.async_yield_fixture
async def member(tmp_path, pki):
    """One TLS member with its HTTPS API, in this process."""
    host = "127.0.0.41"
    cert, key = pki["member1"]
    config = RaftConfig(listen=f"{host}:{free_port(host)}", heartbeat=0.05, log_dir=str(tmp_path / "log"),
                        cert=cert, key=key, ca=pki["ca"][0], acl=("member1",))
    svc = RaftService(config, KeyValueStore(), http=(host, 0), client_acl=["admin"])
    svc.startService()
    await svc.ready
    deadline = reactor.seconds() + 10
    while svc.raft.status().role != "leader":
        assert reactor.seconds() < deadline, "no leader"
        await task.deferLater(reactor, 0.02, lambda: None)
    cert, key = pki["admin"]
    svc.cli_args = ["--server", "https://%s:%d" % svc.http_address, "--cert", cert, "--key", key,
                    "--ca", pki["ca"][0]]
    yield svc
    await svc.stopService()
    await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_put_get_cas_delete_status(member):
    async def body():
        c = member.cli_args
        out, err, code = await txraft("put", "colour", "blue", *c)
        assert (code, err) == (0, "")
        assert out.startswith("stored 'colour' at index ")
        assert await txraft("get", "colour", *c) == ("blue\n", "", 0)
        assert await txraft("get", "colour", "--stale", *c) == ("blue\n", "", 0)

        out, err, code = await txraft("cas", "colour", "red", "--expect", "green", *c)
        assert code == 3 and out == ""
        assert err.strip() == "txraft cas: compare-and-set refused: 'colour' is 'blue'"
        out, err, code = await txraft("cas", "colour", "red", "--expect", "blue", "--json", *c)
        assert code == 0, err
        assert json.loads(out)["ok"] is True
        out, err, code = await txraft("cas", "shape", "round", *c)  # no --expect: must be absent
        assert code == 0 and out.startswith("swapped 'shape'"), err

        out, err, code = await txraft("get", "colour", "--json", *c)
        assert json.loads(out) == {"key": "colour", "value": "red"}
        out, err, code = await txraft("delete", "colour", *c)
        assert code == 0 and out.startswith("deleted 'colour' at index ")
        out, err, code = await txraft("get", "colour", *c)
        assert (out, code) == ("", 3) and err.strip() == "txraft get: 'colour' not found"

        out, err, code = await txraft("status", *c)
        assert code == 0, err
        assert f"member   {member.raft.id}  (leader)" in out
        out, err, code = await txraft("status", "--json", *c)
        status = json.loads(out)
        assert status["id"] == member.raft.id and status["role"] == "leader" and status["leader"] == member.raft.id

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_failures_are_one_line_and_non_zero(member, pki, tmp_path):
    async def body():
        c = member.cli_args
        url = c[1]
        # A certificate the server's --client-acl does not name.
        cert, key = pki["member1"]
        out, err, code = await txraft("status", "--server", url, "--cert", cert, "--key", key, "--ca", pki["ca"][0])
        assert code == 1 and len(err.strip().splitlines()) == 1 and "client-acl" in err
        # Certificates of another cluster's CA, on either side.
        other = certs.write_cluster_certs(str(tmp_path / "other"), ["member1"], client="admin")
        out, err, code = await txraft("status", "--server", url, "--cert", other["admin"][0], "--key",
                                      other["admin"][1], "--ca", pki["ca"][0])
        assert code == 1 and "the server does not trust the client certificate's CA" in err, err
        out, err, code = await txraft("status", "--server", url, *c[2:6], "--ca", other["ca"][0])
        assert code == 1 and "the server's certificate is not signed by the CA given as --ca" in err, err
        assert "client-acl" not in err
        # HTTPS without a client certificate.
        out, err, code = await txraft("status", "--server", url)
        assert code == 2 and err.strip().startswith("txraft status: HTTPS needs a client certificate")
        # Plain HTTP without --insecure.
        out, err, code = await txraft("status", "--server", url.replace("https", "http"))
        assert code == 2 and "--insecure" in err
        # Nobody listening.
        host = "127.0.0.41"
        out, err, code = await txraft("get", "k", *c[2:], "--server", f"https://{host}:{free_port(host)}")
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Connection refused" in err
        # A missing certificate file.
        out, err, code = await txraft("status", "--server", url, "--cert", "/nonexistent.pem", "--key", key,
                                      "--ca", pki["ca"][0])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "/nonexistent.pem" in err

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_member_list_add_promote_remove_and_transfer_leader(member):
    async def body():
        c = member.cli_args
        out, err, code = await txraft("member", "list", *c)
        assert code == 0, err
        assert out.split()[:3] == [member.raft.id, "leader", "-"]
        new = "127.0.0.42:7999"
        out, err, code = await txraft("member", "add", new, "--name", "member9", "--learner", *c)
        assert code == 0, err
        assert f"add {new}: done" in out and f"{new:<22} learner  member9" in out
        out, err, code = await txraft("member", "list", "--json", *c)
        listed = json.loads(out)
        assert listed["leader"] == member.raft.id
        assert {m["id"]: m["voter"] for m in listed["members"]} == {member.raft.id: True, new: False}
        out, err, code = await txraft("member", "add", new, *c)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "already a member" in err
        out, err, code = await txraft("member", "promote", new, *c)  # nothing runs there: never caught up
        assert code == 1 and "not caught up" in err
        out, err, code = await txraft("transfer-leader", *c)
        assert code == 1 and "no other voter" in err
        out, err, code = await txraft("member", "remove", new, *c)
        assert code == 0 and new not in out.split("done", 1)[1], err
        out, err, code = await txraft("member", "remove", new, *c)
        assert code == 1 and "HTTP 404" in err

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


class _Silent(protocol.Protocol):
    """Accepts a connection and never answers."""


class _HangsUp(protocol.Protocol):
    """Closes the connection as soon as the request starts."""

    def dataReceived(self, data):
        self.transport.loseConnection()


@pytest_twisted.async_yield_fixture
async def plain_server():
    """``listen(protocol_class)`` -> ``http://host:port`` of a plain TCP server; closed afterwards."""
    ports, connections = [], []

    class Factory(protocol.Factory):
        def buildProtocol(self, addr):
            p = protocol.Factory.buildProtocol(self, addr)
            connections.append(p)
            return p

    def listen(protocol_class):
        factory = Factory()
        factory.protocol = protocol_class
        port = reactor.listenTCP(0, factory, interface="127.0.0.41")
        ports.append(port)
        return "http://127.0.0.41:%d" % port.getHost().port

    yield listen
    for p in connections:
        if p.transport is not None and p.transport.connected:
            p.transport.abortConnection()
    for port in ports:
        await port.stopListening()
    await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_is_a_timeout_not_an_acl_problem(plain_server):
    """treq's timeout arrives as ResponseNeverReceived wrapping CancelledError: reported as no answer in N s."""
    async def body():
        url = plain_server(_Silent)
        out, err, code = await txraft("put", "a", "b", "--server", url, "--insecure", "--timeout", "0.5")
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert err.strip() == f"txraft put: PUT {url}/v1/kv/a: no answer from {url} within 0.5 s"

        url = plain_server(_HangsUp)
        out, err, code = await txraft("get", "a", "--server", url, "--insecure", "--timeout", "5")
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "the server closed the connection" in err and "client-acl" not in err, err

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_a_member_without_quorum_times_out_with_the_client_timeout(tmp_path):
    """A member whose only peer is down cannot commit: the command line says it got no answer in time."""
    async def body():
        host = "127.0.0.41"
        config = RaftConfig(listen=f"{host}:{free_port(host)}", heartbeat=0.05, log_dir=str(tmp_path / "log"),
                            insecure=True)
        svc = RaftService(config, KeyValueStore(), members=[f"{host}:{free_port(host)}"], http=(host, 0))
        svc.startService()
        try:
            await svc.ready
            url = "http://%s:%d" % svc.http_address
            out, err, code = await txraft("put", "a", "b", "--server", url, "--insecure", "--timeout", "1")
            assert (out, code) == ("", 1)
            assert err.strip() == f"txraft put: PUT {url}/v1/kv/a: no answer from {url} within 1 s"
        finally:
            await svc.stopService()
        await task.deferLater(reactor, 0.05, lambda: None)

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


def test_https_without_the_ca_names_the_ca():
    result = txraft_sync("status", "--server", "https://127.0.0.41:1", "--cert", "a.pem", "--key", "a.key")
    assert result.returncode == 2
    assert result.stderr.strip() == ("txraft status: HTTPS needs the cluster CA certificate: give --ca "
                                     "(or TXRAFT_CA)")


def test_usage_errors_exit_2():
    result = txraft_sync("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_the_command_line_the_demo_and_the_http_client_do_not_import_each_other():
    """The HTTP client and the process cluster live in their own modules, so
    importing one edge never drags in (or cycles through) another."""
    check = (
        "import sys\n"
        "import txraft.http_client, txraft.testing.processes\n"
        "assert not {'txraft.cli', 'txraft.demo'} & set(sys.modules), sorted(sys.modules)\n"
        "import txraft.demo\n"
        "assert 'txraft.cli' not in sys.modules\n"
        "import txraft.cli\n"
        "assert txraft.cli.Client is txraft.http_client.Client\n"
        "assert txraft.demo.LocalCluster is txraft.testing.processes.LocalCluster\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
