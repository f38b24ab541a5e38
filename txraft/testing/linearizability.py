"""
A linearizability checker for histories of operations on registers.

A *history* is what concurrent clients saw: each operation was invoked at
some moment and then either completed with a result (``ok``), definitely did
not happen (``fail``), or ended with an unknown outcome (``info``: a timeout,
a lost connection; it may or may not have taken effect, now or at any later
moment).  The history is *linearizable* when every operation can be given
one instant between its invocation and its completion such that, run one at
a time in that order, a sequential register would have produced exactly the
results the clients saw.

Record a history with :class:`History` while clients run, then call
:func:`check`::

    history = History()
    op = history.invoke(process=1, kind="write", key="x", value="1")
    history.ok(op)
    op = history.invoke(process=2, kind="read", key="x")
    history.ok(op, output="1")
    result = check(history.operations())
    assert result.ok, result.explain()

How it works.  Operations on different keys never constrain each other
(linearizability is compositional, Herlihy and Wing 1990), so each key is
checked on its own.  For one key the checker runs the search of Wing and Gong
(1993) with the two improvements Lowe (2017) describes and Knossos and
Porcupine use: the calls and returns form one linked list from which a
linearized operation is lifted out and put back on backtracking, and every
(set of linearized operations, register value) pair already explored is
remembered, so no configuration is searched twice.  Operations whose outcome
is unknown would make that search exponential (each could take effect at any
later moment); :func:`_check_key` describes the three rules that keep it
small, each checked against a brute-force search in the tests.  An ``info`` operation
has its completion moved to the end of time: it may be linearized anywhere
after its invocation, and leaving it for last is the same as it never having
happened, since nothing observes the register afterwards.  A ``fail``
operation is dropped.  A read whose outcome is unknown is dropped too: it
changes nothing.

The register model is :class:`RegisterModel`: ``read``, ``write``,
``delete`` (a write of ``None``; an absent key reads as ``None``) and
``cas`` with ``value=(expected, new)``, whose ``ok`` output is ``True`` when
it swapped and ``False`` when it saw another value (record a refused
compare-and-set either as ``ok`` with ``False``, which the checker then also
verifies, or as ``fail``, as Jepsen does).  Another model can be passed to
:func:`check`; see :class:`RegisterModel` for the two methods it needs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

__all__ = ["Operation", "History", "RegisterModel", "CheckResult", "KeyFailure", "check",
           "timed_check", "synthetic_history", "OK", "FAIL", "INFO"]

OK = "ok"
FAIL = "fail"
INFO = "info"
_STATUSES = (OK, FAIL, INFO)
_KINDS = ("read", "write", "delete", "cas")


@dataclass(frozen=True)
class Operation:
    """
    One client operation and how it ended.

    Invariant: ``invoke < complete`` when ``complete`` is known; ``complete``
    is ``None`` exactly when ``status`` is ``info`` (the outcome is unknown)
    or the operation never ended.

    :ivar id: unique within its history.
    :ivar process: the client that ran it (one operation at a time per process).
    :ivar kind: ``read``, ``write``, ``delete`` or ``cas``.
    :ivar key: which register.
    :ivar value: the value written, or ``(expected, new)`` for ``cas``.
    :ivar output: what a read returned, or whether a cas swapped.
    :ivar status: ``ok``, ``fail`` or ``info``.
    :ivar invoke: when it was invoked (any increasing clock).
    :ivar complete: when it completed, or ``None``.
    """

    id: int
    process: Hashable
    kind: str
    key: Hashable
    value: Any = None
    output: Any = None
    status: str = INFO
    invoke: float = 0.0
    complete: Optional[float] = None

    def describe(self) -> str:
        """:returns: a one-line, human-readable form, e.g. ``p3 read x -> '1' [ok 1.20-1.31]``."""
        if self.kind == "read":
            what = f"read {self.key!r} -> {self.output!r}"
        elif self.kind == "cas":
            what = f"cas {self.key!r} {self.value[0]!r}->{self.value[1]!r} = {self.output!r}"
        elif self.kind == "delete":
            what = f"delete {self.key!r}"
        else:
            what = f"write {self.key!r} {self.value!r}"
        end = "..." if self.complete is None else f"{self.complete:.6f}"
        return f"p{self.process} {what} [{self.status} {self.invoke:.6f}-{end}] (op {self.id})"

    def to_json(self) -> Dict[str, Any]:
        """:returns: a JSON-serialisable dict (``cas`` values become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Operation":
        """Rebuild an operation written by :meth:`to_json`, checking its fields."""
        op = cls(**data)
        if op.kind == "cas" and isinstance(op.value, list):
            op = dataclasses.replace(op, value=tuple(op.value))
        _validate(op, kinds=None)  # the kinds are the model's business, checked by check()
        return op


def _validate(op: Operation, kinds: Optional[Sequence[str]] = _KINDS) -> None:
    if kinds is not None and op.kind not in kinds:
        raise ValueError(f"operation {op.id}: unknown kind {op.kind!r} (expected one of {tuple(kinds)})")
    if op.status not in _STATUSES:
        raise ValueError(f"operation {op.id}: unknown status {op.status!r} (expected one of {_STATUSES})")
    if op.kind == "cas" and kinds is not None and not (isinstance(op.value, tuple) and len(op.value) == 2):
        raise ValueError(f"operation {op.id}: cas needs value=(expected, new), got {op.value!r}")
    if op.status != INFO and op.complete is None:
        raise ValueError(f"operation {op.id}: status {op.status} needs a completion time")
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"operation {op.id}: completes at {op.complete} before its invocation at {op.invoke}")


