"""
The live cluster page at ``/``: what it serves (``/ui/state``, the static
files, their headers), and what a person sees in a real headless Chromium:
the leader marked, every member with its role, numbers moving after writes,
and a stopped member shown as unreachable.
"""

import json
import os

import pytest
from twisted.internet import reactor

from tests.browser import CHROMIUM, Browser
from tests.test_cli import member, pki  # noqa: F401 (fixtures)
from tests.test_http import IDS, as_json, bounded, cluster, pause  # noqa: F401 (fixture)
from txraft import certs
from txraft.http_client import Client, ClientError
from txraft.testing import SimulatedCluster
from txraft.testing.processes import LocalCluster
from txraft.ui import ClusterEvents, cluster_state

#: Loopback addresses of the browser test's member processes.
HOSTS = ["127.0.0.61", "127.0.0.62", "127.0.0.63"]
LEARNER_HOST = "127.0.0.64"


async def state(cluster, member_id):  # noqa: F811
    response, body = await cluster.request("GET", cluster.url(member_id) + "/ui/state")
    assert response.code == 200
    return as_json(body)


@bounded(30)
async def test_the_page_and_its_files_are_served_with_a_strict_policy(cluster):  # noqa: F811
    leader = cluster.agreed_leader()
    for path, kind in (("/", b"text/html"), ("/ui/page.js", b"text/javascript"), ("/ui/page.css", b"text/css")):
        response, body = await cluster.request("GET", cluster.url(leader) + path)
        assert response.code == 200, path
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(kind)
        assert response.headers.getRawHeaders(b"content-security-policy")[0].startswith(b"default-src 'self'")
        assert b"http://" not in body and b"https://" not in body, f"{path} refers to another site"
    response, body = await cluster.request("GET", cluster.url(leader) + "/ui/nothing")
    assert response.code == 404


@bounded(30)
async def test_the_page_is_read_only(cluster):  # noqa: F811
    # Found by tests/test_fuzz.py: twisted.web answered PUT / with a 501 HTML page.
    leader = cluster.agreed_leader()
    for method, path in (("PUT", "/"), ("DELETE", "/ui/state"), ("POST", "/ui/page.js")):
        response, body = await cluster.request(method, cluster.url(leader) + path)
        assert response.code == 405, (method, path)
        assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
        assert "read-only" in as_json(body)["error"]


@bounded(30)
async def test_the_leaders_state_lists_every_member_with_its_progress(cluster):  # noqa: F811
    leader = cluster.agreed_leader()
    before = await state(cluster, leader)
    assert before["leader"] == leader and before["role"] == "leader" and before["warning"] is None
    assert before["leader_since"] is not None
    assert [m["id"] for m in before["members"]] == sorted(IDS)
    roles = {m["id"]: m["role"] for m in before["members"]}
    assert roles == {i: ("leader" if i == leader else "follower") for i in IDS}
    for i in range(5):
        response, _ = await cluster.request("PUT", cluster.url(leader, f"k{i}"), data=b"v")
        assert response.code == 200
    for i in range(3):
        response, _ = await cluster.request("GET", cluster.url(leader, f"k{i}"))
        assert response.code == 200
    after = await state(cluster, leader)
    assert after["commit_index"] >= before["commit_index"] + 5
    assert after["appends"] == before["appends"] + 5
    assert after["reads"] == before["reads"] + 3
    await pause(0.1)
    follower = cluster.follower()
    seen = await state(cluster, follower)
    assert seen["leader"] == leader and seen["role"] == "follower"
    assert {m["id"]: m["role"] for m in seen["members"]}[leader] == "leader"
    assert any(e["kind"] == "leader" and e["leader"] == leader for e in seen["events"])


def test_a_learner_is_shown_as_a_learner_and_the_leader_shows_its_progress():
    cluster = SimulatedCluster(3, seed=1)
    cluster.start()
    assert cluster.wait_for_leader() is not None
    cluster.run(0.5)  # the leader commits its no-op, so it accepts changes
    leader = cluster.members[cluster.agreed_leader()]
    new = cluster.launch_new_member()
    added = []
    leader.add_member(new, voter=False).addBoth(added.append)
    assert cluster.run_until(lambda: added, 10.0)
    assert not cluster.configuration().is_voter(new), added
    cluster.run(1.0)
    seen = cluster_state(leader, ClusterEvents(leader))
    members = {m["id"]: m for m in seen["members"]}
    assert {i: m["role"] for i, m in members.items()} == {
        i: "leader" if i == leader.id else "learner" if i == new else "follower" for i in cluster.ids}
    assert members[new]["match_index"] == leader.status().last_index and members[new]["lag"] == 0
    assert seen["warning"] is None
    learner = cluster.members[new]
    own = cluster_state(learner, ClusterEvents(learner))
    assert own["role"] == "learner" and own["leader"] == leader.id
    assert {m["id"]: m["role"] for m in own["members"]}[new] == "learner"
    # A learner it cannot reach is unreachable, like a follower.
    cluster.crash(new)
    cluster.run(2 * leader.config.election_base + 0.5)
    roles = {m["id"]: m["role"] for m in cluster_state(leader, ClusterEvents(leader))["members"]}
    assert roles[new] == "unreachable"
    cluster.stop()


