"""
The HTTP API (txraft.http) against real listening sites on loopback, in front
of three real Raft members on the real reactor joined by a MemoryNetwork.

Each test is bounded by a Deferred timeout; waits poll the reactor, never sleep.
"""

import functools
import json
from urllib.parse import quote

import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from txraft.config import RaftConfig
from txraft.http import create_api
from txraft.kv import MAX_KEY_BYTES, KeyValueStore
from txraft.member import Raft
from txraft.metrics import CountingTransport, MemberMetrics
from txraft.storage.memory import MemoryStorage
from txraft.transport.memory import MemoryNetwork

IDS = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
MAX_COMMAND = 4096


def bounded(seconds):
    """Run an ``async def`` test as a Deferred that fails after ``seconds``."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return defer.Deferred.fromCoroutine(f(*args, **kwargs)).addTimeout(seconds, reactor)

        return wrapper

    return decorate


async def pause(seconds=0.02):
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pause()


class TrackingSite(Site):
    """A Site that remembers its connections, so a test can close them all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.protocols = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol


class HTTPCluster:
    """Three members, each with its HTTP API on 127.0.0.1 (port 0)."""

    def __init__(self, request_timeout=1.0, **settings):
        self.network = MemoryNetwork(reactor)
        self.request_timeout = request_timeout
        self.settings = settings  # more RaftConfig settings
        self.rafts = {}
        self.stores = {}
        self.metrics = {}
        self.urls = {}
        self.ports = []
        self.sites = []
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.baseline = set(reactor.getDelayedCalls())

    async def start(self):
        transports = {}
        for member_id in IDS:
            config = RaftConfig(listen=member_id, heartbeat=0.05, election_timeout=0.3, rpc_timeout=0.25,
                                request_timeout=self.request_timeout, **self.settings)
            store = KeyValueStore()
            # Counted from the start, as RaftService builds its member.
            transports[member_id] = CountingTransport(self.network.transport(member_id))
            raft = Raft(config, store, reactor=reactor, transport=transports[member_id],
                        storage=MemoryStorage())
            for other in IDS:
                raft.add_member(other)
            self.rafts[member_id], self.stores[member_id] = raft, store
        await defer.gatherResults([raft.start() for raft in self.rafts.values()])
        for member_id, raft in self.rafts.items():
            self.metrics[member_id] = MemberMetrics(raft, transport=transports[member_id])
            resource = create_api(raft, self.stores[member_id], metrics=self.metrics[member_id],
                                  request_timeout=self.request_timeout, max_command_size=MAX_COMMAND)
            self.urls[member_id] = self.serve(resource)
        await self.wait_for_leader()

    def serve(self, resource):
        """Listen on 127.0.0.1:0 with ``resource``; :returns: the base URL."""
        site = TrackingSite(resource)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.sites.append(site)
        self.ports.append(port)
        return "http://127.0.0.1:%d" % port.getHost().port

    def agreed_leader(self):
        statuses = [r.status() for r in self.rafts.values()]
        leaders = {s.id for s in statuses if s.role == "leader"}
        if len(leaders) == 1 and all(s.leader in leaders for s in statuses):
            return leaders.pop()
        return None

    async def wait_for_leader(self):
        await wait_until(lambda: self.agreed_leader() is not None, what="an agreed leader")
        return self.agreed_leader()

    def follower(self):
        leader = self.agreed_leader()
        return next(i for i in IDS if i != leader)

    async def stop(self):
        for port in self.ports:
            await port.stopListening()
        await defer.gatherResults([raft.stop() for raft in self.rafts.values()])
        for site in self.sites:
            for protocol in site.protocols:
                transport = getattr(protocol, "transport", None)
                if transport is not None and not transport.disconnected:
                    transport.abortConnection()
        await self.pool.closeCachedConnections()
        # RPC timeouts and network deliveries of the stopped members run out.
        await wait_until(lambda: not [c for c in reactor.getDelayedCalls()
                                      if c.active() and c not in self.baseline],
                         timeout=5.0, what="the reactor to settle")

    # -- requests ------------------------------------------------------------------

    def url(self, member_id, key=None, query=""):
        base = self.urls[member_id]
        if key is None:
            return base
        return base + "/v1/kv/" + quote(key, safe="/") + query

    async def request(self, method, url, data=None, **kwargs):
        response = await treq.request(method, url, data=data, pool=self.pool, **kwargs)
        body = await treq.content(response)
        return response, body


