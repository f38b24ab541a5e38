"""Mutual TLS and the certificate-name ACL, claimed identities, source addresses, insecure mode."""

import pytest

from txraft import errors as e
from txraft import messages as m

from .conftest import MEMBERS, Recorder, bounded


def vote(candidate):
    return m.RequestVote(term=2, candidate=candidate, last_log_index=0, last_log_term=0)


@bounded(10)
async def test_a_peer_with_a_certificate_from_another_ca_is_refused(members, pki, logged):
    handler = Recorder()
    server = await members.started(1, handler)
    rogue_cert, rogue_key = pki.rogue
    rogue = await members.started(2, cert=rogue_cert, key=rogue_key, ca=pki.ca)
    with pytest.raises(e.TransportError):
        await rogue.send(server.address, m.ReadIndex())
    assert handler.received == []
    assert any("server: connection with 127.0.0.12" in line and "before the peer was admitted" in line for line in logged)


@bounded(10)
async def test_a_valid_certificate_not_in_the_acl_is_refused_while_members_keep_working(members, logged):
    handler = Recorder()
    server = await members.started(1, handler)
    member = await members.started(2)
    outsider = await members.started(3, name="outsider")
    assert await member.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
    with pytest.raises(e.TransportError):
        await outsider.send(server.address, m.ReadIndex())
    assert await member.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
    assert handler.received == [m.ReadIndex(), m.ReadIndex()]
    refusals = [line for line in logged if "refused peer 127.0.0.13" in line]
    assert refusals and "outsider" in refusals[0] and "no certificate name is in the ACL" in refusals[0]
    # The refused side logs it too (under TLS 1.3 it only sees the connection close).
    assert any(f"connection to member {server.address}" in line and "may refuse" in line for line in logged)


@bounded(10)
async def test_a_peer_presenting_the_members_own_key_is_admitted(members, pki):
    handler = Recorder()
    server = await members.started(1, handler, acl=["member2"])
    twin_cert, twin_key = pki.twin
    twin = await members.started(2, cert=twin_cert, key=twin_key, ca=pki.ca, acl=["member1"])
    assert await twin.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)


@bounded(10)
async def test_a_client_refuses_a_server_not_in_its_acl(members, logged):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2, acl=["member3"])
    with pytest.raises(e.TransportError):
        await client.send(server.address, m.ReadIndex())
    assert handler.received == []
    assert any("client: refused peer 127.0.0.11" in line for line in logged)


@bounded(10)
async def test_a_client_refuses_a_server_without_the_name_the_member_list_gives(members, logged):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2, peer_names={server.address: "member3"})
    with pytest.raises(e.TransportError):
        await client.send(server.address, m.ReadIndex())
    assert handler.received == []
    assert any("expected the certificate of 'member3'" in line for line in logged)


@bounded(10)
async def test_a_peer_cannot_claim_to_be_another_named_member(members, logged):
    handler = Recorder()
    impersonated = "127.0.0.13:7003"
    server = await members.started(1, handler, peer_names={impersonated: "member3", "127.0.0.12:7002": "member2"})
    client = await members.started(2)
    with pytest.raises(e.Unauthorized):
        await client.send(server.address, vote(impersonated))
    with pytest.raises(e.Unauthorized):
        await client.send(server.address, m.AppendEntries(2, impersonated, 0, 0, (), 0))
    with pytest.raises(e.Unauthorized):
        await client.send(server.address, m.InstallSnapshot(2, impersonated, 1, 1, 0, b"", True))
    assert handler.received == []
    # Its own name, and members the list gives no name for, are accepted.
    assert (await client.send(server.address, vote("127.0.0.12:7002"))).granted
    assert (await client.send(server.address, vote("127.0.0.14:7004"))).granted
    assert any("claims to be member 127.0.0.13:7003" in line for line in logged)


@bounded(10)
async def test_outgoing_connections_come_from_the_members_listen_host(members):
    server = await members.started(1)
    client = await members.started(2)
    await client.send(server.address, m.ReadIndex())
    (accepted,) = [p for p in server._context.connections if p.side == "server"]
    assert accepted.transport.getPeer().host == "127.0.0.12"
    (dialled,) = [p for p in client._context.connections if p.side == "client"]
    assert dialled.transport.getHost().host == "127.0.0.12"


