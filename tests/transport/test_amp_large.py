"""Values beyond AMP's 65,535-byte cap: large commands, batches, snapshots, and cuts mid-transfer."""

import os

import pytest

from txraft import errors as e
from txraft import messages as m
from txraft.transport import fragments

from .conftest import Recorder, bounded, eventually

MiB = 1024 * 1024


@bounded(30)
async def test_a_5_mb_command_goes_through(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    command = os.urandom(5 * MiB)
    reply = await client.send(server.address, m.ForwardAppend(command, m.RequestId("s", 1, 1)))
    assert reply == m.ForwardAppendReply(3, len(command))
    assert handler.received[0].command == command


@bounded(30)
async def test_a_batch_larger_than_an_amp_value_goes_through(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    entries = tuple(m.Entry(2, i, data=os.urandom(1000)) for i in range(1, 2001))
    request = m.AppendEntries(2, client.address, 0, 0, entries, 0)
    reply = await client.send(server.address, request)
    assert reply.match_index == 2000
    assert handler.received == [request]


@bounded(120)
async def test_a_50_mb_snapshot_goes_through_as_chunks(members):
    received = bytearray()

    def install(message):
        if message.offset != len(received):
            raise e.InvalidRequest(f"offset {message.offset}, expected {len(received)}")
        received.extend(message.data)
        return m.InstallSnapshotReply(1, len(received))

    server = await members.started(1, Recorder(install))
    client = await members.started(2)
    snapshot = os.urandom(50 * MiB)
    chunk = 60 * 1024
    offset = 0
    while offset < len(snapshot):
        data = snapshot[offset : offset + chunk]
        done = offset + len(data) == len(snapshot)
        reply = await client.send(server.address, m.InstallSnapshot(1, client.address, 9, 1, offset, data, done))
        offset = reply.next_offset
    assert bytes(received) == snapshot


@bounded(60)
async def test_a_20_mb_message_goes_through_whole(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    data = os.urandom(20 * MiB)
    reply = await client.send(server.address, m.InstallSnapshot(1, client.address, 9, 1, 0, data, True))
    assert reply.next_offset == len(data)
    assert handler.received[0].data == data


@bounded(10)
async def test_a_value_over_the_limit_is_refused_before_sending(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2, max_message_bytes=MiB)
    with pytest.raises(e.InvalidRequest):
        await client.send(server.address, m.ForwardAppend(b"x" * (MiB + 1), m.RequestId("s", 1, 1)))
    assert handler.received == []


@bounded(10)
async def test_a_receiver_refuses_fragments_over_its_limit(members):
    handler = Recorder()
    server = await members.started(1, handler, max_message_bytes=MiB)
    client = await members.started(2)
    with pytest.raises(e.InvalidRequest):
        await client.send(server.address, m.ForwardAppend(b"x" * (2 * MiB), m.RequestId("s", 1, 1)))
    assert handler.received == []
    # The connection is still good for requests within the limit.
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)


@bounded(60)
async def test_a_cut_mid_transfer_fails_the_call_and_a_retry_works(members, monkeypatch):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    await client.send(server.address, m.ReadIndex())  # connected

    cut = []
    original_add = fragments.Reassembly.add

    def add(self, blob, data, offset=None):
        original_add(self, blob, data, offset)
        if self.total > 2 * MiB and not cut:
            cut.append(self.total)
            for protocol in list(server._context.connections):
                protocol.transport.abortConnection()

    monkeypatch.setattr(fragments.Reassembly, "add", add)
    data = os.urandom(10 * MiB)
    request = m.InstallSnapshot(1, client.address, 9, 1, 0, data, True)
    with pytest.raises(e.TransportError):
        await client.send(server.address, request)
    assert cut and handler.received == [m.ReadIndex()]

    reply = await eventually(lambda: client.send(server.address, request))
    assert reply.next_offset == len(data)
    assert handler.received[1].data == data


def test_reassembly_is_bounded_per_value_and_per_connection():
    reassembly = fragments.Reassembly(max_message=10, max_pending=15)
    reassembly.add(1, b"12345")
    reassembly.add(2, b"12345")
    with pytest.raises(e.InvalidRequest):
        reassembly.add(1, b"123456")  # value 1 would pass 10 bytes: dropped
    assert reassembly.total == 5
    reassembly.add(3, b"1234")
    with pytest.raises(e.InvalidRequest):
        reassembly.add(4, b"1234567")  # 16 bytes pending on the connection: value 4 dropped
    assert reassembly.total == 9
    assert reassembly.take(3) == b"1234"
    assert reassembly.total == 5
    reassembly.discard(2)
    assert reassembly.total == 0
    with pytest.raises(e.TransportError):
        reassembly.take(1)
