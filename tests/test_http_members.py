"""
The HTTP membership endpoints (txraft.http_members) against real listening
sites in front of three real members on the real reactor.
"""

import json

from twisted.internet import defer

from tests.test_http import IDS, as_json, bounded, cluster, wait_until  # noqa: F401 (fixture)

NEW = "127.0.0.1:7109"


async def members_of(cluster, member_id):
    response, body = await cluster.request("GET", cluster.url(member_id) + "/v1/members")
    assert response.code == 200
    return as_json(body)


async def post(cluster, member_id, path, document=None, raw=None):
    data = raw if raw is not None else (json.dumps(document).encode() if document is not None else b"")
    response, body = await cluster.request("POST", cluster.url(member_id) + path, data=data)
    return response.code, as_json(body)


@bounded(20)
async def test_members_are_listed_by_every_member_with_match_indexes_on_the_leader(cluster):
    leader = cluster.agreed_leader()
    document = await members_of(cluster, cluster.follower())
    assert document["leader"] == leader and document["change"] is None
    assert [m["id"] for m in document["members"]] == sorted(IDS)
    assert all(m["voter"] and "match_index" not in m for m in document["members"])
    document = await members_of(cluster, leader)
    assert all(m["match_index"] >= 1 for m in document["members"])


@bounded(20)
async def test_a_learner_is_added_through_a_follower_then_removed(cluster):
    code, document = await post(cluster, cluster.follower(), "/v1/members",
                                {"id": NEW, "name": "member9", "voter": False})
    assert code == 200, document
    added = {m["id"]: m for m in document["members"]}[NEW]
    assert added["voter"] is False and added["name"] == "member9"
    code, document = await post(cluster, cluster.follower(), "/v1/members", {"id": NEW})
    assert code == 409 and "already a member" in document["error"]
    response, body = await cluster.request("DELETE", cluster.url(cluster.follower()) + "/v1/members/" + NEW)
    assert response.code == 200, body
    assert NEW not in [m["id"] for m in as_json(body)["members"]]


@bounded(20)
async def test_bad_membership_requests_get_400_404_or_409(cluster):
    follower = cluster.follower()
    for document, raw, fragment in [
        (None, b"{not json", "not JSON"),
        ([NEW], None, "JSON object"),
        ({"name": "x"}, None, '"id"'),
        ({"id": "nope"}, None, "HOST:PORT"),
        ({"id": NEW, "voter": "yes"}, None, "boolean"),
        ({"id": NEW, "colour": "red"}, None, "unknown field"),
    ]:
        code, answer = await post(cluster, follower, "/v1/members", document, raw)
        assert code == 400 and fragment in answer["error"], (document, raw, answer)
    response, body = await cluster.request("DELETE", cluster.url(follower) + "/v1/members/127.0.0.1:7999")
    assert response.code == 404 and "not a member" in as_json(body)["error"]
    code, answer = await post(cluster, follower, "/v1/members/127.0.0.1:7999/promote")
    assert code == 404
    code, answer = await post(cluster, follower, "/v1/members/" + IDS[0] + "/promote")
    assert code == 409 and "already a voter" in answer["error"]
    code, answer = await post(cluster, follower, "/v1/leader/transfer", {"to": "127.0.0.1:7999"})
    assert code == 404
    response, body = await cluster.request("GET", cluster.url(follower) + "/v1/members/x/y/z")
    assert response.code == 404


@bounded(20)
async def test_a_second_change_while_one_is_in_flight_gets_409(cluster):
    leader = cluster.agreed_leader()
    cluster.network.isolate(leader, IDS)  # the first change cannot commit
    first = defer.ensureDeferred(cluster.request("POST", cluster.url(leader) + "/v1/members",
                                                 data=json.dumps({"id": NEW, "voter": False}).encode()))
    seen = []
    first.addBoth(lambda r: seen.append(r) or r)
    await wait_until(lambda: cluster.rafts[leader].core.change_in_flight() or seen, what="the first change")
    assert not seen, seen
    code, answer = await post(cluster, leader, "/v1/members", {"id": "127.0.0.1:7110", "voter": False})
    assert code == 409 and "in progress" in answer["error"]
    response, _ = await first
    assert response.code == 503  # it timed out uncommitted
    cluster.network.heal()


@bounded(20)
async def test_leadership_is_transferred_on_request_to_any_member(cluster):
    leader = cluster.agreed_leader()
    target = next(i for i in IDS if i != leader)
    code, answer = await post(cluster, cluster.follower(), "/v1/leader/transfer", {"to": target})
    assert code == 200 and answer == {"leader": target}
    await wait_until(lambda: cluster.agreed_leader() == target, what="the new leader")
    code, answer = await post(cluster, target, "/v1/leader/transfer")
    assert code == 200 and answer["leader"] != target
