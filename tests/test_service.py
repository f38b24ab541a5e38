"""
RaftService in-process: it starts its member with the service, stops it
cleanly (the log flushed and closed, so a new service on the same directory
recovers it), serves HTTPS only to client certificates named in its client
ACL, and leaves the reactor clean.
"""

import socket

import pytest
import pytest_twisted
from twisted.application.service import IService, MultiService
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from txraft import certs
from txraft.http_client import Client, ClientError
from txraft.config import RaftConfig
from txraft.errors import StorageError
from txraft.service import ClientCertificateSite, RaftService
from txraft.transport.memory import MemoryNetwork
from txraft.transport.tls import TLSCredentials, server_endpoint
from txraft.testing import RecordingClient

NAMES = ["member1", "member2", "member3"]


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("service-pki"))
    return certs.write_cluster_certs(directory, NAMES + ["outsider"], client="admin")


class Hello(Resource):
    """A stand-in API: GET / answers b"hello"."""

    isLeaf = True

    def render_GET(self, request):
        return b"hello from " + request.getHost().host.encode()


class Services:
    """Starts services and stops every one of them at the end of the test."""

    def __init__(self):
        self.started = []

    def start(self, svc):
        svc.startService()
        self.started.append(svc)
        return svc.ready

    async def stop_all(self):
        running = [s for s in self.started if s.running]
        await defer.gatherResults([defer.maybeDeferred(s.stopService) for s in running]).addTimeout(10, reactor)


@pytest_twisted.async_yield_fixture
async def services():
    made = Services()
    yield made
    await made.stop_all()
    await task.deferLater(reactor, 0.05, lambda: None)


async def until(predicate, timeout=10.0, what="condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await task.deferLater(reactor, 0.02, lambda: None)


def test_a_raft_service_is_an_iservice(tmp_path):
    svc = RaftService(RaftConfig(listen="127.0.0.31:7001", insecure=True, log_dir=str(tmp_path)), RecordingClient())
    assert verifyObject(IService, svc)
    assert isinstance(svc, MultiService)
    with pytest.raises(TypeError):
        RaftService(RaftConfig(insecure=True), RecordingClient(), members="127.0.0.1:7002")


@pytest_twisted.ensureDeferred
async def test_start_and_stop_flush_the_log_so_a_new_service_recovers_it(tmp_path, services):
    async def body():
        listen = f"127.0.0.31:{free_port('127.0.0.31')}"
        config = RaftConfig(listen=listen, insecure=True, log_dir=str(tmp_path / "log"), heartbeat=0.05)
        svc = RaftService(config, RecordingClient())
        await services.start(svc)
        assert svc.running and svc.raft.status().id == listen
        await until(lambda: svc.raft.status().role == "leader", what="a one-member leader")
        indexes = [await svc.raft.append(b"entry %d" % i) for i in range(20)]
        await svc.stopService()
        assert not svc.running and svc.raft.status().role == "stopped"

        again = RaftService(config, RecordingClient())
        await services.start(again)
        await until(lambda: indexes[-1] in again.app.applied, what="the log replayed")
        assert [again.app.applied[i] for i in indexes] == [b"entry %d" % i for i in range(20)]

    await defer.ensureDeferred(body()).addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_a_member_that_cannot_start_fails_ready_without_exiting(tmp_path, services):
    async def body():
        host = "127.0.0.31"
        logdir = str(tmp_path / "log")
        first = RaftService(RaftConfig(listen=f"{host}:{free_port(host)}", insecure=True, log_dir=logdir),
                            RecordingClient())
        await services.start(first)
        second = RaftService(RaftConfig(listen=f"{host}:{free_port(host)}", insecure=True, log_dir=logdir),
                             RecordingClient())
        with pytest.raises(StorageError, match="in use"):
            await services.start(second)
        await second.stopService()

    await defer.ensureDeferred(body()).addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_stopping_while_starting_waits_for_the_start(tmp_path, services):
    async def body():
        host = "127.0.0.31"
        svc = RaftService(RaftConfig(listen=f"{host}:{free_port(host)}", insecure=True,
                                     log_dir=str(tmp_path / "log")), RecordingClient())
        svc.startService()
        await svc.stopService()
        assert svc.raft.status().role == "stopped"

    await defer.ensureDeferred(body()).addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_three_tls_services_replicate_and_serve_https_to_acl_clients_only(tmp_path, pki, services):
    async def body():
        hosts = [f"127.0.0.{31 + i}" for i in range(3)]
        listens = [f"{h}:{free_port(h)}" for h in hosts]
        peers = dict(zip(listens, NAMES))
        made = []
        for listen, name, host in zip(listens, NAMES, hosts):
            cert, key = pki[name]
            config = RaftConfig(listen=listen, heartbeat=0.05, log_dir=str(tmp_path / name), cert=cert, key=key,
                                ca=pki["ca"][0], acl=tuple(NAMES), peer_names=peers)
            svc = RaftService(config, RecordingClient(), members=listens, http=(host, 0), client_acl=["admin"],
                              api=lambda s: Hello())
            made.append(svc)
        await defer.gatherResults([services.start(s) for s in made])
        await until(lambda: sum(s.raft.status().role == "leader" for s in made) == 1, what="a leader")
        index = await made[0].raft.append(b"through member1")
        await until(lambda: all(index in s.app.applied for s in made), what="replicated")
        # Each member sends through the counting transport it was built with.
        (leader,) = [s for s in made if s.raft.status().role == "leader"]
        for svc in made:
            if svc is not leader:
                assert leader.transport.entries.get(svc.raft.id, 0) >= 1
        assert all(s.metrics is None for s in made)  # a custom api: no metrics made

        ca = pki["ca"][0]
        for svc in made:
            host, port = svc.http_address
            good = Client(f"https://{host}:{port}", *pki["admin"], ca, timeout=5)
            reply = await good._request("GET", f"https://{host}:{port}/")
            assert reply == (200, b"hello from " + host.encode())
        host, port = made[0].http_address
        outsider = Client(f"https://{host}:{port}", *pki["outsider"], ca, timeout=5)
        with pytest.raises(ClientError, match="closed the connection"):
            await outsider._request("GET", f"https://{host}:{port}/")
        plain = Client(f"http://{host}:{port}", insecure=True, timeout=5)
        with pytest.raises(ClientError):
            await plain._request("GET", f"http://{host}:{port}/")

    await defer.ensureDeferred(body()).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_the_default_api_is_the_key_value_store(tmp_path, services):
    pytest.importorskip("txraft.http")
    from txraft.kv import KeyValueStore

    async def body():
        host = "127.0.0.31"
        svc = RaftService(RaftConfig(listen=f"{host}:{free_port(host)}", insecure=True, heartbeat=0.05,
                                     log_dir=str(tmp_path / "log")), KeyValueStore(), http=(host, 0))
        await services.start(svc)
        client = Client("http://%s:%d" % svc.http_address, insecure=True, timeout=5)
        await until(lambda: svc.raft.status().role == "leader", what="a leader")
        await client.put("colour", "blue")
        assert await client.get("colour") == b"blue"
        status = await client.status()
        assert status["id"] == svc.raft.id and status["role"] == "leader"

    await defer.ensureDeferred(body()).addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_an_http_connection_has_a_closed_deferred_that_fires_when_it_is_lost():
    async def body():
        site = ClientCertificateSite(Hello(), reactor=reactor)
        port = await server_endpoint(reactor, "127.0.0.31", 0).listen(site)
        try:
            client = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.31", port.getHost().port).connect(
                Factory.forProtocol(Protocol))
            await until(lambda: site.connections, what="the connection accepted")
            (channel,) = site.connections
            assert not channel.closed.called
            client.transport.loseConnection()  # the client goes away; the server did not close it
            await channel.closed
            assert not site.connections
        finally:
            await port.stopListening()

    await defer.ensureDeferred(body()).addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_credentials_are_loaded_once_at_start_and_serve_the_https_api(tmp_path, pki, services, monkeypatch):
    read = []
    load = TLSCredentials.load.__func__

    def counted_load(cls, cert, key, ca):
        read.append(cert)
        return load(cls, cert, key, ca)

    monkeypatch.setattr(TLSCredentials, "load", classmethod(counted_load))

    async def body():
        host = "127.0.0.31"
        cert, key = pki["member1"]
        ca = pki["ca"][0]

        def service(name, **kwargs):
            config = RaftConfig(listen=f"{host}:{free_port(host)}", log_dir=str(tmp_path / name), cert=cert,
                                key=key, ca=ca, acl=("member1",))
            return RaftService(config, RecordingClient(), http=(host, 0), client_acl=["admin"],
                               api=lambda s: Hello(), transport=MemoryNetwork(reactor).transport(config.listen),
                               **kwargs)

        loaded = service("loaded")
        await services.start(loaded)
        assert read == [cert] and loaded.credentials is not None
        given = service("given", credentials=loaded.credentials)
        await services.start(given)
        assert read == [cert]  # nothing read again
        for svc in (loaded, given):
            url = "https://%s:%d/" % svc.http_address
            assert await Client(url, *pki["admin"], ca, timeout=5)._request("GET", url) == (
                200, b"hello from " + host.encode())

    await defer.ensureDeferred(body()).addTimeout(30, reactor)