def as_json(body):
    return json.loads(body.decode("utf-8"))


@pytest_twisted.async_yield_fixture
async def cluster(clean_reactor):
    c = HTTPCluster()
    try:
        await c.start()
    except BaseException:
        await c.stop()
        raise
    yield c
    await c.stop()


# -- writes and reads -----------------------------------------------------------


@bounded(20)
async def test_writes_through_every_member_are_read_back_linearizably_everywhere(cluster):
    indexes = []
    for n, member_id in enumerate(IDS):
        response, body = await cluster.request("PUT", cluster.url(member_id, f"key/{n}"), b"value-%d" % n)
        assert response.code == 200, body
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        indexes.append(as_json(body)["index"])
    assert indexes == sorted(indexes) and len(set(indexes)) == 3
    for member_id in IDS:
        for n in range(3):
            response, body = await cluster.request("GET", cluster.url(member_id, f"key/{n}"))
            assert response.code == 200
            assert body == b"value-%d" % n
            assert response.headers.getRawHeaders("content-type") == ["application/octet-stream"]
            assert int(response.headers.getRawHeaders("x-raft-index")[0]) >= indexes[n]


@bounded(20)
async def test_follower_read_is_linearizable_while_a_stale_read_may_lag(cluster):
    leader = cluster.agreed_leader()
    follower = cluster.follower()
    cluster.network.cut(leader, follower)
    response, body = await cluster.request("PUT", cluster.url(leader, "fresh"), b"new")
    assert response.code == 200, body
    # The follower has not heard of the write: a stale read does not see it.
    response, body = await cluster.request("GET", cluster.url(follower, "fresh", "?stale=true"))
    assert response.code == 404 and as_json(body) == {"error": "key not found"}
    cluster.network.heal()
    response, body = await cluster.request("GET", cluster.url(follower, "fresh"))
    assert (response.code, body) == (200, b"new")
    response, body = await cluster.request("GET", cluster.url(follower, "fresh", "?stale=false"))
    assert (response.code, body) == (200, b"new")


@bounded(20)
async def test_stale_read_answers_without_a_leader(cluster):
    follower = cluster.follower()
    response, _ = await cluster.request("PUT", cluster.url(follower, "k"), b"v")
    assert response.code == 200
    cluster.network.isolate(follower, IDS)
    for query in ("?stale=true", "?stale", "?stale=1"):
        response, body = await cluster.request("GET", cluster.url(follower, "k", query))
        assert (response.code, body) == (200, b"v")


@bounded(20)
async def test_delete_then_get_is_404(cluster):
    follower = cluster.follower()
    await cluster.request("PUT", cluster.url(follower, "gone"), b"soon")
    response, body = await cluster.request("DELETE", cluster.url(follower, "gone"))
    assert response.code == 200 and isinstance(as_json(body)["index"], int)
    response, body = await cluster.request("GET", cluster.url(cluster.agreed_leader(), "gone"))
    assert response.code == 404
    assert as_json(body) == {"error": "key not found"}
    assert response.headers.getRawHeaders("content-type") == ["application/json"]


@bounded(20)
async def test_keys_may_hold_slashes_and_non_ascii_text(cluster):
    key = "dir/sub dir/ключ?#"
    response, _ = await cluster.request("PUT", cluster.url(IDS[0], key), b"\x00\xff")
    assert response.code == 200
    assert cluster.stores[IDS[0]].get(key) == b"\x00\xff"
    response, body = await cluster.request("GET", cluster.url(IDS[1], key))
    assert (response.code, body) == (200, b"\x00\xff")


