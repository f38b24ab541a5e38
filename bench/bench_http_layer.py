"""
The member's HTTP layer alone, per request: ``PUT``s fed to the channel of a
:class:`txraft.service.ClientCertificateSite` serving
:func:`txraft.http.create_api`, answers read from an in-memory transport, the
member stood in for by a stub whose ``append`` is resolved right after the
request is read.  No sockets, no TLS, no Raft: what twisted.web and the API
cost for each request, without the noise of a shared machine's scheduler.

    python bench/bench_http_layer.py [--requests 20000] [--headers aiohttp|minimal]

Prints the Python function calls per request (cProfile; exact, the figure
to compare between versions), the CPU microseconds per request (the median
of several rounds; the machine's load moves it), the writes per response
that reach the transport, and a final JSON line.  ``--headers aiohttp``
sends the six headers the aiohttp client of ``bench/http_load.py`` sends;
``minimal`` only ``Host`` and ``Content-Length``.
"""

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txraft.kv import WriteResult  # noqa: E402
from txraft.testing.http import InMemoryAPI  # noqa: E402

HEADERS = {
    "aiohttp": (b"Host: 127.0.0.21:44321\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
                b"User-Agent: Python/3.11 aiohttp/3.9.5\r\nContent-Length: 100\r\n"
                b"Content-Type: application/octet-stream\r\n"),
    "minimal": b"Host: 127.0.0.21:44321\r\nContent-Length: 100\r\n",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--headers", choices=sorted(HEADERS), default="aiohttp")
    args = parser.parse_args()

    api = InMemoryAPI()
    member, channel, transport = api.member, api.channel, api.transport
    body = b"v" * 100
    requests = [b"PUT /v1/kv/key%d HTTP/1.1\r\n%s\r\n%s" % (i, HEADERS[args.headers], body) for i in range(1000)]
    applied = WriteResult(index=5)

    def one(i):
        channel.dataReceived(requests[i % 1000])
        member.appends.pop()[1].callback(applied)

    for i in range(500):
        one(i)
    transport.clear()
    transport.writes = 0
    one(0)
    writes = transport.writes
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value()[:200]

    rounds = []
    per_round = max(1, args.requests // 5)
    for _ in range(5):
        transport.clear()
        started = time.process_time()
        for i in range(per_round):
            one(i)
        rounds.append((time.process_time() - started) / per_round * 1e6)
    transport.clear()

    profiled = 2000
    profile = cProfile.Profile()
    profile.enable()
    for i in range(profiled):
        one(i)
    profile.disable()
    calls = sum(row[1] for row in pstats.Stats(profile).stats.values()) / profiled

    print(f"HTTP layer per PUT ({args.headers} headers, no TLS, member stubbed): {calls:.0f} Python calls, "
          f"{statistics.median(rounds):.1f} us CPU (median of 5 rounds, {min(rounds):.1f}-{max(rounds):.1f}), "
          f"{writes} writes to the transport per response")
    print(json.dumps({"bench": "http_layer", "headers": args.headers, "calls_per_put": round(calls, 1),
                      "cpu_us_per_put": round(statistics.median(rounds), 1), "writes_per_response": writes}))


if __name__ == "__main__":
    main()