class History:
    """
    Records operations as concurrent clients run them.

    Only the order of the timestamps matters, so the default clock is a
    counter: each invocation and completion gets the next number, which makes
    the recorded order exactly the order in which the client code saw events
    (the right order for clients on one reactor thread).  Pass
    ``clock=time.monotonic`` to record wall-clock times instead.

    :param clock: a zero-argument callable returning increasing numbers.
    :param kinds: the operation kinds accepted (those of
        :class:`RegisterModel` by default); ``None`` accepts any, for other
        models.
    """

    def __init__(self, clock: Optional[Callable[[], float]] = None,
                 kinds: Optional[Sequence[str]] = _KINDS) -> None:
        self.kinds = kinds
        if clock is None:
            counter = itertools.count(1)
            clock = lambda: float(next(counter))  # noqa: E731
        self._clock = clock
        self._ids = itertools.count()
        self._open: Dict[int, Operation] = {}
        self._done: List[Operation] = []

    def invoke(self, process: Hashable, kind: str, key: Hashable, value: Any = None) -> int:
        """
        Record the start of an operation.

        :returns: a token for :meth:`ok`, :meth:`fail` or :meth:`info`.
        :raises ValueError: for an unknown kind or a malformed cas value.
        """
        if kind == "cas" and isinstance(value, list):
            value = tuple(value)
        op = Operation(next(self._ids), process, kind, key, value, invoke=self._clock())
        _validate(op, self.kinds)
        self._open[op.id] = op
        return op.id

    def ok(self, token: int, output: Any = None) -> None:
        """The operation completed; ``output`` is what a read returned or whether a cas swapped."""
        self._finish(token, OK, output, self._clock())

    def fail(self, token: int) -> None:
        """The operation certainly did not take effect (for example the server refused it)."""
        self._finish(token, FAIL, None, self._clock())

    def info(self, token: int) -> None:
        """The outcome is unknown (a timeout, a lost connection): it may take effect at any time."""
        self._finish(token, INFO, None, None)

    def _finish(self, token: int, status: str, output: Any, complete: Optional[float]) -> None:
        op = self._open.pop(token, None)
        if op is None:
            raise KeyError(f"operation {token} is not in progress")
        self._done.append(dataclasses.replace(op, status=status, output=output, complete=complete))

    def operations(self) -> List[Operation]:
        """:returns: every operation, those still in progress as ``info``."""
        still_open = [dataclasses.replace(op, status=INFO) for op in self._open.values()]
        return sorted(self._done + still_open, key=lambda op: op.id)

    def dump(self, path: str) -> None:
        """Write the history as JSON lines, one operation per line."""
        with open(path, "w", encoding="utf-8") as f:
            for op in self.operations():
                f.write(json.dumps(op.to_json()) + "\n")

    @staticmethod
    def load(path: str) -> List[Operation]:
        """:returns: the operations written by :meth:`dump`."""
        with open(path, encoding="utf-8") as f:
            return [Operation.from_json(json.loads(line)) for line in f if line.strip()]


