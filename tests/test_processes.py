"""
Real processes: ``txraft demo`` and the embedding example run to completion,
and a 3-member cluster of ``twistd raft`` processes over TLS accepts writes
through every member, serves linearizable and stale reads, resolves
compare-and-set conflicts, refuses a client certificate its ``--client-acl``
does not name, and survives ``kill -9`` of its leader without losing an
acknowledged write.

Every wait polls members' ``/v1/status`` (or reads) with a deadline; every
child process is killed in teardown.
"""

import os
import signal
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, utils

from txraft.http_client import ClientError
from txraft.testing.processes import LocalCluster

pytest.importorskip("txraft.http")

pytestmark = pytest.mark.slow


def bounded(seconds, coroutine):
    return defer.ensureDeferred(_settled(coroutine)).addTimeout(seconds, reactor)


async def _settled(coroutine):
    """Run ``coroutine``, then wait (briefly) for its HTTP connections to finish closing."""
    from twisted.internet import tcp

    result = await coroutine
    deadline = time.monotonic() + 5
    while any(isinstance(s, tcp.Client) for s in set(reactor.getReaders()) | set(reactor.getWriters())):
        if time.monotonic() > deadline:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    return result


async def run(*argv, cwd=None):
    out, err, code = await utils.getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ), path=cwd,
                                                          reactor=reactor)
    return out.decode(errors="replace"), err.decode(errors="replace"), code


# -- whole programs ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_txraft_demo_runs_to_completion(tmp_path):
    before = set(os.listdir("/tmp"))
    out, err, code = await bounded(150, run(sys.executable, "-m", "txraft.cli", "demo", "--timeout", "120",
                                            cwd=str(tmp_path)))
    assert code == 0, out + err
    assert "txraft demo: OK" in out
    assert "failover after kill -9" in out
    leftovers = {name for name in set(os.listdir("/tmp")) - before if name.startswith("txraft-demo-")}
    assert not leftovers, f"the demo left {leftovers} behind"


# -- a cluster of twistd raft processes ---------------------------------------------------


@pytest_twisted.async_yield_fixture(scope="module")
async def cluster(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("processes"))
    local = LocalCluster(directory, client_name="admin")
    # An outsider: signed by the cluster CA, but not in --client-acl.
    from txraft.certs import write_cluster_certs

    local.certs.update(write_cluster_certs(os.path.join(directory, "certs"), ["outsider"]))
    local.start_all()
    try:
        local.leader = await local.agreed_leader(timeout=30)
        yield local
    finally:
        try:
            await bounded(20, local.stop())
        except Exception:
            pass
        local.kill_all_now()
        for member in local.members:
            print(f"---- {member.name} output (tail)\n" + "\n".join(local.output(member).splitlines()[-15:]))


