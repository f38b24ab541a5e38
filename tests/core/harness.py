"""A core under a microscope: real RaftCore, fake clock, a transport that records every send."""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from txraft import messages as m
from txraft.config import RaftConfig
from txraft.core.raft import RaftCore
from txraft.interfaces import ITransport
from txraft.storage.memory import MemoryStorage
from txraft.testing.cluster import RecordingClient

A, B, C, D, E = (f"127.0.0.{i}:7000" for i in range(1, 6))


@implementer(ITransport)
class RecordingTransport:
    """Keeps every request; the test answers them by hand."""

    def __init__(self):
        self.sent = []  # [(peer, message, deferred)]

    def start(self, handler):
        self.handler = handler
        return defer.succeed(None)

    def send(self, peer, message):
        d = defer.Deferred()
        self.sent.append((peer, message, d))
        return d

    def stop(self):
        return defer.succeed(None)

    def take(self, kind=None):
        """Remove and return the recorded sends (of one message type)."""
        chosen = [s for s in self.sent if kind is None or isinstance(s[1], kind)]
        self.sent = [s for s in self.sent if s not in chosen]
        return chosen


def make_core(member=A, members=(A, B, C), storage=None, clock=None, rng=None, **config):
    clock = clock or Clock()
    storage = storage if storage is not None else MemoryStorage()
    settings = dict(listen=member, heartbeat=0.1, rpc_timeout=1.0)
    settings.update(config)
    core = RaftCore(member, members, storage, RecordingTransport(), RecordingClient(),
                    clock, rng or random.Random(0), RaftConfig(**settings))
    core.start()
    return core


def entries(*terms, start=1, data=b""):
    """Entries with the given terms at consecutive indexes from ``start``."""
    return tuple(m.Entry(t, start + i, m.EntryKind.COMMAND, data or b"e%d" % (start + i))
                 for i, t in enumerate(terms))


def result_of(d):
    """The result of a Deferred that has already fired (fails the test otherwise)."""
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def elect(core):
    """Make ``core`` leader of the next term by granting it every vote."""
    core.start_election()
    for peer, message, d in core.transport.take(m.RequestVote):
        d.callback(m.RequestVoteReply(message.term, True))
    assert core.role == "leader"
    return core


def acknowledge(core, peer, request, match_index):
    """Play ``peer`` answering ``request`` (an AppendEntries) with success up to ``match_index``."""
    core.receive_reply(peer, request, m.AppendEntriesReply(request.term, True, match_index=match_index))
