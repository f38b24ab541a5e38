"""
Fixtures for transport tests on real loopback sockets.

Every test runs on the real reactor (pytest-twisted).  ``clean_reactor``
fails a test that leaves DelayedCalls, listening ports or connections behind,
and ``members`` stops every transport a test made before that check.  Tests
bound themselves with :func:`bounded`, a Deferred timeout, never with sleeps.
"""

import functools

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from txraft import certs
from txraft import messages as m
from txraft.errors import TransportError
from txraft.interfaces import IRPCHandler
from txraft.transport.amp import AMPTransport

MEMBERS = ["member1", "member2", "member3"]


def bounded(seconds):
    """Run an ``async def`` test as a Deferred that fails after ``seconds``."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            d = defer.Deferred.fromCoroutine(f(*args, **kwargs))
            return d.addTimeout(seconds, reactor)

        return wrapper

    return decorate


async def eventually(call, attempts=200, delay=0.02, retry_on=(TransportError,)):
    """Retry ``call()`` (returning a Deferred) until it succeeds, on the given errors."""
    for attempt in range(attempts):
        try:
            return await call()
        except retry_on:
            if attempt == attempts - 1:
                raise
            await task.deferLater(reactor, delay, lambda: None)


class PKI:
    """Certificates made at run time: the cluster CA, members, an outsider, a rogue CA."""

    def __init__(self, directory):
        self.dir = directory
        self.paths = certs.write_cluster_certs(directory, MEMBERS + ["outsider"])
        self.ca = certs.load_certificate(self.paths["ca"][0])
        self.ca_key = certs.load_private_key(self.paths["ca"][1])
        # Same key as member1, a name no ACL lists, signed by the cluster CA.
        twin, key = certs.create_certificate(
            self.ca, self.ca_key, ["member1-twin"], key=certs.load_private_key(self.paths["member1"][1])
        )
        self.twin = (twin, key)
        # A certificate named like a member, but from another CA.
        rogue_ca, rogue_ca_key = certs.create_ca("rogue CA")
        self.rogue = certs.create_certificate(rogue_ca, rogue_ca_key, ["member2"])
        self.rogue_ca = rogue_ca

    def files(self, name):
        cert, key = self.paths[name]
        return {"cert": cert, "key": key, "ca": self.paths["ca"][0]}


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@implementer(IRPCHandler)
class Recorder:
    """An IRPCHandler that records requests and answers each with a plausible reply."""

    def __init__(self, respond=None):
        self.received = []
        self.respond = respond or default_reply

    def receive(self, message):
        self.received.append(message)
        return defer.maybeDeferred(self.respond, message)


def default_reply(message):
    if isinstance(message, m.RequestVote):
        return m.RequestVoteReply(term=message.term, granted=True)
    if isinstance(message, m.AppendEntries):
        return m.AppendEntriesReply(message.term, True, match_index=message.prev_index + len(message.entries))
    if isinstance(message, m.InstallSnapshot):
        return m.InstallSnapshotReply(message.term, next_offset=message.offset + len(message.data))
    if isinstance(message, m.ForwardAppend):
        return m.ForwardAppendReply(term=3, index=len(message.command))
    if isinstance(message, m.GetMembers):
        return m.GetMembersReply(("127.0.0.11:1", "127.0.0.12:2"))
    if isinstance(message, m.GetLeader):
        return m.GetLeaderReply("127.0.0.11:1")
    if isinstance(message, m.ReadIndex):
        return m.ReadIndexReply(42)
    if isinstance(message, m.TimeoutNow):
        return m.TimeoutNowReply(message.term + 1)
    if isinstance(message, m.ChangeMembers):
        return m.ChangeMembersReply(3, 17)
    if isinstance(message, m.TransferLeadership):
        return m.TransferLeadershipReply("127.0.0.13:7003")
    raise AssertionError(f"unexpected {message!r}")


def _sockets():
    # Ports and connections; the reactor's own wakers have no address.
    return {s for s in set(reactor.getReaders()) | set(reactor.getWriters()) if hasattr(s, "getHost")}


@pytest.fixture(autouse=True)
def clean_reactor():
    """Fail a test that leaves DelayedCalls, ports or connections behind (and clean them up)."""
    before = _sockets()
    yield
    delayed = [c for c in reactor.getDelayedCalls() if c.active()]
    sockets = _sockets() - before
    for call in delayed:
        call.cancel()
    for selectable in sockets:
        closer = getattr(selectable, "abortConnection", None) or getattr(selectable, "stopListening", None)
        if closer is not None:
            closer()
    assert not delayed, f"the test left DelayedCalls: {delayed}"
    assert not sockets, f"the test left sockets open: {sockets}"


class Members:
    """Makes transports at 127.0.0.11, .12, ... and stops them all at the end of the test."""

    def __init__(self, pki):
        self.pki = pki
        self.made = []

    def transport(self, n, name=None, acl=tuple(MEMBERS), **kwargs):
        if not kwargs.get("insecure") and "cert" not in kwargs:
            kwargs.update(self.pki.files(name or f"member{n}"))
        t = AMPTransport(f"127.0.0.{10 + n}:0", acl=acl, reactor=reactor, **kwargs)
        self.made.append(t)
        return t

    async def started(self, n, handler=None, **kwargs):
        t = self.transport(n, **kwargs)
        await t.start(handler or Recorder())
        return t

    async def stop_all(self):
        stopping = defer.gatherResults([t.stop() for t in self.made])
        await stopping.addTimeout(10, reactor)


@pytest_twisted.async_yield_fixture
async def members(clean_reactor, pki):
    made = Members(pki)
    yield made
    await made.stop_all()
    # Let connectionLost of both sides run before the reactor is checked.
    await task.deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def logged():
    """Every log event emitted during the test, as formatted strings."""
    from twisted.logger import formatEvent

    events = []

    def observer(event):
        events.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)
