"""
Backpressure at the leader: beyond ``max_uncommitted_entries`` or
``max_uncommitted_bytes`` a local append waits in the bounded admission queue
and fails with ``Busy`` beyond it (or when its deadline passes there); a
follower whose forwarded append the leader refuses as busy offers it again
until the caller's deadline, then fails it with ``Busy`` (at once with
``max_queued_appends=0``; HTTP 429).  Nothing refused is ever stored, nothing
admitted is applied twice, and admission resumes as commits drain.
"""

import json

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.python.failure import Failure

from txraft import errors
from txraft.config import RaftConfig
from txraft.metrics import MemberMetrics
from txraft.testing import SafetyChecker, SimulatedCluster

from tests.test_http import HTTPCluster, bounded, wait_until


class BoundedCluster(SimulatedCluster):
    """A simulated cluster whose members have small uncommitted bounds."""

    def __init__(self, entries=4, size_bytes=1 << 20, queue=0, **kwargs):
        self.bounds = dict(max_uncommitted_entries=entries, max_uncommitted_bytes=size_bytes,
                           max_queued_appends=queue)
        super().__init__(checker=SafetyChecker(), **kwargs)

    def config(self, member_id):
        base = super().config(member_id)
        return RaftConfig(**{**base.__dict__, **self.bounds})


def started(cluster):
    cluster.start()
    assert cluster.wait_for_leader() is not None
    return cluster


def outcomes(deferreds):
    box = [[] for _ in deferreds]
    for slot, d in zip(box, deferreds):
        d.addBoth(lambda result, slot=slot: slot.append(result.value if isinstance(result, Failure) else result))
    return box


def applied_commands(cluster, member_id):
    return [c for _, c in sorted(cluster.clients[member_id].applied.items())]


def test_beyond_the_entry_bound_appends_queue_then_fail_with_busy_and_nothing_refused_is_stored():
    cluster = started(BoundedCluster(entries=4, queue=3, fsync_delay=0.05))
    leader = cluster.members[cluster.agreed_leader()]
    last = leader.status().last_index
    # All in one reactor turn: nothing can commit in between.
    results = outcomes([leader.append(b"cmd%d" % i) for i in range(10)])
    refused = [r[0] for r in results[7:]]
    assert all(isinstance(r, errors.Busy) for r in refused), refused
    assert "queue" in str(refused[0]) and refused[0].retry_after > 0
    assert all(r == [] for r in results[:7])  # placed or queued: still waiting
    assert leader.status().last_index == last + 4 and leader.queued_appends == 3
    assert leader.core.busy_refusals == 3
    cluster.run_until(lambda: all(r for r in results), 5)
    assert [r[0] for r in results[:7]] == [last + i for i in range(1, 8)]
    assert leader.queued_appends == 0
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        assert applied_commands(cluster, member_id) == [b"cmd%d" % i for i in range(7)]
    # Committed: the bound is free again.
    assert leader.core.uncommitted() == (0, 0)
    again = outcomes([leader.append(b"later")])
    cluster.run_until(lambda: again[0], 5)
    assert again[0][0] == last + 8


def test_an_append_whose_deadline_passes_in_the_queue_fails_with_busy_and_is_never_stored():
    cluster = started(BoundedCluster(entries=1, queue=10, fsync_delay=0.2))
    leader = cluster.members[cluster.agreed_leader()]
    first, queued = outcomes([leader.append(b"first"), leader.append(b"queued", timeout=0.05)])
    assert cluster.run_until(lambda: queued, 5)
    assert isinstance(queued[0], errors.Busy) and "nothing was stored" in str(queued[0])
    cluster.run_until(lambda: first, 10)
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        assert applied_commands(cluster, member_id) == [b"first"]


