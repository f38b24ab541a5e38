"""
Runtime membership with real ``twistd raft`` processes over TLS: growing a
cluster 3 -> 5 -> 3 while a writer runs, replacing a member killed with
``kill -9`` by one on a fresh directory, and a rolling restart (SIGTERM hands
leadership over first), each without losing an acknowledged write.
"""

import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from txraft.http_client import ClientError
from txraft.testing.processes import LocalCluster, SteadyWriter
from tests.test_processes import bounded

pytestmark = pytest.mark.slow


async def members_document(cluster, member):
    return await cluster.client(member).members()


async def wait_voters(cluster, via, ids, timeout=30):
    """Wait until the configuration's voters are exactly ``ids`` and no change is in flight."""

    async def settled():
        try:
            document = await members_document(cluster, via)
        except ClientError:
            return False
        voters = {m["id"] for m in document["members"] if m["voter"]}
        return voters == set(ids) and not document["change"] and len(document["members"]) == len(ids)

    await cluster.wait_for(settled, timeout, f"voters {sorted(ids)}")


async def change(cluster, members, call):
    """Ask any of ``members`` for a change, retrying while another change (a promotion) is in flight."""
    deadline = time.monotonic() + 30
    while True:
        member = next(m for m in members if m.running)
        try:
            return await call(cluster.client(member, timeout=20))
        except ClientError as e:
            if time.monotonic() > deadline or e.status not in (409, 503):
                raise
            await cluster.sleep(0.1)


async def check_every_write(cluster, members, acknowledged):
    leader = await cluster.agreed_leader(members, timeout=30)
    index = (await cluster.status(leader))["commit_index"]
    for member in members:
        await cluster.caught_up(member, index, timeout=30)
        client = cluster.client(member)
        for key, value in acknowledged.items():
            assert await client.get(key, stale=True) == value, f"{key} missing on {member.name}"


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path):
    local = LocalCluster(str(tmp_path), client_name="admin")
    local.start_all()
    try:
        await local.agreed_leader(timeout=30)
        yield local
    finally:
        try:
            await bounded(30, local.stop())
        except Exception:
            pass
        local.kill_all_now()
        for member in local.members:
            print(f"---- {member.name} output (tail)\n" + "\n".join(local.output(member).splitlines()[-20:]))


async def writing(cluster, members):
    """:returns: a started SteadyWriter through ``members``, once it has 20 acknowledged writes."""
    writer = SteadyWriter(cluster, members)
    writer.start()
    await writer.at_least(20)
    return writer


async def finish_writing(cluster, writer, members):
    """Write 20 more through ``members``, stop, and check every acknowledged write is on each of them."""
    writer.targets = members
    await writer.at_least(20)
    await writer.stop()
    await check_every_write(cluster, members, writer.acknowledged)


@pytest_twisted.ensureDeferred
async def test_grow_3_to_5_and_back_to_3_while_writing(cluster):
    async def body():
        founders = list(cluster.members)
        writer = await writing(cluster, founders)
        added = []
        for _ in range(2):
            new = cluster.new_member(join=founders)
            # The etcd flow: record it (and its certificate name) first, then start it.
            await change(cluster, founders, lambda c, new=new: c.add_member(new.id, new.name))
            cluster.start(new)
            added.append(new)
            await wait_voters(cluster, founders[0], [m.id for m in founders + added], timeout=40)
            await writer.at_least(10)
        writer.targets = founders + added
        for gone in founders[:2]:
            await change(cluster, added, lambda c, gone=gone: c.remove_member(gone.id))
        remaining = [founders[2]] + added
        await wait_voters(cluster, added[0], [m.id for m in remaining])
        await finish_writing(cluster, writer, remaining)
        print(f"{len(writer.acknowledged)} writes acknowledged, {writer.failures} unknown; "
              f"longest gap {max(writer.gaps()):.3f} s")

    await bounded(170, body())


@pytest_twisted.ensureDeferred
async def test_replace_a_member_killed_with_kill_9(cluster):
    async def body():
        founders = list(cluster.members)
        writer = await writing(cluster, founders)
        dead = founders[1]
        cluster.kill(dead)
        await cluster.wait_exit(dead)
        survivors = [m for m in founders if m is not dead]
        # The founders' --acl does not name it: an operator records it (and
        # its certificate name) first, which admits it, then it is started.
        new = cluster.new_member(join=survivors)
        await change(cluster, survivors, lambda c: c.add_member(new.id, new.name))
        cluster.start(new)
        await change(cluster, survivors, lambda c: c.remove_member(dead.id))
        final = survivors + [new]
        await wait_voters(cluster, survivors[0], [m.id for m in final], timeout=40)
        await finish_writing(cluster, writer, final)

    await bounded(150, body())


@pytest_twisted.ensureDeferred
async def test_rolling_restart_with_sigterm_while_writing(cluster):
    async def body():
        members = list(cluster.members)
        writer = await writing(cluster, members)
        for member in members:
            cluster.kill(member, signal.SIGTERM)
            assert await cluster.wait_exit(member, timeout=20) in (0, -signal.SIGTERM)
            cluster.start(member)
            others = [m for m in members if m is not member]
            await cluster.agreed_leader(others + [member], timeout=30)
            await writer.at_least(10)
        await writer.stop()
        await check_every_write(cluster, members, writer.acknowledged)
        # The leader of the moment handed over before it stopped.
        assert any("hands leadership to" in cluster.output(m) for m in members)
        print(f"rolling restart: {len(writer.acknowledged)} writes acknowledged, {writer.failures} unknown; "
              f"longest gap {max(writer.gaps()):.3f} s")

    await bounded(170, body())


@pytest_twisted.ensureDeferred
async def test_join_alone_works_for_an_admitted_name_and_never_for_another(tmp_path):
    """Started with --join alone, a member whose certificate name the members
    admit is added; one whose name they do not admit cannot add itself."""
    # The founders admit member4 (say, planned ahead) but not member5.
    local = LocalCluster(str(tmp_path), client_name="admin",
                         extra_args=["--acl", "member1,member2,member3,member4"])

    async def body():
        local.start_all()
        founders = list(local.members)
        await local.agreed_leader(timeout=30)
        admitted = local.new_member(join=founders)
        local.start(admitted)
        await wait_voters(local, founders[0], [m.id for m in founders + [admitted]], timeout=40)
        outsider = local.new_member(join=founders)
        local.start(outsider)

        async def refused():
            return any("refused peer" in local.output(m) and "member5" in local.output(m) for m in founders)

        await local.wait_for(refused, 30, "a founder refusing member5")
        document = await local.client(founders[0]).members()
        assert outsider.id not in [m["id"] for m in document["members"]]

    try:
        await bounded(120, body())
    finally:
        try:
            await bounded(30, local.stop())
        except Exception:
            pass
        local.kill_all_now()