class RegisterModel:
    """
    A register per key, initially ``None`` (absent).

    An operation of kind ``read`` must not change the state, in this model
    or any other: :func:`check` drops reads whose outcome is unknown.

    A model is two methods: :meth:`init` gives the state before any
    operation, and :meth:`step` says whether an operation with its observed
    output is possible in a state, and what state follows.  States must be
    hashable; ``step`` must not mutate them.  A model may also have a
    :meth:`prune` that removes operations the search provably never needs.
    """

    def init(self) -> Hashable:
        """:returns: the state of a key no one has written."""
        return None

    def step(self, state: Hashable, op: Operation) -> Tuple[bool, Hashable]:
        """
        :returns: ``(possible, next_state)`` for ``op`` applied in ``state``.
            An ``info`` operation's output is unknown and never refuted.
        """
        known = op.status == OK
        if op.kind == "read":
            return (not known or op.output == state), state
        if op.kind == "write":
            return True, op.value
        if op.kind == "delete":
            return True, None
        expected, new = op.value
        swapped = state == expected
        if known and bool(op.output) != swapped:
            return False, state
        return True, (new if swapped else state)

    def could_observe(self, value: Any, op: Operation) -> bool:
        """
        Whether ``op`` could be the operation that needs ``value`` left by
        an unknown-outcome update placed just before it: an
        acknowledged read that returned it, a compare-and-set that expected it,
        or a refused compare-and-set that expected something else.
        """
        if op.kind == "read":
            return op.status == OK and op.output == value
        if op.kind == "cas":
            if op.status == OK and not op.output:
                return op.value[0] != value
            return op.value[0] == value
        return False

    def written(self, op: Operation) -> Any:
        """:returns: the value ``op`` leaves in the register if it changes it."""
        return _written(op)

    def prune(self, ops: Sequence[Operation]) -> List[Operation]:
        """
        Drop unknown-outcome writes that no order could need, before the search.

        Each operation whose outcome is unknown is concurrent with everything
        after it, so a few of them make the search exponential.  A write (or
        delete, or swap) whose new value no operation ever observes (no read
        returned it, no compare-and-set expected it) can only matter by
        making a refused compare-and-set possible; when no compare-and-set
        on the key was refused, leaving it out changes no verdict: after it,
        the register holds a value that the next observation cannot match
        until another write replaces it.

        :returns: the operations the search must consider.
        """
        if any(op.kind == "cas" and op.status == OK and not op.output for op in ops):
            return list(ops)
        observed = {op.output for op in ops if op.kind == "read" and op.status == OK}
        observed |= {op.value[0] for op in ops if op.kind == "cas"}
        return [op for op in ops if op.status == OK or _written(op) in observed]


def _written(op: Operation) -> Any:
    """The value an update leaves in the register when it takes effect."""
    if op.kind == "cas":
        return op.value[1]
    return None if op.kind == "delete" else op.value


@dataclass(frozen=True)
class KeyFailure:
    """
    Why one key's history is not linearizable.

    :ivar key: the key.
    :ivar operation: the operation no order could place: every
        linearization that got furthest reached its completion without being
        able to put it anywhere.
    :ivar window: the operations concurrent with it that were still unplaced
        there, plus the last placed ones, in invocation order.
    :ivar state: the register's value in that furthest linearization.
    :ivar linearized: how many of the key's operations were placed there.
    """

    key: Hashable
    operation: Operation
    window: Tuple[Operation, ...]
    state: Any
    linearized: int

    def explain(self) -> str:
        """:returns: several lines a person can read."""
        lines = [f"key {self.key!r}: no linearization places {self.operation.describe()}",
                 f"  after {self.linearized} operations placed, the register holds {self.state!r};"
                 " the operations around it:"]
        lines += ["    " + op.describe() for op in self.window]
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    """
    The verdict on a whole history.

    :ivar ok: whether every key's history is linearizable.
    :ivar operations: how many operations were checked (``fail`` ones excluded).
    :ivar keys: how many keys.
    :ivar failures: one :class:`KeyFailure` per key that is not linearizable.
    :ivar unknown: keys whose search was stopped by ``max_configurations``.
    """

    ok: bool
    operations: int
    keys: int
    failures: Tuple[KeyFailure, ...] = ()
    unknown: Tuple[Hashable, ...] = ()

    def explain(self) -> str:
        """:returns: a summary and, for each failing key, its window."""
        if self.ok:
            return f"linearizable: {self.operations} operations on {self.keys} keys"
        parts = [f"NOT linearizable: {len(self.failures)} of {self.keys} keys"
                 + (f", {len(self.unknown)} undecided" if self.unknown else "")]
        parts += [failure.explain() for failure in self.failures]
        return "\n".join(parts)

    def to_json(self) -> Dict[str, Any]:
        """:returns: a JSON-serialisable summary."""
        return {"linearizable": self.ok, "operations": self.operations, "keys": self.keys,
                "failures": [{"key": f.key, "operation": f.operation.to_json(),
                              "window": [op.to_json() for op in f.window], "state": f.state}
                             for f in self.failures],
                "unknown": list(self.unknown)}


