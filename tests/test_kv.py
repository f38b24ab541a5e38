"""The replicated key-value store (txraft.kv): commands, semantics, snapshots, at-most-once."""

import io

import msgpack
import pytest
from zope.interface.verify import verifyObject

from txraft import errors
from txraft.interfaces import IRaftClient
from txraft.kv import (
    MAX_KEY_BYTES, InvalidCommand, InvalidKey, KeyValueClient, KeyValueStore, WriteResult,
    decode_command, encode_cas, encode_delete, encode_put,
)
from txraft.testing import SafetyChecker, SimulatedCluster


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def settled(size=3, **kwargs):
    kwargs.setdefault("client_factory", KeyValueStore)
    cluster = SimulatedCluster(size, seed=kwargs.pop("seed", 1), checker=SafetyChecker(), **kwargs)
    cluster.start()
    assert cluster.wait_for_leader() is not None
    return cluster


def client(cluster, member_id):
    return KeyValueClient(cluster.members[member_id], cluster.clients[member_id])


def follower_of(cluster):
    return next(i for i in cluster.ids if i != cluster.agreed_leader())


# -- commands ------------------------------------------------------------------


def test_store_implements_iraftclient():
    verifyObject(IRaftClient, KeyValueStore())


def test_commands_round_trip_and_are_compact():
    assert decode_command(encode_put("k", b"v")) == (1, "k", b"v")
    assert decode_command(encode_delete("k")) == (2, "k")
    assert decode_command(encode_cas("k", None, b"v")) == (3, "k", None, b"v")
    assert decode_command(encode_cas("k", b"old", b"new")) == (3, "k", b"old", b"new")
    assert len(encode_put("key", b"value")) <= len("key") + len("value") + 5
    assert decode_command(encode_put("ключ/ü", b"\x00\xff")) == (1, "ключ/ü", b"\x00\xff")


@pytest.mark.parametrize("key, error", [
    ("", InvalidKey),
    ("x" * (MAX_KEY_BYTES + 1), InvalidKey),
    ("é" * (MAX_KEY_BYTES // 2 + 1), InvalidKey),  # the limit counts UTF-8 bytes
    ("\udcff", InvalidKey),
    (b"bytes-key", TypeError),
    (None, TypeError),
])
def test_bad_keys_are_refused_when_encoding(key, error):
    with pytest.raises(error):
        encode_put(key, b"v")


def test_longest_key_is_accepted():
    assert decode_command(encode_put("x" * MAX_KEY_BYTES, b""))[1] == "x" * MAX_KEY_BYTES


def test_values_must_be_bytes():
    with pytest.raises(TypeError, match="value must be bytes, not str"):
        encode_put("k", "text")
    with pytest.raises(TypeError, match="expect must be bytes"):
        encode_cas("k", "text", b"v")


@pytest.mark.parametrize("command", [
    b"",
    b"\xc1",  # never used in msgpack
    msgpack.packb("a string"),
    msgpack.packb([]),
    msgpack.packb([9, "k"]),
    msgpack.packb([True, "k", b"v"]),
    msgpack.packb([1, "k"]),
    msgpack.packb([1, "k", b"v", b"extra"]),
    msgpack.packb([1, "", b"v"]),
    msgpack.packb([1, 5, b"v"]),
    msgpack.packb([1, "k", "str value"], use_bin_type=True),
    msgpack.packb([3, "k", 7, b"v"], use_bin_type=True),
    msgpack.packb([3, "k", None, None], use_bin_type=True),
    b"\x93\x01\xa2\xff\xfe\xc4\x01v",  # [1, <invalid UTF-8 str>, b"v"]
])
def test_malformed_commands_raise_and_change_nothing(command):
    store = KeyValueStore()
    store.apply(encode_put("k", b"v"), 1)
    with pytest.raises(InvalidCommand):
        store.apply(command, 2)
    assert store.items() == [("k", b"v")]
    assert store.applied_index == 1


# -- semantics on one store ------------------------------------------------------


def test_put_get_delete_and_cas_results():
    store = KeyValueStore()
    assert store.get("k") is None
    assert store.apply(encode_put("k", b"1"), 1) == WriteResult(1, True, None)
    assert store.get("k") == b"1"
    assert store.apply(encode_cas("k", None, b"2"), 2) == WriteResult(2, False, b"1")
    assert store.apply(encode_cas("k", b"0", b"2"), 3) == WriteResult(3, False, b"1")
    assert store.apply(encode_cas("k", b"1", b"2"), 4) == WriteResult(4, True, b"2")
    assert store.apply(encode_delete("k"), 5) == WriteResult(5, True, None)
    assert store.apply(encode_delete("k"), 6) == WriteResult(6, False, None)
    assert store.apply(encode_cas("k", None, b"new"), 7) == WriteResult(7, True, b"new")
    assert "k" in store and len(store) == 1


def test_empty_value_is_not_absent():
    store = KeyValueStore()
    store.apply(encode_put("k", b""), 1)
    assert store.get("k") == b""
    assert store.apply(encode_cas("k", None, b"x"), 2).ok is False
    assert store.apply(encode_cas("k", b"", b"x"), 3).ok is True


def test_snapshot_round_trip_and_copy_semantics():
    store = KeyValueStore()
    for i in range(50):
        store.apply(encode_put(f"key-{i}", b"v%d" % i), i + 1)
    buffer = io.BytesIO()
    store.save_snapshot(buffer)
    # Later changes do not reach the snapshot already taken.
    store.apply(encode_put("key-0", b"changed"), 51)
    restored = KeyValueStore()
    restored.apply(encode_put("stale", b"gone"), 1)
    restored.restore_snapshot(50, io.BytesIO(buffer.getvalue()))
    assert restored.get("key-0") == b"v0"
    assert restored.get("stale") is None
    assert len(restored) == 50
    assert restored.applied_index == 50


def test_restore_from_an_empty_snapshot_empties_the_store():
    store = KeyValueStore()
    store.apply(encode_put("k", b"v"), 1)
    store.restore_snapshot(3, io.BytesIO(b""))
    assert len(store) == 0 and store.applied_index == 3


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb({"version": 99, "data": {}}),
                                  msgpack.packb({"version": 1, "data": {"k": "text"}})])
