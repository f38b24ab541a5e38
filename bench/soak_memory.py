"""
Memory soak: does a member's resident memory stay flat as the log grows?

Starts the same 3-process txraft cluster as ``bench/compare.py`` (disk log,
``fsync always``, mutual TLS), writes ``--writes`` 100-byte values over
10,000 keys from 256 closed-loop callers in the leader's process, and prints
every member's resident memory (RSS) after each chunk of writes.  Snapshots
(every ``snapshot_threshold`` entries, 10,000 by default) compact the log, so
memory should level off.  The issue's goal: at most 100 MB per member after
1,000,000 writes.  The last line is JSON.

Run::

    python bench/soak_memory.py                      # 1,000,000 writes
    python bench/soak_memory.py --writes 200000      # a shorter soak
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import start_cluster  # noqa: E402  (a sibling script)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=1_000_000)
    parser.add_argument("--callers", type=int, default=256)
    parser.add_argument("--gc-tuned", action="store_true",
                        help="members tune their garbage collector as twistd raft does")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="seconds of load between samples")
    args = parser.parse_args()
    args.value_bytes, args.heartbeat, args.election_timeout, args.workdir = 100, 0.15, 0.6, None
    samples = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="txraft-soak-") as directory:
        log = open(os.path.join(directory, "members.log"), "w")
        children, leader = start_cluster("txraft", args, directory, log)
        try:
            before = [c.ask({"cmd": "status"})["rss_mb"] for c in children]
            print(f"before: RSS {before} MB (load {os.getloadavg()[0]:.2f})", flush=True)
            written = failures = elections = 0
            while written < args.writes:
                row = leader.ask({"cmd": "load", "callers": args.callers, "seconds": args.chunk_seconds})
                written += row["ok"]
                failures += sum(row["failures"].values())
                elections += row["elections"]
                rss = [c.ask({"cmd": "status"})["rss_mb"] for c in children]
                samples.append({"writes": written, "rss_mb": rss, "appends_per_s": row["appends_per_s"]})
                print(f"{written:9,} writes: RSS {rss} MB, {row['appends_per_s']:,.0f}/s, "
                      f"failures {failures}, elections {elections} (load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            for child in children:
                child.close()
            log.close()
    peak = max(max(s["rss_mb"]) for s in samples)
    summary = {"bench": "soak_memory", "writes": written, "failures": failures, "elections": elections,
               "rss_mb_before": before, "rss_mb_end": samples[-1]["rss_mb"], "rss_mb_peak": peak,
               "minutes": round((time.monotonic() - started) / 60, 1), "samples": samples}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