@bounded(20)
async def test_compare_and_set_succeeds_and_conflicts(cluster):
    url = cluster.url(cluster.follower(), "lock", "?cas")

    async def cas(expect, value):
        response, body = await cluster.request("POST", url, json.dumps({"expect": expect, "value": value}).encode(),
                                               headers={"content-type": ["application/json"]})
        return response.code, as_json(body)

    code, body = await cas(None, "alice")
    assert code == 200 and body["ok"] is True and isinstance(body["index"], int)
    assert await cas(None, "bob") == (409, {"ok": False, "current": "alice"})
    assert await cas("carol", "bob") == (409, {"ok": False, "current": "alice"})
    code, body = await cas("alice", "bob")
    assert code == 200 and body["ok"] is True
    await cluster.request("DELETE", cluster.url(IDS[2], "lock"))
    assert await cas("bob", "dave") == (409, {"ok": False, "current": None})
    # A form content type (curl -d) does not confuse the body with form fields.
    response, body = await cluster.request("POST", url, b'{"expect": null, "value": "erin"}',
                                           headers={"content-type": ["application/x-www-form-urlencoded"]})
    assert response.code == 200 and as_json(body)["ok"] is True


# -- errors ------------------------------------------------------------------------


@bounded(20)
async def test_malformed_requests_get_400_with_a_json_error(cluster):
    member = IDS[0]
    base = cluster.url(member)
    cases = [
        ("POST", cluster.url(member, "k", "?cas"), b"{not json"),
        ("POST", cluster.url(member, "k", "?cas"), b'{"value": "v"}'),
        ("POST", cluster.url(member, "k", "?cas"), b'{"expect": null}'),
        ("POST", cluster.url(member, "k", "?cas"), b'["expect", "value"]'),
        ("POST", cluster.url(member, "k", "?cas"), b'{"expect": 1, "value": "v"}'),
        ("POST", cluster.url(member, "k", "?cas"), b'{"expect": null, "value": null}'),
        ("POST", cluster.url(member, "k", "?cas"), b'{"expect": null, "value": "\\ud800"}'),
        ("POST", cluster.url(member, "k", "?cas"), b'\xff\xfe'),
        ("POST", cluster.url(member, "k"), b'{"expect": null, "value": "v"}'),
        ("PUT", base + "/v1/kv/", b"v"),
        ("PUT", base + "/v1/kv", b"v"),
        ("PUT", cluster.url(member, "x" * (MAX_KEY_BYTES + 1)), b"v"),
        ("PUT", base + "/v1/kv/%FF%FE", b"v"),
        ("GET", base + "/v1/kv/%C3", None),
        ("GET", cluster.url(member, "k", "?stale=maybe"), None),
        ("GET", cluster.url(member, "k", "?stale=%FF"), None),
    ]
    for method, url, data in cases:
        response, body = await cluster.request(method, url, data)
        assert response.code == 400, (method, url, data, body)
        assert set(as_json(body)) == {"error"}, body
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert cluster.stores[member].items() == []


@bounded(20)
async def test_bodies_nested_too_deeply_or_badly_encoded_get_400_and_log_nothing_critical(cluster):
    """Finding 6: '[' * 100000 in a compare-and-set body gave a 500 HTML page and a critical traceback."""
    from twisted.logger import LogLevel, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        member = IDS[0]
        # The bodies stay within this cluster's 4 KiB limit; 4,000 levels pass Python's recursion limit.
        for body in [b"[" * 4000, b'{"expect": null, "value": ' + b"[" * 4000, b'{"":' * 1000,
                     b'{"expect": null, "value": "\xff"}', b"1" * 4090]:
            response, answer = await cluster.request("POST", cluster.url(member, "k", "?cas"), body)
            assert response.code == 400 and set(as_json(answer)) == {"error"}, answer
            assert response.headers.getRawHeaders("content-type") == ["application/json"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]
    assert cluster.stores[member].items() == []


