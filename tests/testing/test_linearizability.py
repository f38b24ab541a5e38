"""
The linearizability checker is trusted only after it is seen to judge
histories whose verdict is known: hand-written ones for each rule, and large
random ones that are linearizable by construction, before and after a planted
stale read or lost write.
"""

import itertools
import random

import pytest

from txraft.testing.linearizability import (synthetic_history, FAIL, INFO, OK, History, Operation, RegisterModel,
                                            check)


def op(id, process, kind, key, value=None, output=None, status=OK, invoke=0.0, complete=None):
    if complete is None and status != INFO:
        complete = invoke + 1
    return Operation(id, process, kind, key, value, output, status, float(invoke),
                     None if complete is None else float(complete))


def verdict(*ops):
    return check(list(ops)).ok


class TestKnownHistories:
    def test_read_after_write_sees_it(self):
        assert verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                       op(1, 2, "read", "x", output="1", invoke=3, complete=4))

    def test_unwritten_key_reads_none(self):
        assert verdict(op(0, 1, "read", "x", output=None, invoke=1, complete=2))
        assert not verdict(op(0, 1, "read", "x", output="1", invoke=1, complete=2))

    def test_stale_read_is_caught(self):
        result = check([op(0, 1, "write", "x", "1", invoke=1, complete=2),
                        op(1, 1, "write", "x", "2", invoke=3, complete=4),
                        op(2, 2, "read", "x", output="1", invoke=5, complete=6)])
        assert not result.ok
        (failure,) = result.failures
        assert failure.key == "x"
        assert failure.operation.id == 2
        assert "read 'x' -> '1'" in result.explain()

    def test_lost_write_is_caught(self):
        assert not verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                           op(1, 2, "read", "x", output=None, invoke=3, complete=4))

    def test_concurrent_read_may_see_old_or_new(self):
        before = op(0, 1, "write", "x", "1", invoke=1, complete=2)
        write = op(1, 1, "write", "x", "2", invoke=3, complete=6)
        for seen in ("1", "2"):
            assert verdict(before, write, op(2, 2, "read", "x", output=seen, invoke=4, complete=5))
        assert not verdict(before, write, op(2, 2, "read", "x", output="3", invoke=4, complete=5))

    def test_reads_cannot_go_back_in_time(self):
        # Both reads overlap the write, but once one saw the new value a later one cannot see the old.
        assert not verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                           op(1, 1, "write", "x", "2", invoke=3, complete=10),
                           op(2, 2, "read", "x", output="2", invoke=4, complete=5),
                           op(3, 3, "read", "x", output="1", invoke=6, complete=7))

    def test_unknown_write_may_take_effect_late(self):
        base = [op(0, 1, "write", "x", "1", invoke=1, complete=2),
                op(1, 1, "write", "x", "2", status=INFO, invoke=3)]
        assert verdict(*base, op(2, 2, "read", "x", output="1", invoke=5, complete=6),
                       op(3, 2, "read", "x", output="2", invoke=7, complete=8))

    def test_unknown_write_may_never_take_effect(self):
        assert verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                       op(1, 1, "write", "x", "2", status=INFO, invoke=3),
                       op(2, 2, "read", "x", output="1", invoke=9, complete=10))

    def test_unknown_write_takes_effect_at_most_once(self):
        assert not verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                           op(1, 1, "write", "x", "2", status=INFO, invoke=3),
                           op(2, 2, "read", "x", output="2", invoke=5, complete=6),
                           op(3, 2, "read", "x", output="1", invoke=7, complete=8))

    def test_unknown_write_not_before_its_invocation(self):
        assert not verdict(op(0, 1, "read", "x", output="2", invoke=1, complete=2),
                           op(1, 1, "write", "x", "2", status=INFO, invoke=3))

    def test_failed_write_never_takes_effect(self):
        assert not verdict(op(0, 1, "write", "x", "2", status=FAIL, invoke=1, complete=2),
                           op(1, 2, "read", "x", output="2", invoke=3, complete=4))

    def test_compare_and_set(self):
        assert verdict(op(0, 1, "write", "x", "a", invoke=1, complete=2),
                       op(1, 1, "cas", "x", ("a", "b"), output=True, invoke=3, complete=4),
                       op(2, 2, "cas", "x", ("a", "c"), output=False, invoke=5, complete=6),
                       op(3, 2, "read", "x", output="b", invoke=7, complete=8))
        # Two sequential swaps from the same value cannot both succeed.
        assert not verdict(op(0, 1, "cas", "x", (None, "1"), output=True, invoke=1, complete=2),
                           op(1, 2, "cas", "x", (None, "2"), output=True, invoke=3, complete=4))
        # A refusal while the register held the expected value is wrong.
        assert not verdict(op(0, 1, "write", "x", "a", invoke=1, complete=2),
                           op(1, 1, "cas", "x", ("a", "b"), output=False, invoke=3, complete=4))

    def test_delete_reads_as_absent(self):
        assert verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                       op(1, 1, "delete", "x", invoke=3, complete=4),
                       op(2, 2, "read", "x", output=None, invoke=5, complete=6))
        assert not verdict(op(0, 1, "write", "x", "1", invoke=1, complete=2),
                           op(1, 1, "delete", "x", invoke=3, complete=4),
                           op(2, 2, "read", "x", output="1", invoke=5, complete=6))

    def test_keys_are_independent(self):
        result = check([op(0, 1, "write", "x", "1", invoke=1, complete=2),
                        op(1, 1, "write", "y", "1", invoke=3, complete=4),
                        op(2, 2, "read", "y", output=None, invoke=5, complete=6),
                        op(3, 2, "read", "x", output="1", invoke=7, complete=8)])
        assert not result.ok
        assert [f.key for f in result.failures] == ["y"]
        assert result.keys == 2 and result.operations == 4