def test_the_byte_bound_counts_command_bytes_and_always_admits_one_command():
    cluster = started(BoundedCluster(entries=1000, size_bytes=250, fsync_delay=0.05))
    leader = cluster.members[cluster.agreed_leader()]
    # One command larger than the bound is admitted when nothing is uncommitted.
    big = outcomes([leader.append(b"b" * 1000)])
    cluster.run_until(lambda: big[0], 5)
    assert isinstance(big[0][0], int)
    results = outcomes([leader.append(b"x" * 100) for _ in range(3)])
    assert results[0] == results[1] == [] and isinstance(results[2][0], errors.Busy)
    assert leader.core.uncommitted() == (2, 200)
    cluster.run_until(lambda: results[0] and results[1], 5)
    assert leader.core.uncommitted() == (0, 0)


def test_appends_forwarded_by_a_follower_obey_the_leaders_bound():
    # max_queued_appends=0: a refused forwarded append fails at once.
    cluster = started(BoundedCluster(entries=3, fsync_delay=0.05))
    leader_id = cluster.agreed_leader()
    follower = cluster.members[next(i for i in cluster.ids if i != leader_id)]
    results = outcomes([follower.append(b"f%d" % i) for i in range(8)])
    cluster.run_until(lambda: all(results), 5)
    values = [r[0] for r in results]
    refused = [v for v in values if isinstance(v, errors.Busy)]
    admitted = [v for v in values if isinstance(v, int)]
    assert len(admitted) == 3 and len(refused) == 5, values
    assert cluster.members[leader_id].core.busy_refusals == 5
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        commands = applied_commands(cluster, member_id)
        assert sorted(commands) == sorted(b"f%d" % i for i, v in enumerate(values) if isinstance(v, int))


def test_a_follower_offers_refused_appends_again_until_the_leader_admits_them():
    cluster = started(BoundedCluster(entries=3, queue=100, fsync_delay=0.05))
    leader_id = cluster.agreed_leader()
    follower = cluster.members[next(i for i in cluster.ids if i != leader_id)]
    results = outcomes([follower.append(b"f%d" % i) for i in range(12)])
    assert cluster.run_until(lambda: all(results), 10)
    values = [r[0] for r in results]
    assert all(isinstance(v, int) for v in values), values
    assert cluster.members[leader_id].core.busy_refusals > 0  # the leader did refuse some at first
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        assert sorted(applied_commands(cluster, member_id)) == sorted(b"f%d" % i for i in range(12))


def test_a_forwarded_append_the_leader_never_admits_fails_with_busy_at_its_deadline_and_is_not_stored():
    # Offered again every heartbeat (0.2 s): the deadline (0.5 s) passes
    # between two offers, while "first" (fsync 0.8 s) holds the only slot.
    cluster = started(BoundedCluster(entries=1, queue=100, fsync_delay=0.8, heartbeat=0.2))
    leader_id = cluster.agreed_leader()
    leader = cluster.members[leader_id]
    follower = cluster.members[next(i for i in cluster.ids if i != leader_id)]
    first = outcomes([leader.append(b"first")])
    refused = outcomes([follower.append(b"late", timeout=0.5)])
    assert cluster.run_until(lambda: refused[0], 5)
    assert isinstance(refused[0][0], errors.Busy) and "nothing was stored" in str(refused[0][0])
    assert leader.core.busy_refusals >= 2  # offered again after the first refusal
    cluster.run_until(lambda: first[0], 10)
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        assert applied_commands(cluster, member_id) == [b"first"]


def test_callers_that_retry_on_busy_get_every_command_applied_exactly_once():
    cluster = started(BoundedCluster(entries=8, fsync_delay=0.01, seed=7))
    ids = cluster.ids
    done = {}
    busy = [0]

    def submit(n):
        member = cluster.members[ids[n % len(ids)]]

        def finished(result):
            if isinstance(result, Failure) and result.check(errors.Busy):
                busy[0] += 1
                cluster.clock.callLater(result.value.retry_after, submit, n)
            else:
                done[n] = result

        member.append(b"c%03d" % n).addBoth(finished)

    for n in range(200):
        submit(n)
    assert cluster.run_until(lambda: len(done) == 200, 60), len(done)
    assert busy[0] > 0  # the bound did refuse some
    assert all(isinstance(v, int) for v in done.values()), [v for v in done.values() if not isinstance(v, int)][:3]
    cluster.run_until(cluster.converged, 5)
    for member_id in ids:
        commands = applied_commands(cluster, member_id)
        assert sorted(commands) == sorted(b"c%03d" % n for n in range(200))


