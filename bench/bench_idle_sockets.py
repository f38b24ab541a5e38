"""
Measure what idle sockets cost a member (issue 9, finding 2): open many plain
TCP connections to a member's TLS port from loopback, never starting TLS,
and count the connections the member holds at once and some seconds later.

    python bench/bench_idle_sockets.py [--sockets 1010] [--wait 6]

Run it with ``PYTHONPATH`` set to a checkout (from a copy of this file outside
the checkout) to measure that version; it uses only names older releases
have too.  Needs a descriptor limit above twice ``--sockets`` (both ends are
in this process).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, endpoints, protocol, task  # noqa: E402

from txraft import certs  # noqa: E402
from txraft.transport.amp import AMPTransport  # noqa: E402


class Idle(protocol.Protocol):
    closed = False

    def connectionLost(self, reason):
        self.closed = True


async def run(reactor, options):
    directory = tempfile.mkdtemp(prefix="bench-idle-")
    paths = certs.write_cluster_certs(directory, ["member1"])
    cert, key = paths["member1"]
    member = AMPTransport("127.0.0.11:0", cert=cert, key=key, ca=paths["ca"][0], acl=["member1"], reactor=reactor)
    await member.start(None)
    host, port = member.address.rsplit(":", 1)
    clients = []
    started = time.perf_counter()
    for i in range(options.sockets):
        client = Idle()
        source = f"127.0.0.{50 + i % 100}"
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port), bindAddress=(source, 0))
        try:
            await endpoints.connectProtocol(endpoint, client)
        except Exception:
            client.closed = True
        clients.append(client)
    await task.deferLater(reactor, 0.5, lambda: None)
    held = len(member._context.connections)
    print(f"{options.sockets} idle sockets from 100 addresses opened in {time.perf_counter() - started:.1f} s: "
          f"the member holds {held}, {sum(c.closed for c in clients)} were closed")
    await task.deferLater(reactor, options.wait, lambda: None)
    held = len(member._context.connections)
    print(f"after {options.wait} s: the member holds {held}, {sum(c.closed for c in clients)} were closed")
    for client in clients:
        if not client.closed and client.transport is not None:
            client.transport.abortConnection()
    await member.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1010)
    parser.add_argument("--wait", type=float, default=6.0)
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