class _Node:
    """A call or return event in the doubly linked list the search walks."""

    __slots__ = ("op", "index", "call", "match", "prev", "next")

    def __init__(self, op: Optional[Operation], index: int, call: bool) -> None:
        self.op = op
        self.index = index  # bit position in the linearized set
        self.call = call
        self.match: Optional[_Node] = None  # a call's return node
        self.prev: Optional[_Node] = None
        self.next: Optional[_Node] = None


class _Undecided(Exception):
    pass


def check(operations: Iterable[Operation], model: Optional[RegisterModel] = None,
          max_configurations: Optional[int] = None) -> CheckResult:
    """
    Decide whether a history is linearizable.

    :param operations: the history, e.g. :meth:`History.operations`.
    :param model: the sequential specification; :class:`RegisterModel` by default.
    :param max_configurations: give up on a key after exploring this many
        configurations (it is then reported in ``unknown``, and ``ok`` is
        ``False``); ``None`` searches to the end.
    :returns: a :class:`CheckResult`.
    :raises ValueError: for a malformed operation.
    """
    model = model or RegisterModel()
    kinds = getattr(model, "kinds", None)
    by_key: Dict[Hashable, List[Operation]] = {}
    for op in operations:
        _validate(op, kinds)
        if op.status == FAIL or (op.status == INFO and op.kind == "read"):
            continue
        by_key.setdefault(op.key, []).append(op)
    failures: List[KeyFailure] = []
    unknown: List[Hashable] = []
    for key, ops in by_key.items():
        prune = getattr(model, "prune", None)
        if prune is not None:
            ops = prune(ops)
        try:
            failure = _check_key(key, ops, model, max_configurations)
        except _Undecided:
            unknown.append(key)
            continue
        if failure is not None:
            failures.append(failure)
    count = sum(len(ops) for ops in by_key.values())
    return CheckResult(not failures and not unknown, count, len(by_key), tuple(failures), tuple(unknown))


def _build_list(ops: Sequence[Operation]) -> _Node:
    """Calls and returns in time order (a call before a return at the same instant), behind a head node."""
    events = []
    nodes = []
    for index, op in enumerate(ops):
        call, ret = _Node(op, index, True), _Node(op, index, False)
        call.match = ret
        nodes.append(call)
        end = float("inf") if op.complete is None else op.complete
        events.append((op.invoke, 0, index, call))
        events.append((end, 1, index, ret))
    events.sort(key=lambda e: e[:3])
    head = _Node(None, -1, False)
    last = head
    for *_, node in events:
        last.next, node.prev = node, last
        last = node
    return head