@bounded(30)
async def test_a_stopped_follower_shows_as_unreachable_and_a_leaderless_member_says_so(cluster):  # noqa: F811
    leader = cluster.agreed_leader()
    stopped = cluster.follower()
    await cluster.rafts[stopped].stop()
    deadline = reactor.seconds() + 10
    while True:
        roles = {m["id"]: m["role"] for m in (await state(cluster, leader))["members"]}
        if roles[stopped] == "unreachable":
            break
        assert reactor.seconds() < deadline, roles
        await pause(0.1)
    # Cut the last follower off too: it loses its leader and says so.
    last = next(i for i in IDS if i not in (leader, stopped))
    cluster.network.isolate(last, IDS)
    deadline = reactor.seconds() + 10
    while True:
        seen = await state(cluster, last)
        if seen["warning"] and seen["warning"].startswith("no leader"):
            break
        assert reactor.seconds() < deadline, seen
        await pause(0.1)


@bounded(30)
async def test_the_page_keeps_the_apis_tls_and_client_acl(member, pki):  # noqa: F811
    """Served by RaftService over HTTPS: a client of the ACL gets the page, another name is turned away."""
    url = "https://%s:%d/" % member.http_address
    code, body = await Client(url, *pki["admin"], pki["ca"][0], timeout=5)._request("GET", url)
    assert code == 200 and b"txraft cluster" in body
    code, body = await Client(url, *pki["admin"], pki["ca"][0], timeout=5)._request("GET", url + "ui/state")
    assert code == 200 and json.loads(body)["role"] == "leader"
    outsider = certs.write_cluster_certs(os.path.dirname(pki["ca"][0]), ["member1"], client="outsider")["outsider"]
    with pytest.raises(ClientError, match="closed the connection"):
        await Client(url, *outsider, pki["ca"][0], timeout=5)._request("GET", url)


@bounded(180)
async def test_a_person_sees_the_cluster_live_in_a_real_browser(tmp_path):
    """
    Three ``twistd raft`` processes and a fourth that joins as a learner
    (``--no-auto-promote``); the page of the leader in headless Chromium.
    """
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed: apt-get install -y chromium (.ci/run does, as root)")
    processes = LocalCluster(str(tmp_path), size=3, tls=False, hosts=HOSTS, extra_args=["--no-auto-promote"])
    browser = None
    try:
        processes.start_all()
        voters = list(processes.members)
        learner = processes.new_member(join=voters, host=LEARNER_HOST)
        processes.start(learner)
        leader = await processes.agreed_leader(voters)
        ids = sorted(m.id for m in processes.members)
        browser = await Browser.start(reactor, str(tmp_path / "profile"), width=1000, height=1200)
        await browser.goto(f"http://{leader.host}:{leader.http_port}/")
        rows = ("[...document.querySelectorAll('#members tbody tr')].map(r => [r.dataset.member,"
                " r.querySelector('.role').textContent])")
        await browser.wait_for(f"Object.fromEntries({rows})[{json.dumps(learner.id)}] === 'learner'",
                               what="the member that joined shown as a learner")
        rows = await browser.evaluate(rows)
        assert sorted(r[0] for r in rows) == ids
        assert dict(rows) == {i: ("leader" if i == leader.id else "learner" if i == learner.id else "follower")
                              for i in ids}
        assert await browser.evaluate("document.querySelector('#members tr.leader').dataset.member") == leader.id
        assert await browser.evaluate("document.getElementById('leader').textContent") == leader.id
        assert await browser.evaluate("document.getElementById('banner').hidden") is True

        commit = int(await browser.evaluate("document.getElementById('commit').textContent"))
        client = processes.client(leader)
        for i in range(10):
            await client.put(f"seen{i}", "v")
        await browser.wait_for(f"Number(document.getElementById('commit').textContent) >= {commit + 10}",
                               what="the commit index to move after 10 writes")
        reads = int(await browser.evaluate("document.getElementById('reads').textContent"))
        for i in range(10):
            assert await client.get(f"seen{i}") == b"v"
        await browser.wait_for(f"Number(document.getElementById('reads').textContent) >= {reads + 10}",
                               what="the reads served to move after 10 reads")
        # The read chart drew a rate above zero from the refreshes around the reads.
        await browser.wait_for("history.reads.some(p => p[1] > 0)", what="a read rate above zero")

        killed = next(m for m in voters if m is not leader)
        processes.kill(killed)
        await processes.wait_exit(killed)
        await browser.wait_for(f"document.querySelector('tr[data-member=\"{killed.id}\"]').dataset.role"
                               " === 'unreachable'", timeout=10, what=f"{killed.id} shown unreachable")
        refreshed = await browser.evaluate("Number(document.body.dataset.refreshed)")
        await browser.wait_for(f"Number(document.body.dataset.refreshed) >= {refreshed + 2}", what="more refreshes")
        shot = tmp_path / "cluster-page.png"
        await browser.screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and os.path.getsize(shot) > 10000
        print(f"screenshot: {shot}")
    finally:
        if browser is not None:
            await browser.close()
        await processes.stop()
        processes.kill_all_now()
