"""
``python -m txraft.testing``: run random fault schedules against the Raft core.

Exit status 0 when every schedule kept Raft's safety properties and
converged; 1 otherwise, after printing the failing seed and its event trace
(re-run it with ``--first-seed SEED --seeds 1``).
"""

import argparse
import sys
import time

from txraft.testing.schedule import run_schedule


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m txraft.testing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="number of schedules to run (default 100)")
    parser.add_argument("--members", type=int, choices=(1, 2, 3, 4, 5, 6, 7), default=3,
                        help="cluster size (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first schedule (default 0)")
    parser.add_argument("--steps", type=int, default=150, help="random events per schedule (default 150)")
    parser.add_argument("--trace", type=int, default=60, help="trace lines to print for a failure")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    started = time.monotonic()
    failures = []
    totals = dict(appends=0, acknowledged=0, crashes=0, elections=0, snapshots_installed=0)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_schedule(seed, members=args.members, steps=args.steps)
        for key in totals:
            totals[key] += getattr(result, key)
        if not result.ok:
            failures.append(result)
            print(f"seed {seed}: FAILED: {result.error}")
            print("  last events:")
            for line in result.trace[-args.trace:]:
                print("   ", line)
            print(f"  reproduce: python -m txraft.testing --members {args.members} "
                  f"--first-seed {seed} --seeds 1 --steps {args.steps}")
    elapsed = time.monotonic() - started
    print(f"{args.seeds} schedules, {args.members} members: {args.seeds - len(failures)} passed, "
          f"{len(failures)} failed in {elapsed:.1f}s; appends {totals['appends']}, "
          f"acknowledged {totals['acknowledged']}, crashes {totals['crashes']}, "
          f"leaders elected {totals['elections']}, snapshot restores {totals['snapshots_installed']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