async def start_logging(services, svc):
    """Start ``svc``; :returns: every log event emitted meanwhile."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        await defer.ensureDeferred(services.start(svc)).addTimeout(10, reactor)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


@pytest_twisted.ensureDeferred
async def test_members_without_a_certificate_name_are_warned_about_at_start(tmp_path, pki, services):
    """Finding 7: peers without NAME@ gave no sign that their claimed identities go unchecked."""
    host = "127.0.0.31"
    cert, key = pki["member1"]
    listen = f"{host}:{free_port(host)}"
    unnamed, named = "127.0.0.32:7001", "127.0.0.33:7001"
    config = RaftConfig(listen=listen, log_dir=str(tmp_path / "m"), cert=cert, key=key, ca=pki["ca"][0],
                        acl=tuple(NAMES), peer_names={named: "member3"})
    svc = RaftService(config, RecordingClient(), members=[listen, unnamed, named],
                      transport=MemoryNetwork(reactor).transport(listen), warnings=["a configuration warning"])
    events = await start_logging(services, svc)
    warnings = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
    assert [e["members"] for e in warnings if "members" in e] == [[unnamed]]
    assert [e["warning"] for e in warnings if "warning" in e] == ["a configuration warning"]


@pytest_twisted.ensureDeferred
async def test_a_descriptor_limit_below_what_the_ports_may_hold_is_warned_about(tmp_path, services, monkeypatch):
    import resource

    from txraft.kv import KeyValueStore

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 256))
    host = "127.0.0.31"
    listen = f"{host}:{free_port(host)}"
    config = RaftConfig(listen=listen, log_dir=str(tmp_path / "m"), insecure=True)
    svc = RaftService(config, KeyValueStore(), http=(host, 0))
    events = await start_logging(services, svc)
    [warning] = [e for e in events if "descriptor limit" in e.get("log_format", "")]
    assert warning["soft"] == 256 and warning["needed"] == 128 + 512 + 64
def test_tune_garbage_collector_freezes_start_up_objects_and_raises_the_thresholds():
    import gc

    from txraft.service import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