def _lift(call: _Node) -> None:
    """Take a linearized operation's call and return out of the list."""
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    """Put them back, in the reverse order of :func:`_lift`."""
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def _check_key(key, ops: Sequence[Operation], model, max_configurations) -> Optional[KeyFailure]:
    """
    Wing and Gong's search with Lowe's memo, for the operations on one key.

    Operations with an unknown outcome never have to be placed, and each one
    left unplaced could take effect at any later moment, which would make the
    search exponential in their number.  Three rules keep it small; each only
    drops configurations that another one already covers:

    - *needed*: an unknown update is placed only just before an operation
      that needs it: one that is impossible without it, or ends in another
      state, and for an acknowledged operation also one that does not
      commute with it.  Otherwise the update was erased and can be left out,
      or the two can be swapped, and the order that places it later, or
      never, is tried too.  (Only acknowledged operations are swapped past,
      so the moves end: two unknown updates that together make a read
      possible, like two additions to a counter, may be placed in a row.)
    - *twins*: identical unknown updates are placed in invocation order
      (:func:`_twins`), and those nothing could still need count as placed
      (:func:`_retirement`).
    - *dominance*: a configuration equal to a failed one but for one more
      unknown update placed fails too: the failed one could have placed it.
    """
    head = _build_list(ops)
    required = sum(1 for op in ops if op.status == OK)
    unknown_bits = [1 << i for i, op in enumerate(ops) if op.status != OK]
    state = model.init()
    linearized = 0  # bitset of placed operations
    placed_required = 0
    pending = None  # (state before, update) after placing an unknown update
    retire = _retirement(ops, model)
    after_twin = _twins(ops)
    seen = set()
    stack: List[Tuple[_Node, Hashable, Any]] = []
    best: Optional[Tuple[int, _Node, Hashable, int]] = None
    node = head.next
    while placed_required < required:
        if node.call:
            op = node.op
            twin = after_twin[node.index]
            possible = twin < 0 or linearized >> twin & 1
            if possible:
                possible, after = model.step(state, op)
            if possible and op.status != OK and after == state:
                possible = False  # an unknown outcome with no effect is never needed
            if possible and pending is not None:
                possible = _needs(model, pending, op, after, swap=op.status == OK)
            if possible:
                bits = linearized | (1 << node.index)
                waits = (state, op) if op.status != OK else None
                memo_bits = retire(bits)
                waits_key = None if waits is None else (state, node.index)
                memo = (memo_bits, after, waits_key)
                if memo not in seen and not _dominated(seen, memo_bits, after, waits_key, unknown_bits):
                    seen.add(memo)
                    if max_configurations is not None and len(seen) > max_configurations:
                        raise _Undecided()
                    stack.append((node, state, pending))
                    state, linearized, pending = after, bits, waits
                    placed_required += op.status == OK
                    _lift(node)
                    node = head.next
                    continue
            node = node.next
            continue
        # A return whose operation is not placed yet: this prefix cannot be extended.
        if best is None or len(stack) > best[0]:
            best = (len(stack), node, state, linearized)
        if not stack:
            return _failure(key, ops, best)
        call, state, pending = stack.pop()
        linearized &= ~(1 << call.index)
        placed_required -= call.op.status == OK
        _unlift(call)
        node = call.next
    return None


def _needs(model, pending, op: Operation, after: Hashable, swap: bool = True) -> bool:
    """
    Whether ``op``, ending in ``after``, needs the unknown update just placed.

    :param pending: ``(state before the update, the update)``.
    :param swap: whether the two may be swapped when they commute (only when
        ``op`` is acknowledged; see :func:`_check_key`).
    """
    before, update = pending
    possible, without = model.step(before, op)
    if not possible:
        return True
    if without == after:
        return False  # op erases the update: leaving the update out is the same
    if not swap:
        return True
    possible, swapped = model.step(without, update)
    return not (possible and swapped == after)  # else: op then update is the same


def _dominated(seen, bits: int, state: Hashable, waits: Any, unknown_bits: Sequence[int]) -> bool:
    """
    Whether a configuration with one placed unknown update fewer, and no
    stricter constraint on the next operation, has been searched (and so
    failed: the search stops at the first success).
    """
    for bit in unknown_bits:
        if bits & bit:
            fewer = bits & ~bit
            if (fewer, state, None) in seen or (waits is not None and (fewer, state, waits) in seen):
                return True
    return False


def _twins(ops: Sequence[Operation]) -> List[int]:
    """
    :returns: for each operation, the index of the unknown-outcome operation
        it must be placed after, or -1.

    Unknown-outcome updates that would do the same thing (the same kind and
    value) are interchangeable, and the one invoked first can be placed
    wherever a later one can.  Placing them only in invocation order keeps n
    identical deletes from multiplying the search by 2**n.
    """
    last: Dict[Any, int] = {}
    after = [-1] * len(ops)
    for index in sorted(range(len(ops)), key=lambda i: ops[i].invoke):
        op = ops[index]
        if op.status == OK:
            continue
        try:
            group = (op.kind, op.value if not isinstance(op.value, list) else tuple(op.value))
            hash(group)
        except TypeError:
            continue
        after[index] = last.get(group, -1)
        last[group] = index
    return after


