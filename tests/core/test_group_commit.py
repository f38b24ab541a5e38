"""
A leader counts its own log towards a commit only once its entries are
durable, and it learns that once per group commit of its disk, not once per
append: the commit check runs a few times per group, whatever its size, and
no append's durability is lost between groups.
"""

from unittest import mock

from twisted.internet.task import Clock

from txraft import errors
from txraft.core import replication
from txraft.storage.memory import MemoryStorage
from tests.core.harness import B, C, acknowledge, elect, make_core

import txraft.messages as m


def leader_with_slow_disk():
    clock = Clock()
    core = make_core(storage=MemoryStorage(clock, fsync_delay=0.002), clock=clock)
    core.start_election()
    clock.advance(0.01)  # the vote for itself is durable: it asks the others
    for _, request, d in core.transport.take(m.RequestVote):
        d.callback(m.RequestVoteReply(request.term, True))
    assert core.role == "leader"
    clock.advance(0.01)  # the new term's first entry is durable
    acknowledge_everything(core)
    assert core.commit_index == core.storage.last_index
    return core, clock


def acknowledge_everything(core, peers=(B, C)):
    for peer, request, _ in core.transport.take(m.AppendEntries):
        if peer in peers:
            acknowledge(core, peer, request, core.storage.last_index)


def test_appends_spanning_several_group_commits_all_count_towards_the_commit():
    core, clock = leader_with_slow_disk()
    for _ in range(10):
        core.place(b"x", None)
    clock.advance(0.001)  # the first group commit has not run yet: these join it
    for _ in range(10):
        core.place(b"y", None)
    clock.advance(0.0015)  # the first group is durable; the next ones go to a later one
    for _ in range(10):
        core.place(b"z", None)
    last = core.storage.last_index
    clock.advance(0)  # the end-of-turn broadcast
    acknowledge_everything(core, peers=[B])  # with the leader, a quorum of three
    assert core.commit_index < last  # B has it all, the leader's disk not yet
    clock.advance(0.01)
    assert core.commit_index == last
    assert core.applied_index == last


def test_a_group_commit_of_many_appends_costs_a_few_commit_checks():
    core, clock = leader_with_slow_disk()
    for _ in range(200):
        core.place(b"x", None)
    clock.advance(0)
    acknowledge_everything(core, peers=[B])  # B first: only the leader's disk holds the commit back
    with mock.patch.object(replication, "committable", wraps=replication.committable) as checks:
        clock.advance(0.01)
    assert core.commit_index == core.storage.last_index
    assert checks.call_count <= 2


def test_commit_news_is_not_sent_to_a_follower_that_was_just_sent_it():
    # A single writer on the leader: B answers, the entry commits, the writer
    # appends again at once; B is sent the next entry with the new commit
    # index right away, so the end-of-turn broadcast owes B nothing more.
    core = elect(make_core())
    acknowledge_everything(core)
    clock = core.clock
    apply = core.client.apply

    def writer(command, index):
        if command == b"x":
            core.place(b"y", None)  # the writer appends again as soon as x is applied
        return apply(command, index)

    core.client.apply = writer
    core.place(b"x", None)
    clock.advance(0)
    sent = core.transport.take(m.AppendEntries)
    assert sorted(peer for peer, _, _ in sent) == [B, C]
    x = core.storage.last_index
    for peer, request, _ in sent:
        if peer == B:
            acknowledge(core, B, request, x)
    assert core.commit_index == x and core.storage.last_index == x + 1  # x committed, and y placed
    clock.advance(0)
    sent = core.transport.take(m.AppendEntries)
    assert sorted((peer, len(request.entries)) for peer, request, _ in sent) == [(B, 1), (C, 1)]
    assert all(request.leader_commit == core.commit_index for _, request, _ in sent)


def test_commit_news_still_reaches_followers_with_nothing_new_to_receive():
    core = elect(make_core())
    acknowledge_everything(core)
    clock = core.clock
    core.place(b"x", None)
    clock.advance(0)
    for peer, request, _ in core.transport.take(m.AppendEntries):
        if peer == B:
            acknowledge(core, B, request, core.storage.last_index)
    clock.advance(0)
    news = core.transport.take(m.AppendEntries)
    assert sorted(peer for peer, _, _ in news) == [B, C]
    assert all(not request.entries and request.leader_commit == core.commit_index for _, request, _ in news)


def test_place_many_places_in_order_in_one_write_until_one_is_refused():
    core = elect(make_core(max_uncommitted_entries=5, max_command_bytes=100))
    acknowledge_everything(core)
    first, writes = core.storage.last_index, core.storage.version
    placed, refused = core.place_many([(b"c%d" % i, None) for i in range(8)])
    assert placed == [(core.term, first + i) for i in range(1, 6)]
    assert isinstance(refused, errors.Busy)
    assert core.storage.version == writes + 1 and core.storage.last_index == first + 5
    assert [e.data for e in core.storage.entries(first + 1, first + 6)] == [b"c%d" % i for i in range(5)]


def test_place_many_stops_at_a_command_too_large_and_places_nothing_after_it():
    core = elect(make_core(max_command_bytes=10))
    acknowledge_everything(core)
    first = core.storage.last_index
    placed, refused = core.place_many([(b"ok", None), (b"x" * 11, None), (b"after", None)])
    assert placed == [(core.term, first + 1)]
    assert isinstance(refused, errors.CommandTooLarge)
    assert core.storage.last_index == first + 1


def test_place_many_off_lead_places_nothing():
    core = make_core()
    placed, refused = core.place_many([(b"x", None)])
    assert placed == [] and isinstance(refused, errors.NotLeader)
    assert core.storage.last_index == 0