@bounded(20)
async def test_oversized_commands_get_413(cluster):
    member = cluster.follower()
    response, body = await cluster.request("PUT", cluster.url(member, "big"), b"x" * (MAX_COMMAND + 1))
    assert response.code == 413 and "limit" in as_json(body)["error"]
    # Within the body limit, but the encoded command (key + value + framing) is over it.
    response, body = await cluster.request("PUT", cluster.url(member, "big"), b"x" * (MAX_COMMAND - 4))
    assert response.code == 413
    document = json.dumps({"expect": None, "value": "y" * MAX_COMMAND}).encode()
    response, body = await cluster.request("POST", cluster.url(member, "big", "?cas"), document)
    assert response.code == 413
    response, body = await cluster.request("PUT", cluster.url(member, "big"), b"x" * (MAX_COMMAND - 20))
    assert response.code == 200
    assert cluster.stores[member].get("big") == b"x" * (MAX_COMMAND - 20)


@bounded(20)
async def test_wrong_methods_get_405_with_allow(cluster):
    member = IDS[1]
    for method, path, allowed in [("PATCH", "/v1/kv/k", "DELETE, GET, HEAD, POST, PUT"),
                                  ("POST", "/v1/status", "GET, HEAD"),
                                  ("PUT", "/metrics", "GET, HEAD"),
                                  ("DELETE", "/v1/status", "GET, HEAD")]:
        response, body = await cluster.request(method, cluster.url(member) + path, b"")
        assert response.code == 405, (method, path)
        assert response.headers.getRawHeaders("allow") == [allowed]
        assert "not allowed" in as_json(body)["error"]


@bounded(20)
async def test_unknown_paths_get_a_json_404(cluster):
    for path in ("/v2/kv/k", "/v1", "/v1/nothing", "/metrics/extra/x"[:8] + "x"):
        response, body = await cluster.request("GET", cluster.url(IDS[0]) + path)
        assert response.code == 404, path
        assert as_json(body) == {"error": "no such resource"}


@bounded(30)
async def test_without_a_quorum_writes_and_linearizable_reads_get_503(cluster):
    lonely = cluster.follower()
    await cluster.request("PUT", cluster.url(lonely, "k"), b"before")
    cluster.network.isolate(lonely, IDS)
    started = reactor.seconds()
    for method, url, data in [("PUT", cluster.url(lonely, "k"), b"after"),
                              ("DELETE", cluster.url(lonely, "k"), None),
                              ("POST", cluster.url(lonely, "k", "?cas"), b'{"expect": "before", "value": "x"}'),
                              ("GET", cluster.url(lonely, "k"), None)]:
        response, body = await cluster.request(method, url, data)
        assert response.code == 503, (method, body)
        assert set(as_json(body)) == {"error"}
    # Each waited about the request timeout (1 s), not much longer.
    assert reactor.seconds() - started < 4 * cluster.request_timeout + 2
    response, body = await cluster.request("GET", cluster.url(lonely, "k", "?stale=true"))
    assert (response.code, body) == (200, b"before")
    # The status still answers, from the member's own view.
    response, body = await cluster.request("GET", cluster.url(lonely) + "/v1/status")
    assert response.code == 200 and as_json(body)["id"] == lonely
    cluster.network.heal()


@bounded(20)
async def test_a_client_that_disconnects_cancels_nothing(cluster):
    leader = cluster.agreed_leader()
    follower = cluster.follower()
    # The follower can reach the leader, but the other follower is cut off,
    # so the leader commits with the follower; delay commit by cutting it briefly.
    cluster.network.cut(leader, follower)
    request = treq.request("PUT", cluster.url(follower, "orphan"), data=b"kept", pool=cluster.pool)
    await pause(0.1)
    request.cancel()
    cluster.network.heal()
    # The write still lands (the member retries it), and the server keeps serving.
    await wait_until(lambda: all(s.get("orphan") == b"kept" for s in cluster.stores.values()),
                     what="the orphaned write to apply")
    await pause(0.1)
    response, body = await cluster.request("GET", cluster.url(follower, "orphan"))
    assert (response.code, body) == (200, b"kept")


