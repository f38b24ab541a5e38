"""
A replicated counter embedded in a Twisted application.

``Counter`` is a :class:`txraft.RaftClient`: its state changes only in
``apply()``, which every member runs for every committed command, in the same
order.  Each member is a :class:`txraft.service.RaftService` (member, disk
log, mutual-TLS links) under one ``MultiService``, the way it would sit in a
``.tac`` file or beside a web site.

Run it::

    python docs/examples/counter.py

It makes certificates and logs in a temporary directory, starts three members
on 127.0.0.51-53, adds 1 ten times through different members, checks that
every member counted 10, stops everything, removes the directory and exits 0.
"""

import shutil
import socket
import tempfile

from twisted.application.service import MultiService
from twisted.internet import defer, task

from txraft import RaftClient, RaftConfig
from txraft.certs import write_cluster_certs
from txraft.service import RaftService


class Counter(RaftClient):
    """A number everyone agrees on."""

    def __init__(self):
        self.total = 0

    def apply(self, command, index):
        # Runs on every member, for every committed command, in log order.
        self.total += int(command)
        return self.total

    def save_snapshot(self, fileobj):
        fileobj.write(str(self.total).encode())

    def restore_snapshot(self, index, fileobj):
        self.total = int(fileobj.read() or b"0")


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def wait_until(reactor, predicate, timeout, what):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        await task.deferLater(reactor, 0.02, lambda: None)


async def main(reactor):
    directory = tempfile.mkdtemp(prefix="txraft-counter-")
    names = ["member1", "member2", "member3"]
    paths = write_cluster_certs(directory + "/certs", names)
    hosts = ["127.0.0.51", "127.0.0.52", "127.0.0.53"]
    ids = [f"{host}:{free_port(host)}" for host in hosts]

    application = MultiService()
    for name, member_id in zip(names, ids):
        cert, key = paths[name]
        config = RaftConfig(
            listen=member_id,
            log_dir=f"{directory}/{name}",
            cert=cert, key=key, ca=paths["ca"][0],
            acl=tuple(names),                       # the members may talk to each other
            peer_names=dict(zip(ids, names)),       # and each must carry its own name
        )
        RaftService(config, Counter(), members=ids).setServiceParent(application)
    services = list(application)

    application.startService()
    try:
        await defer.gatherResults([s.ready for s in services])
        await wait_until(reactor, lambda: any(s.raft.status().role == "leader" for s in services), 20, "a leader")
        for i in range(10):
            # Any member accepts a command: followers forward it to the leader.
            total = await services[i % 3].raft.append(b"1")
            print(f"member{i % 3 + 1}: counter is now {total}")
        await wait_until(reactor, lambda: all(s.app.total == 10 for s in services), 10, "every member at 10")
        print("every member counted 10:", [s.app.total for s in services])
    finally:
        await application.stopService()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