def _retirement(ops: Sequence[Operation], model) -> Callable[[int], int]:
    """
    :returns: a function that adds to a set of placed operations (a bitset)
        the unknown-outcome updates that can no longer matter.

    Such an update is only ever placed just before an operation that observes
    the value it leaves (:meth:`RegisterModel.observes`).  Once every
    operation that could observe that value is placed, placing the update can
    lead nowhere, so configurations that differ only in whether it was placed
    have the same future: counting it as placed lets the memo merge them.
    Without this, each unknown outcome would double the search for the rest
    of the history.
    """
    could_observe = getattr(model, "could_observe", None)
    written = getattr(model, "written", None)
    if could_observe is None or written is None:
        return lambda bits: bits
    retirable = []
    for index, op in enumerate(ops):
        if op.status == OK:
            continue
        value = written(op)
        watchers = 0
        for other, candidate in enumerate(ops):
            if other != index and could_observe(value, candidate):
                watchers |= 1 << other
        retirable.append((1 << index, watchers))

    def retire(bits: int) -> int:
        for bit, watchers in retirable:
            if not bits & bit and not watchers & ~bits:
                bits |= bit
        return bits

    return retire


def _failure(key, ops, best) -> KeyFailure:
    depth, node, state, linearized = best
    stuck = node.op
    concurrent = [op for i, op in enumerate(ops)
                  if not linearized >> i & 1 and op.invoke <= stuck.complete and op is not stuck]
    recent = sorted((op for i, op in enumerate(ops) if linearized >> i & 1),
                    key=lambda op: op.complete if op.complete is not None else float("inf"))[-3:]
    chosen = {op.id: op for op in concurrent[:20] + recent + [stuck]}
    window = tuple(sorted(chosen.values(), key=lambda op: (op.invoke, op.id)))
    return KeyFailure(key, stuck, window, state, depth)


def timed_check(operations: Iterable[Operation], **kwargs) -> Tuple[CheckResult, float]:
    """:returns: :func:`check`'s result and the seconds it took (for benchmarks and reports)."""
    start = time.perf_counter()
    result = check(operations, **kwargs)
    return result, time.perf_counter() - start


def synthetic_history(seed: int, processes: int = 8, keys: int = 4, ops: int = 2000,
                      info_rate: float = 0.05) -> Tuple[List[Operation], Dict[str, Any]]:
    """
    A history that is linearizable by construction, for testing and timing
    checkers: each operation takes effect at a random instant inside its
    interval, in that order, on a real register; unknown outcomes take effect
    or not at random.  Values are unique, as the chaos runner's are.

    :returns: ``(operations, final state by key)``.
    """
    rng = random.Random(seed)
    now = [0.0] * processes
    planned = []
    for i in range(ops):
        p = rng.randrange(processes)
        invoke = now[p] + rng.random()
        complete = invoke + rng.random() * 3
        now[p] = complete
        kind = rng.choice(["read", "read", "write", "cas", "delete"])
        key = f"k{rng.randrange(keys)}"
        value = (str(rng.randrange(4)), str(i)) if kind == "cas" else str(i)
        status = INFO if rng.random() < info_rate else OK
        effect = rng.uniform(invoke, complete) if (status == OK or rng.random() < 0.5) else None
        planned.append([i, p, kind, key, value, status, invoke, complete, effect])
    state = {}
    outputs = {}
    for i, p, kind, key, value, status, invoke, complete, effect in sorted(
            (x for x in planned if x[8] is not None), key=lambda x: x[8]):
        current = state.get(key)
        if kind == "read":
            outputs[i] = current
        elif kind == "write":
            state[key] = value
        elif kind == "delete":
            state.pop(key, None)
        else:
            outputs[i] = current == value[0]
            if current == value[0]:
                state[key] = value[1]
    history = []
    for i, p, kind, key, value, status, invoke, complete, effect in planned:
        if kind in ("write", "delete") or status == INFO:
            output = None
        else:
            output = outputs[i]
        history.append(Operation(i, p, kind, key, None if kind in ("read", "delete") else value,
                                 output, status, invoke, None if status == INFO else complete))
    return history, state