# -- status and metrics -----------------------------------------------------------


@bounded(20)
async def test_status_reports_every_field(cluster):
    leader = cluster.agreed_leader()
    await cluster.request("PUT", cluster.url(leader, "k"), b"v")
    await wait_until(lambda: all(r.status().applied_index == cluster.rafts[leader].status().applied_index
                                 for r in cluster.rafts.values()), what="every member to apply")
    for member_id in IDS:
        response, body = await cluster.request("GET", cluster.url(member_id) + "/v1/status")
        assert response.code == 200
        status = as_json(body)
        assert set(status) == {"id", "role", "leader", "term", "commit_index", "applied_index",
                               "last_index", "members"}
        assert status["id"] == member_id
        assert status["role"] == ("leader" if member_id == leader else "follower")
        assert status["leader"] == leader
        assert status["members"] == sorted(IDS)
        assert status["term"] >= 1
        assert status["commit_index"] >= status["applied_index"] >= 2
        assert status["last_index"] >= status["commit_index"]


@bounded(20)
async def test_metrics_are_exposed_in_prometheus_text(cluster):
    member = cluster.follower()
    for n in range(3):
        await cluster.request("PUT", cluster.url(member, f"m{n}"), b"v")
    response, body = await cluster.request("GET", cluster.url(member) + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    text = body.decode()
    for name in ("txraft_term ", 'txraft_role{role="follower"} 1.0', "txraft_commit_index ",
                 "txraft_applied_index ", "txraft_last_index ", "txraft_elections_total ",
                 "txraft_snapshots_taken_total ", "txraft_snapshots_installed_total ",
                 "txraft_append_latency_seconds_count 3.0"):
        assert name in text, name
    response, body = await cluster.request("GET", cluster.url(cluster.agreed_leader()) + "/metrics")
    assert 'txraft_replicated_bytes_total{kind="entries",peer="%s"}' % member in body.decode()


@bounded(20)
async def test_without_a_key_value_store_kv_is_404_but_status_and_metrics_work(cluster):
    member = IDS[0]
    url = cluster.serve(create_api(cluster.rafts[member], None))
    response, body = await cluster.request("GET", url + "/v1/kv/k")
    assert response.code == 404
    assert as_json(body) == {"error": "no key-value store on this member"}
    response, body = await cluster.request("PUT", url + "/v1/kv/k", b"v")
    assert response.code == 404
    response, body = await cluster.request("GET", url + "/v1/status")
    assert response.code == 200 and as_json(body)["id"] == member
    response, body = await cluster.request("GET", url + "/metrics")
    assert response.code == 200 and b"txraft_term" in body


@bounded(20)
async def test_head_answers_like_get_without_a_body(cluster):
    member = cluster.follower()
    await cluster.request("PUT", cluster.url(member, "h"), b"12345")
    response, body = await cluster.request("HEAD", cluster.url(member, "h"))
    assert (response.code, body) == (200, b"")
    assert response.headers.getRawHeaders("content-length") == ["5"]
    response, body = await cluster.request("HEAD", cluster.url(member, "absent"))
    assert (response.code, body) == (404, b"")
    response, body = await cluster.request("HEAD", cluster.url(member) + "/v1/status")
    assert (response.code, body) == (200, b"")


@bounded(20)
async def test_an_encoded_slash_names_the_same_key(cluster):
    member = IDS[2]
    response, _ = await cluster.request("PUT", cluster.url(member) + "/v1/kv/users%2F42", b"x")
    assert response.code == 200
    response, body = await cluster.request("GET", cluster.url(member, "users/42"))
    assert (response.code, body) == (200, b"x")
