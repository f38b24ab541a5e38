"""
AMPTransport over mutual TLS on loopback: every command, errors, large values,
reconnection, cancellation and protocol violations.
"""

import pytest
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from txraft import errors as e
from txraft import messages as m
from txraft.interfaces import ITransport
from txraft.transport.amp import AMPTransport

from .conftest import Recorder, bounded

REQUESTS = [
    m.RequestVote(term=5, candidate="127.0.0.12:7002", last_log_index=10, last_log_term=4, disrupt=True),
    m.AppendEntries(
        term=5,
        leader="127.0.0.12:7002",
        prev_index=9,
        prev_term=4,
        entries=(
            m.Entry(5, 10, m.EntryKind.NOOP),
            m.Entry(5, 11, data=b"set x 1", request_id=m.RequestId("s1", 3, 2)),
        ),
        leader_commit=8,
    ),
    m.AppendEntries(term=5, leader="127.0.0.12:7002", prev_index=9, prev_term=4, entries=(), leader_commit=9),
    m.InstallSnapshot(term=5, leader="127.0.0.12:7002", last_index=100, last_term=4, offset=0, data=b"\0snap", done=True),
    m.ForwardAppend(command=b"set y 2", request_id=m.RequestId("session", 7, 5)),
    m.GetMembers(),
    m.GetLeader(),
    m.ReadIndex(),
    m.TimeoutNow(term=5, leader="127.0.0.12:7002"),
    m.ChangeMembers(action="add", member="127.0.0.14:7004", name="member4", voter=True),
    m.TransferLeadership(to=""),
]


def test_amp_transport_provides_itransport(pki):
    transport = AMPTransport("127.0.0.11:0", acl=["member1"], reactor=reactor, **pki.files("member1"))
    assert verifyObject(ITransport, transport)


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
@bounded(10)
async def test_every_request_round_trips(members, request_):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2)
    reply = await client.send(server.address, request_)
    assert handler.received == [request_]
    assert reply == handler.respond(request_)


@bounded(10)
async def test_start_exposes_the_bound_port_as_member_id(members):
    server = await members.started(1)
    host, _, port = server.address.rpartition(":")
    assert host == "127.0.0.11"
    assert int(port) > 0


@bounded(10)
async def test_not_leader_arrives_with_the_leader_id(members):
    def refuse(message):
        raise e.NotLeader("127.0.0.13:7003")

    server = await members.started(1, Recorder(refuse))
    client = await members.started(2)
    with pytest.raises(e.NotLeader) as raised:
        await client.send(server.address, m.ForwardAppend(b"x", m.RequestId("s", 1, 1)))
    assert raised.value.leader == "127.0.0.13:7003"


@pytest.mark.parametrize(
    "error", [e.InvalidRequest("prev_index beyond the log"), e.NoQuorum("no leader answered"), e.Stopped("bye")]
)
@bounded(10)
async def test_raft_errors_arrive_as_the_same_type(members, error):
    def refuse(message):
        raise error

    server = await members.started(1, Recorder(refuse))
    client = await members.started(2)
    with pytest.raises(type(error)) as raised:
        await client.send(server.address, m.ReadIndex())
    assert type(raised.value) is type(error)
    assert str(error) in str(raised.value)


@bounded(10)
async def test_handler_bug_is_a_raft_error_and_the_connection_survives(members):
    calls = []

    def buggy(message):
        calls.append(message)
        if len(calls) == 1:
            raise ZeroDivisionError("oops")
        return m.ReadIndexReply(1)

    server = await members.started(1, Recorder(buggy))
    client = await members.started(2)
    with pytest.raises(e.RaftError):
        await client.send(server.address, m.ReadIndex())
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(1)
    assert len(server._context.connections) == 1


@bounded(10)
async def test_malformed_request_values_are_invalid_requests(members):
    server = await members.started(1)
    client = await members.started(2)
    with pytest.raises(e.InvalidRequest):
        await client.send(server.address, m.RequestVote(term=-1, candidate="x", last_log_index=0, last_log_term=0))


def test_sending_a_non_request_is_a_type_error(pki):
    transport = AMPTransport("127.0.0.11:0", acl=["member1"], reactor=reactor, **pki.files("member1"))
    with pytest.raises(TypeError):
        transport.send("127.0.0.12:1", m.RequestVoteReply(1, True))


def test_from_config_takes_the_members_settings(pki):
    from txraft.config import RaftConfig

    config = RaftConfig(listen="127.0.0.11:0", acl=("member2",), peer_names={"127.0.0.12:7002": "member2"},
                        rpc_timeout=1.5, **pki.files("member1"))
    transport = AMPTransport.from_config(config, reactor)
    assert transport.address == "127.0.0.11:0"
    assert transport.connect_timeout == 1.5
    assert transport._policy.acl == {"member2"}
    assert transport.peer_names == {"127.0.0.12:7002": "member2"}
    insecure = AMPTransport.from_config(RaftConfig(listen="127.0.0.11:0", insecure=True), reactor)
    assert insecure.insecure


def test_tls_without_certificates_is_a_configuration_error():
    from txraft.config import RaftConfig
    from txraft.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="cert"):
        AMPTransport.from_config(RaftConfig(listen="127.0.0.11:0"), reactor)


def test_from_config_uses_credentials_already_loaded(pki):
    from txraft.config import RaftConfig
    from txraft.transport.tls import TLSCredentials

    credentials = TLSCredentials.load(**pki.files("member1"))
    # The configuration names no files: nothing is read from disk.
    config = RaftConfig(listen="127.0.0.11:0", acl=("member2",))
    transport = AMPTransport.from_config(config, reactor, credentials=credentials)
    assert transport._policy.acl == {"member2"}
    assert verifyObject(ITransport, transport)


@bounded(10)
async def test_members_built_from_loaded_credentials_talk(members, pki):
    from txraft.transport.tls import TLSCredentials

    server = await members.started(1, credentials=TLSCredentials.load(**pki.files("member1")), cert=None)
    client = await members.started(2)
    assert await client.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
