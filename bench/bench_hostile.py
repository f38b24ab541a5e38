"""
Measure what hostile input from an admitted peer costs a member (issue 9,
finding 4): the memory a member protocol holds for one never-finished AMP box
of 5,120 keys of 60 KiB, the fragments parked on a few connections, and the
peak memory of decoding 8 MiB of msgpack
empty arrays sent as AppendToLog entries, and of as many of the smallest
well-formed entries (what any limit must still let through).

    python bench/bench_hostile.py [--keys 5120]

Run it with ``PYTHONPATH`` set to a checkout to measure that version (it uses
only names older releases have too).  Memory is Python's own allocations
(``tracemalloc``), measured in this process; no socket is involved.
"""

import argparse
import os
import struct
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from txraft import codec  # noqa: E402
from txraft.transport import commands  # noqa: E402
from txraft.transport.amp import MemberContext, MemberProtocol  # noqa: E402

MiB = 1 << 20


def framed(data):
    return struct.pack(">H", len(data)) + data


def huge_box(keys):
    """Feed one box of ``keys`` keys of 60 KiB, never finished; :returns: (peak MiB, keys read, closed)."""
    protocol = MemberProtocol(MemberContext(None, 64 * MiB), "server")
    transport = StringTransport()
    protocol.makeConnection(transport)
    value = framed(b"x" * (60 * 1024))
    tracemalloc.start()
    sent = 0
    for i in range(keys):
        protocol.dataReceived(framed(b"k%d" % i) + value)
        sent += 1
        if transport.disconnecting:
            break
    held = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return held / MiB, sent, transport.disconnecting


def parked_fragments(connections):
    """Park values of about 1 MiB in fragments on ``connections`` connections until refused; :returns: MiB held."""
    context = MemberContext(None, 64 * MiB)
    chunk = b"x" * (60 * 1024)
    protocols = []
    for _ in range(connections):
        protocol = MemberProtocol(context, "server")
        protocol.makeConnection(StringTransport())
        protocols.append(protocol)
        try:
            for blob in range(1 << 20):
                for piece in range(17):
                    protocol._fragment(blob=blob, data=chunk, offset=piece * len(chunk))
        except Exception:
            pass  # refused: this connection may hold no more
    return sum(p._fragments.total for p in protocols) / MiB


def minimal_entries(size):
    """The smallest well-formed entries (8 bytes each), as many as fit in ``size`` bytes."""
    return msgpack.packb([[1, 1, i % 100 + 1, 0, b"", None] for i in range(size // 8 - 1)], use_bin_type=True)


def as_entries(raw):
    """Decode ``raw`` as AppendToLog entries; :returns: (MiB, peak MiB, seconds, outcome)."""
    argument = dict(commands.AppendToLog.arguments)[b"entries"]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        codec.from_fields(commands.AppendToLog.message_type, {
            "term": 1, "leader": "x", "prev_index": 0, "prev_term": 0, "leader_commit": 0,
            "entries": argument.decode(raw)})
        outcome = "accepted"
    except ValueError as error:
        outcome = f"refused ({str(error)[:60]})"
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return len(raw) / MiB, peak / MiB, elapsed, outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5120)
    parser.add_argument("--entries-mib", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    options = parser.parse_args()
    held, sent, closed = huge_box(options.keys)
    print(f"box of {options.keys} keys x 60 KiB: read {sent} keys, held {held:.1f} MiB, "
          f"connection {'closed' if closed else 'left open'}")
    print(f"fragments parked on {options.connections} connections until refused: "
          f"{parked_fragments(options.connections):.0f} MiB held")
    size = options.entries_mib * MiB
    for what, raw in [("msgpack empty arrays", msgpack.packb([[]] * (size - 5))),
                      ("the smallest well-formed entries", minimal_entries(size)),
                      ("the smallest well-formed entries, 65,536 of them", minimal_entries(65537 * 8))]:
        mib, peak, elapsed, outcome = as_entries(raw)
        print(f"{mib:.1f} MiB of {what} as entries: peak {peak:.1f} MiB ({peak / mib:.1f}x), "
              f"{elapsed:.2f} s, {outcome}")


if __name__ == "__main__":
    main()
