"""
``txraft check perf``: put a running cluster under write load for a while
and judge the result against thresholds (after ``etcdctl check perf``).

``connections`` writers each keep one HTTP(S) connection to the member the
user named and write, one request after another, to a key of their own under
``txraft-check-perf/`` until ``duration`` seconds have passed; the keys are
deleted at the end.  Every write is a committed ``PUT``, so the figures are
those of the replicated write path (through the leader and a quorum's
fsync)::

    client = Client(server, cert, key, ca, persistent=True, connections=8)
    result = await run_load(client, connections=8, duration=10.0, reactor=reactor)
    failures = judge(result, Thresholds(min_throughput=100.0))
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer, task

from txraft.http_client import Client, ClientError

__all__ = ["Thresholds", "LoadResult", "check_perf", "run_load", "judge", "format_report", "progress_bar", "KEY_PREFIX",
           "MAX_CONNECTIONS", "MAX_DURATION", "MAX_VALUE_SIZE"]

#: Where the load's keys live (deleted afterwards).
KEY_PREFIX = "txraft-check-perf/"
#: Bounds on what a user may ask for.
MAX_CONNECTIONS = 1000
MAX_DURATION = 3600.0
MAX_VALUE_SIZE = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """
    What a passing run must reach.

    :ivar min_throughput: successful writes per second, at least.
    :ivar max_p99: seconds; the 99th percentile write latency, at most.
    :ivar max_error_rate: failed writes as a fraction of all writes, at most.
    """

    min_throughput: float = 100.0
    max_p99: float = 0.5
    max_error_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """
    What a load run measured.

    :ivar latencies: seconds each successful write took, sorted.
    :ivar errors: each distinct failure message and how often it occurred.
    :ivar elapsed: seconds from the first write to the last answer.
    """

    server: str
    connections: int
    duration: float
    latencies: List[float]
    errors: Dict[str, int]
    elapsed: float

    @property
    def writes(self) -> int:
        """Successful writes."""
        return len(self.latencies)

    @property
    def failed(self) -> int:
        """Failed writes."""
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful writes per second."""
        return self.writes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Failed writes as a fraction of all writes attempted."""
        total = self.writes + self.failed
        return self.failed / total if total else 0.0

    def percentile(self, p: float) -> Optional[float]:
        """:returns: the ``p``-th percentile latency (nearest rank), or ``None`` without a successful write."""
        if not self.latencies:
            return None
        rank = max(1, math.ceil(p / 100.0 * len(self.latencies)))
        return self.latencies[rank - 1]

    def as_dict(self, thresholds: Thresholds) -> Dict[str, Any]:
        """The ``--json`` object: times in seconds, ``throughput`` in writes per second."""
        failures = judge(self, thresholds)
        return {
            "server": self.server,
            "connections": self.connections,
            "duration": self.duration,
            "elapsed": self.elapsed,
            "writes": self.writes,
            "failed": self.failed,
            "throughput": self.throughput,
            "latency": {
                "p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99),
                "max": self.latencies[-1] if self.latencies else None,
                "mean": sum(self.latencies) / len(self.latencies) if self.latencies else None,
            },
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            "thresholds": dataclasses.asdict(thresholds),
            "verdict": "fail" if failures else "pass",
            "failures": failures,
        }


async def run_load(client: Any, connections: int, duration: float, reactor: Any, value_size: int = 256,
                   progress: Optional[Callable[[float, int, int], None]] = None) -> LoadResult:
    """
    Write through ``client`` from ``connections`` writers for ``duration`` seconds.

    :param client: a :class:`~txraft.http_client.Client` (persistent, so each
        writer reuses its connection).
    :param progress: called about four times a second with the fraction of
        ``duration`` done, the successful and the failed writes so far.
    :raises ValueError: for a number out of bounds.
    """
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"--connections must be between 1 and {MAX_CONNECTIONS}, got {connections}")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"--duration must be more than 0 and at most {MAX_DURATION:g} seconds, got {duration:g}")
    if not 0 <= value_size <= MAX_VALUE_SIZE:
        raise ValueError(f"--value-size must be between 0 and {MAX_VALUE_SIZE} bytes, got {value_size}")
    value = b"x" * value_size
    latencies: List[float] = []
    errors: Counter = Counter()
    started = reactor.seconds()
    stop_at = started + duration

    async def writer(number: int) -> None:
        key = f"{KEY_PREFIX}{number}"
        while reactor.seconds() < stop_at:
            sent = reactor.seconds()
            try:
                await client.put(key, value)
            except ClientError as e:
                errors[_without_url(str(e))] += 1
                if e.status is None:
                    # No answer at all: do not spin on a refused connection.
                    await task.deferLater(reactor, 0.05, lambda: None)
            else:
                latencies.append(reactor.seconds() - sent)

    ticker = None
    if progress is not None:
        def tick() -> None:
            # 100% is drawn once, when the last answer is in.
            progress(min(0.99, (reactor.seconds() - started) / duration), len(latencies), sum(errors.values()))

        ticker = task.LoopingCall(tick)
        ticker.clock = reactor
        ticker.start(0.25)
    try:
        await defer.gatherResults([defer.ensureDeferred(writer(n)) for n in range(connections)],
                                  consumeErrors=True)
    finally:
        if ticker is not None:
            ticker.stop()
    elapsed = reactor.seconds() - started
    if progress is not None:
        progress(1.0, len(latencies), sum(errors.values()))
    for number in range(connections):
        try:
            await client.delete(f"{KEY_PREFIX}{number}")
        except ClientError:
            pass  # a key left behind does no harm; the figures are what matter
    return LoadResult(server=client.server, connections=connections, duration=duration,
                      latencies=sorted(latencies), errors=dict(errors), elapsed=elapsed)


def _without_url(message: str) -> str:
    # "PUT https://host/v1/kv/txraft-check-perf/3: HTTP 503: ..." -> "HTTP 503: ...",
    # so one failure seen by every writer counts as one kind.
    head, sep, tail = message.partition(": ")
    return tail if sep and head.startswith("PUT ") else message


def judge(result: LoadResult, thresholds: Thresholds) -> List[str]:
    """:returns: one sentence per threshold the run missed; empty for a pass."""
    failures = []
    if result.throughput < thresholds.min_throughput:
        failures.append(f"throughput {result.throughput:.1f} writes/s is below the minimum "
                        f"{thresholds.min_throughput:g} writes/s")
    p99 = result.percentile(99)
    if p99 is None:
        failures.append("no write succeeded")
    elif p99 > thresholds.max_p99:
        failures.append(f"p99 latency {p99 * 1000:.1f} ms is above the maximum {thresholds.max_p99 * 1000:g} ms")
    if result.error_rate > thresholds.max_error_rate:
        failures.append(f"{result.failed} writes failed ({result.error_rate:.2%}), more than the "
                        f"{thresholds.max_error_rate:.2%} allowed")
    return failures


def format_report(result: LoadResult, thresholds: Thresholds) -> str:
    """The human-readable report, ending with ``PASS`` or ``FAIL`` and the reasons."""
    def ms(seconds: Optional[float]) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.1f} ms"

    lines = [
        f"server      {result.server}",
        f"load        {result.connections} connections for {result.duration:g} s "
        f"(measured {result.elapsed:.2f} s)",
        f"writes      {result.writes} ok, {result.failed} failed",
        f"throughput  {result.throughput:.1f} writes/s  (minimum {thresholds.min_throughput:g})",
        f"latency     p50 {ms(result.percentile(50))}, p90 {ms(result.percentile(90))}, "
        f"p99 {ms(result.percentile(99))}, max {ms(result.latencies[-1] if result.latencies else None)}  "
        f"(p99 at most {thresholds.max_p99 * 1000:g} ms)",
        f"errors      {result.failed} ({result.error_rate:.2%}; at most {thresholds.max_error_rate:.2%})",
    ]
    for message, count in sorted(result.errors.items(), key=lambda item: -item[1])[:5]:
        lines.append(f"            {count} x {message}")
    failures = judge(result, thresholds)
    if failures:
        lines.append("FAIL")
        lines.extend(f"  {failure}" for failure in failures)
    else:
        lines.append("PASS")
    return "\n".join(lines)


def progress_bar(stream: Any = None) -> Callable[[float, int, int], None]:
    """
    :returns: a ``progress`` callable for :func:`run_load` drawing a bar on
        ``stream`` (standard error): redrawn in place on a terminal, one line
        per second otherwise.
    """
    stream = sys.stderr if stream is None else stream
    interactive = stream.isatty()
    last = [-1]

    def show(fraction: float, ok: int, failed: int) -> None:
        width = 30
        filled = int(fraction * width)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}  {ok} writes, {failed} failed"
        if interactive:
            stream.write("\r" + line + ("\n" if fraction >= 1.0 else ""))
        else:
            step = int(fraction * 100) // 25 if fraction < 1.0 else 4
            if step == last[0]:
                return
            last[0] = step
            stream.write(line + "\n")
        stream.flush()

    return show


async def check_perf(args: Any, reactor: Any) -> bool:
    """
    ``txraft check perf``: run the load the parsed command line ``args`` asks
    for, print the report (or, with ``--json``, one JSON object).

    :returns: whether the verdict is a pass.
    :raises ValueError: for a usage error (no server named, a bound exceeded).
    """
    if not args.server:
        raise ValueError("name the cluster to load with --server URL (or TXRAFT_SERVER); "
                         "check perf writes to it and has no default")
    if args.max_p99 <= 0 or not 0 <= args.max_error_rate <= 100 or args.min_throughput < 0:
        raise ValueError("--max-p99 must be above 0 ms, --max-error-rate between 0 and 100, "
                         "--min-throughput at least 0")
    thresholds = Thresholds(min_throughput=args.min_throughput, max_p99=args.max_p99 / 1000.0,
                            max_error_rate=args.max_error_rate / 100.0)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise ValueError(f"--connections must be between 1 and {MAX_CONNECTIONS}, got {args.connections}")
    client = Client(args.server, args.cert, args.key, args.ca, insecure=args.insecure, timeout=args.timeout,
                    reactor=reactor, persistent=True, connections=args.connections)
    try:
        result = await run_load(client, args.connections, args.duration, reactor, value_size=args.value_size,
                                progress=None if args.no_progress else progress_bar())
    finally:
        await client.close()
    if args.json:
        print(json.dumps(result.as_dict(thresholds), indent=2, sort_keys=True))
    else:
        print(format_report(result, thresholds))
    return not judge(result, thresholds)