@pytest.mark.parametrize("seed", range(8))
def test_random_linearizable_histories_pass(seed):
    history, _ = synthetic_history(seed)
    result = check(history)
    assert result.ok, result.explain()


def acknowledged_value(history, key):
    """The value of the last acknowledged write of ``key``: no other operation writes it (values are unique)."""
    return [o.value for o in history if o.key == key and o.kind == "write" and o.status == OK][-1]


@pytest.mark.parametrize("seed", range(4))
def test_planted_stale_read_is_caught(seed):
    history, _ = synthetic_history(seed)
    end = max(o.complete or o.invoke for o in history) + 10
    key = "k0"
    stale = acknowledged_value(history, key)
    # After everything has settled, one write, then a read that misses it.
    history.append(Operation(len(history), 99, "write", key, "fresh", None, OK, end, end + 1))
    history.append(Operation(len(history), 98, "read", key, None, stale, OK, end + 2, end + 3))
    result = check(history)
    assert not result.ok
    assert [f.key for f in result.failures] == [key]
    assert result.failures[0].operation.process == 98


@pytest.mark.parametrize("seed", range(4))
def test_planted_lost_write_is_caught(seed):
    history, _ = synthetic_history(seed)
    # A write is acknowledged, and the final read shows the value before it:
    # the write was lost.
    end = max(o.complete or o.invoke for o in history) + 10
    before = acknowledged_value(history, "k1")
    history.append(Operation(len(history), 99, "write", "k1", "acked", None, OK, end, end + 1))
    history.append(Operation(len(history), 90, "read", "k1", None, before, OK, end + 5, end + 6))
    # the other keys read back intact
    result = check(history)
    assert not result.ok
    assert [f.key for f in result.failures] == ["k1"]


def test_the_same_reads_without_the_fault_pass():
    history, _ = synthetic_history(2)
    end = max(o.complete or o.invoke for o in history) + 10
    history.append(Operation(len(history), 99, "write", "k1", "acked", None, OK, end, end + 1))
    history.append(Operation(len(history), 90, "read", "k1", None, "acked", OK, end + 5, end + 6))
    assert check(history).ok


def test_search_budget_reports_undecided():
    history, _ = synthetic_history(1, processes=16, keys=1, ops=400, info_rate=0.3)
    result = check(history, max_configurations=10)
    assert not result.ok and result.unknown == ("k0",) and not result.failures


class TestHistoryRecorder:
    def test_records_in_call_order(self, tmp_path):
        history = History()
        a = history.invoke(1, "write", "x", "1")
        b = history.invoke(2, "read", "x")
        history.ok(a)
        history.ok(b, "1")
        c = history.invoke(3, "cas", "x", ["1", "2"])
        history.info(c)
        d = history.invoke(4, "write", "x", "9")  # never finished: reported as info
        ops = history.operations()
        assert [o.status for o in ops] == [OK, OK, INFO, INFO]
        assert ops[0].invoke < ops[1].invoke < ops[0].complete < ops[1].complete
        assert ops[2].value == ("1", "2") and ops[3].id == d
        assert check(ops).ok
        path = str(tmp_path / "history.jsonl")
        history.dump(path)
        assert History.load(path) == ops

    def test_bad_operations_are_refused_with_the_reason(self):
        history = History()
        with pytest.raises(ValueError, match="unknown kind 'append'"):
            history.invoke(1, "append", "x", "1")
        with pytest.raises(ValueError, match="cas needs value"):
            history.invoke(1, "cas", "x", "1")
        token = history.invoke(1, "read", "x")
        history.ok(token, None)
        with pytest.raises(KeyError, match="not in progress"):
            history.ok(token, None)
        with pytest.raises(ValueError, match="before its invocation"):
            check([Operation(0, 1, "read", "x", None, None, OK, 5.0, 4.0)])

    def test_custom_model(self):
        class Counter(RegisterModel):
            def init(self):
                return 0

            def step(self, state, o):
                if o.kind == "write":  # an increment by value
                    return True, state + o.value
                return (o.status != OK or o.output == state), state

        ops = [op(0, 1, "write", "c", 2, invoke=1, complete=2),
               op(1, 2, "write", "c", 3, invoke=1, complete=2),
               op(2, 3, "read", "c", output=5, invoke=3, complete=4)]
        assert check(ops, model=Counter()).ok
        assert not check(ops[:2] + [op(2, 3, "read", "c", output=3, invoke=3, complete=4)],
                         model=Counter()).ok


