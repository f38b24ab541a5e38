"""
What a member logs about its connections to peers: every event names the peer
by member id and certificate name, in the text and as structured fields
(``member``, ``peer``, ``peer_name``), including Twisted's own reconnection
lines ("Scheduling retry N to connect ..."), which used to show an object.
"""

import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from txraft import messages as m

from .conftest import bounded


@pytest_twisted.async_yield_fixture
async def events():
    """Every log event emitted during the test, as dicts."""
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


async def logged(events, text, seconds=10.0):
    """:returns: the first event whose text contains ``text``, waiting for it up to ``seconds``."""
    deadline = reactor.seconds() + seconds
    while True:
        for event in events:
            if text in formatEvent(event):
                return event
        assert reactor.seconds() < deadline, f"never logged {text!r}; logged:\n" + "\n".join(
            formatEvent(e) for e in events)
        await task.deferLater(reactor, 0.02, lambda: None)


@bounded(20)
async def test_connection_events_name_the_peer_by_id_and_certificate_name(members, events):
    server = await members.started(1)
    client = await members.started(2, peer_names={server.address: "member1"})
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
    peer = f"member {server.address} (certificate member1)"

    up = await logged(events, f"{client.address}: connected to {peer}")
    assert (up["member"], up["peer"], up["peer_name"]) == (client.address, server.address, "member1")

    await server.stop()
    lost = await logged(events, f"{client.address}: lost the connection to {peer}: ")
    assert (lost["peer"], lost["peer_name"]) == (server.address, "member1") and lost["reason"]
    down = await logged(events, f"{client.address}: cannot reach {peer}: ")
    assert "refused" in down["reason"]
    await logged(events, f"Scheduling retry 1 to connect {peer} in ")
    texts = [formatEvent(e) for e in events]
    assert not [t for t in texts if "object at 0x" in t], texts
    # Once per stretch of failures, not once per retry.
    await logged(events, f"Scheduling retry 2 to connect {peer} in ")
    assert len([e for e in events if "cannot reach" in formatEvent(e)]) == 1


@bounded(20)
async def test_without_tls_the_peer_is_named_by_its_id(members, events):
    server = await members.started(1, insecure=True, acl=())
    client = await members.started(2, insecure=True, acl=())
    await client.send(server.address, m.ReadIndex())
    event = await logged(events, f"{client.address}: connected to member {server.address}")
    assert formatEvent(event).endswith(f"connected to member {server.address}")