def test_restore_rejects_foreign_snapshots_and_keeps_state(data):
    store = KeyValueStore()
    store.apply(encode_put("k", b"v"), 1)
    with pytest.raises(InvalidCommand):
        store.restore_snapshot(2, io.BytesIO(data))
    assert store.items() == [("k", b"v")]


# -- replicated, through the simulator ----------------------------------------------


def test_writes_through_any_member_reach_every_member():
    cluster = settled()
    results = []
    for n, member_id in enumerate(cluster.ids):
        results.append(outcome(client(cluster, member_id).put(f"from-{n}", member_id.encode())))
    cluster.run(0.5)
    assert all(isinstance(r[0], WriteResult) and r[0].ok for r in results)
    for member_id in cluster.ids:
        store = cluster.clients[member_id]
        assert store.items() == sorted((f"from-{n}", i.encode()) for n, i in enumerate(cluster.ids))
    deleted = outcome(client(cluster, follower_of(cluster)).delete("from-0"))
    cluster.run(0.5)
    assert deleted[0].ok is True
    assert all(cluster.clients[i].get("from-0") is None for i in cluster.ids)


def test_concurrent_cas_from_two_members_lets_exactly_one_win():
    cluster = settled()
    a, b = cluster.ids[0], cluster.ids[1]
    first = outcome(client(cluster, a).cas("lock", None, b"a"))
    second = outcome(client(cluster, b).cas("lock", None, b"b"))
    cluster.run(0.5)
    results = [first[0], second[0]]
    assert sorted(r.ok for r in results) == [False, True]
    winner = b"a" if first[0].ok else b"b"
    loser = next(r for r in results if not r.ok)
    assert loser.current == winner
    assert all(cluster.clients[i].get("lock") == winner for i in cluster.ids)


def test_malformed_command_through_the_log_fails_with_apply_error_everywhere_unchanged():
    cluster = settled()
    member_id = follower_of(cluster)
    outcome(client(cluster, member_id).put("k", b"v"))
    cluster.run(0.5)
    bad = outcome(cluster.members[member_id].append(b"\x92\x09\xa1k"))
    cluster.run(0.5)
    assert bad[0].check(errors.ApplyError)
    assert isinstance(bad[0].value.cause, InvalidCommand)
    assert all(cluster.clients[i].items() == [("k", b"v")] for i in cluster.ids)