# -- the search's shortcuts agree with trying every order ---------------------------


def brute_force(ops, model=None):
    """Linearizable by trying every order of every admissible subset (tiny histories only)."""
    model = model or RegisterModel()
    ops = [o for o in ops if not (o.status == INFO and o.kind == "read") and o.status != "fail"]
    required = [o for o in ops if o.status == OK]
    optional = [o for o in ops if o.status != OK]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            for order in itertools.permutations(required + list(chosen)):
                if any(b.complete is not None and b.complete < a.invoke
                       for i, a in enumerate(order) for b in order[i + 1:]):
                    continue
                state, possible = model.init(), True
                for op in order:
                    possible, state = model.step(state, op)
                    if not possible:
                        break
                if possible:
                    return True
    return False


def tiny_history(seed, size):
    """Random operations on one key, many of them with unknown outcomes, outputs at random."""
    rng = random.Random(seed)
    ops = []
    for i in range(size):
        invoke = rng.uniform(0, 10)
        kind = rng.choice(["read", "write", "cas", "delete"])
        status = INFO if rng.random() < 0.35 else OK
        value = output = None
        if kind == "read":
            output = rng.choice(["a", "b", None])
        elif kind == "write":
            value = rng.choice(["a", "b"])
        elif kind == "cas":
            value, output = (rng.choice(["a", "b", None]), rng.choice(["a", "b"])), rng.random() < 0.5
        if status == INFO:
            output = None
        ops.append(Operation(i, i, kind, "k", value, output, status, invoke,
                             None if status == INFO else invoke + rng.uniform(0, 4)))
    return ops


def test_the_search_agrees_with_trying_every_order():
    verdicts = {True: 0, False: 0}
    for seed in range(500):
        ops = tiny_history(seed, 6)
        expected = brute_force(ops)
        assert check(ops).ok == expected, f"seed {seed}: {[o.describe() for o in ops]}"
        verdicts[expected] += 1
    assert min(verdicts.values()) > 100  # both verdicts well exercised


def test_many_identical_unknown_updates_stay_cheap():
    # 40 timed-out deletes, and reads that show the key present and absent in
    # turn: without placing twins in order the search would be 2**40.
    ops = [Operation(0, 0, "write", "k", "v0", None, OK, 0, 1)]
    for i in range(40):
        ops.append(Operation(len(ops), 100 + i, "delete", "k", None, None, INFO, 2 + i, None))
    t = 50.0
    for i in range(40):
        ops.append(Operation(len(ops), 1, "read", "k", None, None, OK, t, t + 0.5))
        ops.append(Operation(len(ops), 1, "write", "k", f"w{i}", None, OK, t + 1, t + 1.5))
        t += 2
    ops.append(Operation(len(ops), 1, "read", "k", None, "stale", OK, t, t + 1))
    result = check(ops, max_configurations=100_000)
    assert not result.unknown and [f.key for f in result.failures] == ["k"]


class Counter:
    """A counter model: ``add`` commutes with ``add``, which registers' writes never do."""

    kinds = ("read", "add")

    def init(self):
        return 0

    def step(self, state, op):
        if op.kind == "read":
            return op.status != OK or op.output == state, state
        return True, state + op.value


def tiny_counter_history(seed, size):
    rng = random.Random(seed)
    ops = []
    for i in range(size):
        invoke = rng.uniform(0, 10)
        status = INFO if rng.random() < 0.4 else OK
        if rng.random() < 0.5:
            kind, value, output = "read", None, (rng.randrange(0, 7) if status == OK else None)
        else:
            kind, value, output = "add", rng.choice([1, 2, 3]), None
        ops.append(Operation(i, i, kind, "k", value, output, status, invoke,
                             None if status == INFO else invoke + rng.uniform(0, 4)))
    return ops


def test_the_search_agrees_with_trying_every_order_for_a_counter():
    # Found by a chaos run: two unknown additions that only together explain
    # a read must be placeable in a row.
    verdicts = {True: 0, False: 0}
    for seed in range(500):
        ops = tiny_counter_history(seed, 6)
        expected = brute_force(ops, Counter())
        assert check(ops, model=Counter()).ok == expected, f"seed {seed}: {[o.describe() for o in ops]}"
        verdicts[expected] += 1
    assert min(verdicts.values()) > 50