async def eventually_equal(fetch, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if value == expected or time.monotonic() > deadline:
            return value


@pytest_twisted.ensureDeferred
async def test_writes_through_every_member_and_linearizable_and_stale_reads(cluster):
    async def body():
        members = cluster.members
        for i, writer in enumerate(members):
            await cluster.client(writer).put(f"via-{writer.name}", f"value {i}")
        for i, writer in enumerate(members):
            for reader in members:
                # Linearizable: every member sees every acknowledged write at once.
                assert await cluster.client(reader).get(f"via-{writer.name}") == b"value %d" % i
        follower = next(m for m in members if m is not cluster.leader)
        await cluster.client(cluster.leader).put("fresh", "new")
        stale = await eventually_equal(lambda: cluster.client(follower).get("fresh", stale=True), b"new")
        assert stale == b"new"
        assert await cluster.client(follower).get("absent") is None
        await cluster.client(members[1]).delete("via-member1")
        assert await cluster.client(members[2]).get("via-member1") is None

    await bounded(30, body())


@pytest_twisted.ensureDeferred
async def test_compare_and_set_conflicts(cluster):
    async def body():
        m1, m2, m3 = cluster.members
        await cluster.client(m1).put("counter", "0")
        replies = await defer.gatherResults([
            defer.ensureDeferred(cluster.client(m).cas("counter", "0", f"set by {m.name}")) for m in (m1, m2, m3)])
        winners = [r for r in replies if r["ok"]]
        losers = [r for r in replies if not r["ok"]]
        assert len(winners) == 1 and len(losers) == 2
        final = await cluster.client(m2).get("counter")
        assert all(r["current"] == final.decode() for r in losers)
        refused = await cluster.client(m3).cas("counter", "0", "late")
        assert refused == {"ok": False, "current": final.decode()} or (
            refused["ok"] is False and refused["current"] == final.decode())
        absent = await cluster.client(m3).cas("new-key", None, "first")
        assert absent["ok"] is True

    await bounded(30, body())


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_not_in_the_client_acl_is_refused(cluster):
    async def body():
        member = cluster.members[0]
        with pytest.raises(ClientError, match="client-acl"):
            await cluster.client(member, name="outsider", timeout=5).status()
        # A member's own certificate is from the same CA but is not a client.
        with pytest.raises(ClientError):
            await cluster.client(member, name="member2", timeout=5).get("via-member2")
        assert (await cluster.client(member).status())["id"] == member.id

    await bounded(30, body())


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_leader_loses_no_acknowledged_write(cluster):
    acknowledged = {}
    outcomes = {"unknown": 0}
    state = {"stop": False}

    async def writer(member):
        i = 0
        while not state["stop"]:
            if not member.running:
                await cluster.sleep(0.05)
                continue
            key, value = f"w-{member.name}-{i}", f"{member.name} {i}"
            i += 1
            try:
                await cluster.client(member, timeout=15).put(key, value)
            except ClientError:
                outcomes["unknown"] += 1  # may or may not be applied: not acknowledged
            else:
                acknowledged[key] = value.encode()

    async def body():
        old = await cluster.agreed_leader(timeout=10)
        writers = [defer.ensureDeferred(writer(m)) for m in cluster.members]
        await cluster.wait_for(_at_least(acknowledged, 30), 20, "30 writes before the kill")
        cluster.kill(old)
        await cluster.wait_exit(old)
        killed_at = time.monotonic()
        survivors = [m for m in cluster.members if m is not old]
        new = await cluster.agreed_leader(survivors, timeout=15, exclude=(old.id,))
        failover = time.monotonic() - killed_at
        count = len(acknowledged)
        await cluster.wait_for(_at_least(acknowledged, count + 30), 20, "30 writes after the failover")

        cluster.start(old)
        status = await cluster.status(new)
        await cluster.caught_up(old, status["commit_index"], timeout=30)
        state["stop"] = True
        await defer.gatherResults(writers)

        assert failover < 5, f"failover took {failover:.2f} s"
        # Every acknowledged write is there, read linearizably through each member.
        for member in cluster.members:
            client = cluster.client(member)
            for key, value in acknowledged.items():
                assert await client.get(key) == value, f"{key} lost (read through {member.name})"
        # The restarted member's own state has every one of them too.
        final = (await cluster.status(new))["commit_index"]
        await cluster.caught_up(old, final, timeout=20)
        client = cluster.client(old)
        for key, value in acknowledged.items():
            assert await client.get(key, stale=True) == value, f"{key} missing on the restarted member"
        print(f"failover {failover:.2f} s; {len(acknowledged)} writes acknowledged, "
              f"{outcomes['unknown']} unknown")

    try:
        await bounded(80, body())
    finally:
        state["stop"] = True


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_a_member_cleanly_and_it_rejoins(cluster):
    async def body():
        member = next(m for m in cluster.members if m.running)
        await cluster.client(member).put("before-sigterm", "kept")
        cluster.kill(member, signal.SIGTERM)
        # twistd shuts down cleanly, then ends itself with the same signal.
        assert await cluster.wait_exit(member, timeout=15) in (0, -signal.SIGTERM)
        assert "Server Shut Down." in cluster.output(member)
        others = [m for m in cluster.members if m is not member]
        leader = await cluster.agreed_leader(others, timeout=15)
        index = (await cluster.client(leader).put("while-stopped", "yes"))["index"]
        cluster.start(member)
        await cluster.caught_up(member, index, timeout=30)
        assert await cluster.client(member).get("before-sigterm", stale=True) == b"kept"
        assert await cluster.client(member).get("while-stopped", stale=True) == b"yes"

    await bounded(60, body())


def _at_least(acknowledged, n):
    async def check():
        return len(acknowledged) >= n

    return check