def test_linearizable_get_on_a_lagging_follower_sees_the_acknowledged_write():
    cluster = settled()
    leader = cluster.agreed_leader()
    follower = follower_of(cluster)
    cluster.network.cut(leader, follower)
    written = outcome(client(cluster, leader).put("k", b"new"))
    cluster.run(0.2)
    assert isinstance(written[0], WriteResult)
    stale = outcome(client(cluster, follower).get("k", stale=True))
    assert stale == [None]  # the follower has not heard of it
    cluster.heal()
    read = outcome(client(cluster, follower).get("k"))
    assert not read
    cluster.run(1.0)
    assert read == [b"new"]


def test_get_without_a_quorum_fails_with_no_quorum():
    cluster = settled(request_timeout=1.0)
    lonely = follower_of(cluster)
    cluster.network.isolate(lonely, cluster.ids)
    read = outcome(client(cluster, lonely).get("k", timeout=1.0))
    cluster.run(3.0)
    assert read and read[0].check(errors.NoQuorum, errors.Timeout)


def test_client_checks_arguments_at_call_time():
    cluster = settled(size=1)
    kv = client(cluster, cluster.ids[0])
    with pytest.raises(TypeError):
        kv.put("k", "text")
    with pytest.raises(InvalidKey):
        kv.get("")
    with pytest.raises(TypeError, match="KeyValueStore"):
        KeyValueClient(cluster.members[cluster.ids[0]], object())


class CountingStore(KeyValueStore):
    """Remembers every command it applied, to catch double application."""

    def __init__(self):
        super().__init__()
        self.commands = []

    def apply(self, command, index):
        result = super().apply(command, index)
        self.commands.append(command)
        return result

    def restore_snapshot(self, index, fileobj):
        super().restore_snapshot(index, fileobj)
        self.commands = None  # history unknown past a snapshot


def test_duplicated_messages_apply_each_command_once():
    """With every message delivered twice, each command still applies once:
    the member's request ids feed the core's session table (dissertation 6.3),
    so a CAS chain that would break on a second application succeeds."""
    cluster = settled(client_factory=CountingStore, duplicate_rate=1.0)
    follower = follower_of(cluster)
    kv = client(cluster, follower)
    results = []
    previous = None
    for n in range(15):
        value = b"%d" % n
        results.append(outcome(kv.cas("chain", previous, value)))
        previous = value
        cluster.run(0.3)
    assert all(len(r) == 1 and isinstance(r[0], WriteResult) and r[0].ok for r in results), results
    for member_id in cluster.ids:
        store = cluster.clients[member_id]
        assert store.get("chain") == b"14"
        assert len(store.commands) == len(set(store.commands)) == 15


def test_snapshots_restore_state_after_a_crash_and_restart():
    cluster = settled(snapshot_threshold=8)
    leader = cluster.agreed_leader()
    victim = follower_of(cluster)
    kv = client(cluster, leader)
    for n in range(20):
        outcome(kv.put(f"k{n}", b"first-%d" % n))
    cluster.run(1.0)
    cluster.crash(victim)
    # Writes while it is down, enough to compact the log past what it has.
    for n in range(20, 60):
        outcome(kv.put(f"k{n % 30}", b"second-%d" % n))
    outcome(kv.delete("k0"))
    cluster.run(1.0)
    assert cluster.members[leader].core.storage.first_index > 20, "the leader did not compact its log"
    cluster.restart(victim)
    assert cluster.run_until(cluster.converged, 10.0)
    assert cluster.members[victim].core.storage.first_index > 21, "the restarted member got no snapshot"
    expected = cluster.clients[leader].items()
    assert ("k1", b"second-31") in expected and cluster.clients[leader].get("k0") is None
    for member_id in cluster.ids:
        assert cluster.clients[member_id].items() == expected
    # A member restarted with everything in a snapshot of its own also comes back whole.
    cluster.crash(leader)
    cluster.restart(leader)
    assert cluster.run_until(cluster.converged, 10.0)
    assert cluster.clients[leader].items() == expected