@pytest_twisted.async_yield_fixture
async def small_http_cluster(clean_reactor):
    cluster = HTTPCluster(request_timeout=5.0, max_uncommitted_entries=2, max_queued_appends=0)
    try:
        await cluster.start()
    except BaseException:
        await cluster.stop()
        raise
    yield cluster
    await cluster.stop()


@bounded(30)
async def test_http_answers_429_with_retry_after_beyond_the_bound(small_http_cluster):
    cluster = small_http_cluster
    leader = cluster.agreed_leader()
    follower = cluster.follower()
    # Cut the leader off: what it places cannot commit for now.
    cluster.network.isolate(leader, list(cluster.rafts))
    waiting = [defer.ensureDeferred(cluster.request("PUT", cluster.url(leader, f"k{i}"), b"v"))
               for i in range(2)]
    await wait_until(lambda: cluster.rafts[leader].core.uncommitted()[0] == 2)
    response, body = await cluster.request("PUT", cluster.url(leader, "k9"), b"v")
    assert response.code == 429, body
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert json.loads(body)["error"].startswith("busy:")
    metrics = cluster.metrics[leader].render().decode()
    assert "txraft_appends_refused_busy_total 1.0" in metrics
    assert "txraft_uncommitted_entries 2.0" in metrics
    assert "txraft_max_uncommitted_entries 2.0" in metrics
    cluster.network.heal()
    for d in waiting:
        response, _ = await d
        assert response.code == 200
    await wait_until(lambda: cluster.stores[follower].get("k1") == b"v")
    assert cluster.stores[follower].get("k9") is None


class _Busy(Resource):
    """An API that answers every request as a busy leader does."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(429)
        request.setHeader(b"retry-after", b"1")
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "busy: the leader holds 2 uncommitted commands", "retry_after": 0.05}'


@bounded(60)
async def test_the_command_line_says_the_cluster_is_busy(clean_reactor):
    from tests.test_cli import txraft

    port = reactor.listenTCP(0, Site(_Busy()), interface="127.0.0.1")
    try:
        url = "http://127.0.0.1:%d" % port.getHost().port
        out, err, code = await txraft("put", "k", "v", "--server", url, "--insecure")
    finally:
        await port.stopListening()
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "HTTP 429" in err and "the cluster is busy: nothing was stored" in err


def test_metrics_expose_the_bounds_and_refusals():
    cluster = started(BoundedCluster(entries=1, fsync_delay=0.05))
    leader = cluster.members[cluster.agreed_leader()]
    metrics = MemberMetrics(leader)
    outcomes([leader.append(b"a"), leader.append(b"b")])
    text = metrics.render().decode()
    assert "txraft_uncommitted_entries 1.0" in text
    assert "txraft_uncommitted_bytes 1.0" in text
    assert "txraft_appends_refused_busy_total 1.0" in text
    assert "txraft_max_uncommitted_bytes 1.048576e+06" in text
    assert "txraft_reactor_turn_seconds_bucket" in text
    cluster.run(1)


def test_queued_appends_are_placed_in_runs_and_each_is_applied_once_in_order():
    # 300 appends in one turn against a bound of 50: 250 wait in the queue and
    # are placed in runs as commits make room, each run in one log write.
    cluster = started(BoundedCluster(entries=50, queue=1000, fsync_delay=0.01))
    leader = cluster.members[cluster.agreed_leader()]
    storage = leader.core.storage
    writes = storage.version
    results = outcomes([leader.append(b"q%d" % i) for i in range(300)])
    assert leader.queued_appends == 250
    cluster.run_until(lambda: all(results), 10)
    assert all(isinstance(r[0], int) for r in results), [r for r in results if not isinstance(r[0], int)][:3]
    assert [r[0] for r in results] == sorted(r[0] for r in results)
    assert storage.version - writes < 60  # not one write per append
    cluster.run_until(cluster.converged, 5)
    for member_id in cluster.ids:
        assert applied_commands(cluster, member_id) == [b"q%d" % i for i in range(300)]
