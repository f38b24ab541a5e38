"""
How fast txraft.testing.linearizability decides histories.

Linearizable-by-construction histories (synthetic_history) of growing size,
with 5% of operations ending with an unknown outcome, plus the same histories
with one planted stale read (which the search must prove impossible: its
worst case).  Prints one line per size and a final JSON line.

    python bench/bench_linearizability.py [--repeat 3]
"""

import argparse
import json
import statistics

from txraft.testing.linearizability import OK, Operation, synthetic_history, timed_check

SIZES = [(2_000, 4), (10_000, 20), (50_000, 100)]


def planted(history):
    """The history with a read, after everything, of a value overwritten since."""
    end = max(o.complete or o.invoke for o in history) + 10
    old = [o.value for o in history if o.key == "k0" and o.kind == "write" and o.status == OK][-1]
    return history + [
        Operation(len(history), 99, "write", "k0", "fresh", None, OK, end, end + 1),
        Operation(len(history) + 1, 98, "read", "k0", None, old, OK, end + 2, end + 3),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = []
    for ops, keys in SIZES:
        for kind in ("linearizable", "planted stale read"):
            times = []
            for seed in range(args.repeat):
                history, _ = synthetic_history(seed, processes=16, keys=keys, ops=ops)
                if kind != "linearizable":
                    history = planted(history)
                result, seconds = timed_check(history, max_configurations=2_000_000)
                assert result.ok == (kind == "linearizable"), result.explain()
                times.append(seconds)
            median = statistics.median(times)
            print(f"{ops:>7,} ops on {keys:>3} keys, {kind:<19}: median {median:6.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}), {ops / median:,.0f} ops/s")
            results.append({"ops": ops, "keys": keys, "kind": kind, "median_s": round(median, 3),
                            "min_s": round(min(times), 3), "max_s": round(max(times), 3)})
    print(json.dumps({"bench": "linearizability", "results": results}))


if __name__ == "__main__":
    main()