@bounded(10)
async def test_one_connection_per_peer_is_reused(members):
    server = await members.started(1)
    client = await members.started(2)
    for _ in range(5):
        await client.send(server.address, m.ReadIndex())
    assert len([p for p in server._context.connections if p.side == "server"]) == 1


@bounded(10)
async def test_insecure_mode_uses_plain_tcp_and_warns(members, logged):
    handler = Recorder()
    server = await members.started(1, handler, insecure=True)
    client = await members.started(2, insecure=True)
    assert await client.send(server.address, vote(client.address)) == m.RequestVoteReply(2, True)
    assert any("INSECURE" in line and server.address in line for line in logged)


@bounded(10)
async def test_an_insecure_peer_cannot_talk_to_a_tls_member(members):
    handler = Recorder()
    server = await members.started(1, handler)
    client = await members.started(2, insecure=True)
    with pytest.raises(e.TransportError):
        await client.send(server.address, m.ReadIndex())
    assert handler.received == []


@bounded(15)
async def test_one_name_check_refuses_a_wrong_name_on_the_member_port_and_the_https_api(
        members, pki, logged, monkeypatch):
    from twisted.internet import reactor
    from twisted.web.resource import Resource

    from txraft.http_client import Client, ClientError
    from txraft.service import ClientCertificateSite
    from txraft.transport.tls import AccessPolicy, TLSCredentials, server_endpoint

    decided = []
    admit = AccessPolicy.admit

    def spied_admit(policy, cert, expected_name=None):
        decision = admit(policy, cert, expected_name)
        decided.append((sorted(policy.acl), sorted(decision.names), decision.allowed))
        return decision

    monkeypatch.setattr(AccessPolicy, "admit", spied_admit)

    class Hello(Resource):
        isLeaf = True
        rendered = 0

        def render_GET(self, request):
            Hello.rendered += 1
            return b"hello"

    handler = Recorder()
    server = await members.started(1, handler)
    site = ClientCertificateSite(Hello(), client_acl=["member2"], reactor=reactor)
    credentials = TLSCredentials.load(**pki.files("member1"))
    port = await server_endpoint(reactor, "127.0.0.11", 0, credentials).listen(site)
    url = f"https://127.0.0.11:{port.getHost().port}/"
    try:
        outsider = await members.started(3, name="outsider")
        with pytest.raises(e.TransportError):
            await outsider.send(server.address, m.ReadIndex())
        with pytest.raises(ClientError, match="closed the connection"):
            await Client(url, **pki.files("outsider"), timeout=5)._request("GET", url)
        assert handler.received == [] and Hello.rendered == 0
        # A listed name gets through on the HTTPS side.
        assert await Client(url, **pki.files("member2"), timeout=5)._request("GET", url) == (200, b"hello")
    finally:
        await port.stopListening()
        await site.close_connections()
    refused = [d for d in decided if not d[2]]
    assert (sorted(MEMBERS), ["outsider"], False) in refused  # the member port
    assert (["member2"], ["outsider"], False) in refused  # the HTTPS API
    assert any(line.startswith("server: refused peer 127.0.0.13") and "['outsider']" in line
               and "no certificate name is in the ACL" in line for line in logged)
    assert any(line.startswith("HTTP API: refused client ") and "['outsider']" in line
               and "no name is in --client-acl" in line for line in logged)


@bounded(15)
async def test_the_acl_follows_the_membership_configuration(members):
    """A name the configuration records is admitted, and binds that member's id, from the next connection on."""
    from twisted.internet import reactor, task

    from txraft.core.membership import Configuration, Member

    handler = Recorder()
    server = await members.started(1, handler)
    newcomer = await members.started(3, name="outsider")
    with pytest.raises(e.TransportError):
        await newcomer.send(server.address, m.ReadIndex())
    server.follow_configuration(Configuration.of([Member(server.address, "member1"),
                                                  Member(newcomer.address, "outsider", voter=False),
                                                  Member("127.0.0.12:7002", "member2")]))
    for _ in range(100):  # the refused link reconnects on its own
        try:
            assert await newcomer.send(server.address, m.ReadIndex()) == m.ReadIndexReply(42)
            break
        except e.TransportError:
            await task.deferLater(reactor, 0.05, lambda: None)
    else:
        raise AssertionError("the newcomer was never admitted")
    # Its recorded name binds its id: another admitted member cannot claim it.
    member = await members.started(2)
    with pytest.raises(e.Unauthorized):
        await member.send(server.address, vote(newcomer.address))
