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
from txraft.testing.processes import LocalCluster

#: Loopback addresses of the browser test's member processes.
HOSTS = ["127.0.0.61", "127.0.0.62", "127.0.0.63"]


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
    after = await state(cluster, leader)
    assert after["commit_index"] >= before["commit_index"] + 5
    assert after["appends"] == before["appends"] + 5
    await pause(0.1)
    follower = cluster.follower()
    seen = await state(cluster, follower)
    assert seen["leader"] == leader and seen["role"] == "follower"
    assert {m["id"]: m["role"] for m in seen["members"]}[leader] == "leader"
    assert any(e["kind"] == "leader" and e["leader"] == leader for e in seen["events"])


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
    """Three ``twistd raft`` processes; the page of the leader in headless Chromium."""
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed: apt-get install -y chromium (.ci/run does, as root)")
    processes = LocalCluster(str(tmp_path), size=3, tls=False, hosts=HOSTS)
    browser = None
    try:
        processes.start_all()
        leader = await processes.agreed_leader()
        ids = sorted(m.id for m in processes.members)
        browser = await Browser.start(reactor, str(tmp_path / "profile"), width=1000, height=1100)
        await browser.goto(f"http://{leader.host}:{leader.http_port}/")
        await browser.wait_for("document.body !== null && Number(document.body.dataset.refreshed || 0) >= 1",
                               what="the first refresh")
        rows = await browser.evaluate(
            "[...document.querySelectorAll('#members tbody tr')].map(r => [r.dataset.member,"
            " r.querySelector('.role').textContent])")
        assert sorted(r[0] for r in rows) == ids
        assert dict(rows) == {i: ("leader" if i == leader.id else "follower") for i in ids}
        assert await browser.evaluate("document.querySelector('#members tr.leader').dataset.member") == leader.id
        assert await browser.evaluate("document.getElementById('leader').textContent") == leader.id
        assert await browser.evaluate("document.getElementById('banner').hidden") is True

        commit = int(await browser.evaluate("document.getElementById('commit').textContent"))
        client = processes.client(leader)
        for i in range(10):
            await client.put(f"seen{i}", "v")
        await browser.wait_for(f"Number(document.getElementById('commit').textContent) >= {commit + 10}",
                               what="the commit index to move after 10 writes")

        killed = next(m for m in processes.members if m is not leader)
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
