"""
Deterministic testing for txraft and for applications built on it.

- :class:`SimulatedCluster`: a whole cluster on a fake clock with a faulty
  in-memory network and crash-prone in-memory disks, all driven by one seed.
- :class:`SafetyChecker`: checks Raft's safety properties after every step.
- :func:`run_schedule`: one random fault schedule; ``python -m txraft.testing
  --seeds N --members 3`` runs many and prints the seed and trace of any
  failure.
- :class:`txraft.testing.processes.LocalCluster` (import it from there; it is
  not loaded with this package): real ``twistd raft`` member processes on
  loopback, for end-to-end tests.
"""

from txraft.testing.checks import SafetyChecker, SafetyViolation
from txraft.testing.cluster import RecordingClient, SimulatedCluster
from txraft.testing.schedule import ScheduleResult, run_schedule

__all__ = ["SimulatedCluster", "RecordingClient", "SafetyChecker", "SafetyViolation",
           "run_schedule", "ScheduleResult"]
