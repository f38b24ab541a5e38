"""
The built-in replicated key-value store.

:class:`KeyValueStore` is a :class:`~txraft.RaftClient`: every change is a
command in the Raft log, so every member applies the same puts, deletes and
compare-and-sets in the same order.  Reads are local (:meth:`KeyValueStore.get`);
:class:`KeyValueClient` adds the asynchronous API that writes through the log
and reads at a linearizable point::

    from txraft.kv import KeyValueClient, KeyValueStore

    store = KeyValueStore()
    raft = Raft(config, store)
    kv = KeyValueClient(raft, store)
    yield raft.start()
    result = yield kv.put("colour", b"blue")      # WriteResult(index=..., ok=True)
    value = yield kv.get("colour")                # b"blue", read after a ReadIndex
    swapped = yield kv.cas("colour", b"blue", b"red")

Keys are non-empty ``str`` of at most :data:`MAX_KEY_BYTES` bytes of UTF-8;
values are ``bytes``.  Commands are msgpack arrays ``[op, key, ...]``, a few
bytes more than the key and value.  At-most-once application of retried
commands comes from the Raft member's request ids; the store needs nothing
extra for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, List, Optional, Protocol, Tuple

import msgpack
from twisted.internet import defer

from txraft import codec
from txraft.client import RaftClient

if TYPE_CHECKING:
    from txraft.member import Raft

#: Longest key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024

OP_PUT = 1
OP_DELETE = 2
OP_CAS = 3

#: Version tag written at the start of every snapshot.
SNAPSHOT_VERSION = 1


class InvalidCommand(ValueError):
    """
    A command is not a well-formed key-value command.  Raised by
    :meth:`KeyValueStore.apply` before any state changes; the caller of
    ``append()`` receives it wrapped in :class:`txraft.errors.ApplyError`.
    """


class InvalidKey(ValueError):
    """A key is empty, too long, or not valid UTF-8."""


@dataclass(frozen=True)
class WriteResult:
    """
    What applying one command returned.

    :ivar index: log index at which the command was applied.
    :ivar ok: put: always ``True``; delete: whether the key existed;
        compare-and-set: whether the value was swapped.
    :ivar current: compare-and-set only: the key's value after the command
        (the new value when ``ok``, the unchanged value otherwise; ``None``
        when absent).  ``None`` for put and delete.
    """

    index: int
    ok: bool = True
    current: Optional[bytes] = None


def check_key(key: str) -> str:
    """
    :returns: ``key`` unchanged.
    :raises TypeError: when ``key`` is not a ``str``.
    :raises InvalidKey: when it is empty, longer than :data:`MAX_KEY_BYTES`
        bytes of UTF-8, or holds lone surrogates (not encodable).
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey("key is not valid UTF-8 text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    return key


def _check_value(value: bytes, what: str = "value") -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return value


def encode_put(key: str, value: bytes) -> bytes:
    """:returns: the command (bytes) that sets ``key`` to ``value``."""
    command: bytes = codec.pack([OP_PUT, check_key(key), _check_value(value)])
    return command


def encode_delete(key: str) -> bytes:
    """:returns: the command (bytes) that removes ``key``."""
    command: bytes = codec.pack([OP_DELETE, check_key(key)])
    return command


def encode_cas(key: str, expect: Optional[bytes], value: bytes) -> bytes:
    """
    :param expect: the value ``key`` must hold for the swap to happen, or
        ``None`` meaning "``key`` must be absent".
    :returns: the command (bytes) that sets ``key`` to ``value`` only if it
        holds ``expect``.
    """
    if expect is not None:
        _check_value(expect, "expect")
    command: bytes = codec.pack([OP_CAS, check_key(key), expect, _check_value(value)])
    return command


def decode_command(command: bytes) -> Tuple[Any, ...]:
    """
    :returns: the tuple ``(op, key, *arguments)`` encoded in ``command``.
    :raises InvalidCommand: naming what is wrong with it.
    """
    try:
        fields = msgpack.unpackb(command, raw=False, use_list=True)
    except Exception as e:  # msgpack raises several types, UnicodeDecodeError among them
        raise InvalidCommand(f"not a msgpack key-value command: {e}") from None
    if not isinstance(fields, list) or not fields:
        raise InvalidCommand("a command is a non-empty msgpack array")
    op, arity = fields[0], {OP_PUT: 3, OP_DELETE: 2, OP_CAS: 4}.get(fields[0])
    if arity is None or isinstance(op, bool):
        raise InvalidCommand(f"unknown operation {op!r}")
    if len(fields) != arity:
        raise InvalidCommand(f"operation {op} takes {arity - 1} arguments, got {len(fields) - 1}")
    try:
        check_key(fields[1])
    except (TypeError, InvalidKey) as e:
        raise InvalidCommand(f"bad key: {e}") from None
    if op == OP_PUT and not isinstance(fields[2], bytes):
        raise InvalidCommand("put value must be bytes")
    if op == OP_CAS:
        if fields[2] is not None and not isinstance(fields[2], bytes):
            raise InvalidCommand("compare-and-set expect must be bytes or nil")
        if not isinstance(fields[3], bytes):
            raise InvalidCommand("compare-and-set value must be bytes")
    return tuple(fields)


class KeyValueStore(RaftClient):
    """
    A dictionary of ``str`` keys to ``bytes`` values, replicated by Raft.

    Its state changes only in :meth:`apply`, on the reactor thread, in log
    order.  :meth:`get` reads this member's copy, which may lag the leader;
    use :meth:`KeyValueClient.get` for a linearizable read.

    :ivar applied_index: log index of the last command applied (or of the
        snapshot restored), 0 at first.
    """

    def __init__(self) -> None:
        # Invariant: every key passes check_key and every value is bytes.
        self._data: Dict[str, bytes] = {}
        self.applied_index = 0

    # -- reads -----------------------------------------------------------------

    def get(self, key: str) -> Optional[bytes]:
        """:returns: this member's value of ``key``, or ``None`` when absent."""
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def items(self) -> List[Tuple[str, bytes]]:
        """:returns: a list of ``(key, value)`` pairs, sorted by key."""
        return sorted(self._data.items())

    # -- RaftClient ----------------------------------------------------------------

    def apply(self, command: bytes, index: int) -> WriteResult:
        """
        Apply a command made by :func:`encode_put`, :func:`encode_delete` or
        :func:`encode_cas`.

        :returns: a :class:`WriteResult`.
        :raises InvalidCommand: when ``command`` is malformed; nothing changes.
        """
        fields = decode_command(command)
        self.applied_index = index
        op, key = fields[0], fields[1]
        if op == OP_PUT:
            self._data[key] = fields[2]
            return WriteResult(index)
        if op == OP_DELETE:
            return WriteResult(index, self._data.pop(key, None) is not None)
        expect, value = fields[2], fields[3]
        current = self._data.get(key)
        if current != expect:
            return WriteResult(index, False, current)
        self._data[key] = value
        return WriteResult(index, True, value)

    def save_snapshot(self, fileobj: BinaryIO) -> None:
        """
        Write the whole state as one msgpack map.  The state is captured
        (serialized) before this returns, as the contract of
        :meth:`~txraft.interfaces.IRaftClient.save_snapshot` requires; values
        are immutable ``bytes``, so nothing is shared with later changes.
        """
        fileobj.write(msgpack.packb({"version": SNAPSHOT_VERSION, "applied": self.applied_index,
                                     "data": self._data}, use_bin_type=True))

    def restore_snapshot(self, index: int, fileobj: BinaryIO) -> None:
        """
        Replace the whole state with the snapshot in ``fileobj``.

        :raises InvalidCommand: when the snapshot is not one this class wrote;
            the state is then unchanged.
        """
        raw = fileobj.read()
        data: Any
        if not raw:
            data = {}
        else:
            try:
                snapshot = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            except Exception as e:
                raise InvalidCommand(f"unreadable key-value snapshot: {e}") from None
            if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
                raise InvalidCommand("not a version-1 key-value snapshot")
            data = snapshot.get("data")
            if not isinstance(data, dict) or not all(
                    isinstance(k, str) and isinstance(v, bytes) for k, v in data.items()):
                raise InvalidCommand("key-value snapshot holds a non-str key or non-bytes value")
        self._data = data
        self.applied_index = index


class _TimedAppends(Protocol):
    """What :class:`KeyValueClient` asks of its ``metrics`` (a :class:`txraft.metrics.MemberMetrics`)."""

    def timed_append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]: ...


class KeyValueClient:
    """
    The asynchronous API of a :class:`KeyValueStore` on one member: writes go
    through the Raft log (from any member; followers forward them), reads wait
    for a linearizable read point.

    :param raft: the member (a :class:`txraft.member.Raft`) replicating ``store``.
    :param store: the member's :class:`KeyValueStore`.
    :param metrics: a :class:`txraft.metrics.MemberMetrics` whose append
        latency histogram observes every write, or ``None``.
    :param timeout: default seconds each call may take (``None``: the
        member's ``request_timeout``).
    """

    def __init__(self, raft: Raft, store: KeyValueStore, metrics: Optional[_TimedAppends] = None,
                 timeout: Optional[float] = None) -> None:
        if not isinstance(store, KeyValueStore):
            raise TypeError(f"store must be a KeyValueStore, not {type(store).__name__}")
        self.raft = raft
        self.store = store
        self.metrics = metrics
        self.timeout = timeout

    def append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """
        Replicate an already encoded command (from :func:`encode_put`,
        :func:`encode_delete` or :func:`encode_cas`).

        :returns: a Deferred firing with the :class:`WriteResult`, or failing
            as :meth:`txraft.member.Raft.append` does.
        """
        timeout = self.timeout if timeout is None else timeout
        if self.metrics is not None:
            return self.metrics.timed_append(command, timeout)
        return self.raft.append(command, timeout)

    def put(self, key: str, value: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """
        Set ``key`` to ``value``.

        :returns: a Deferred firing with a :class:`WriteResult` once this
            member applied the command, or failing as
            :meth:`txraft.member.Raft.append` does.
        :raises TypeError, InvalidKey: at once, for bad arguments.
        """
        return self.append(encode_put(key, value), timeout)

    def delete(self, key: str, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """Remove ``key``.  :returns: a Deferred firing with a :class:`WriteResult`."""
        return self.append(encode_delete(key), timeout)

    def cas(self, key: str, expect: Optional[bytes], value: bytes,
            timeout: Optional[float] = None) -> defer.Deferred[Any]:
        """
        Set ``key`` to ``value`` if it holds ``expect`` (``None``: if absent).

        :returns: a Deferred firing with a :class:`WriteResult` whose ``ok``
            says whether it swapped and ``current`` is the value now held.
        """
        return self.append(encode_cas(key, expect, value), timeout)

    def get(self, key: str, stale: bool = False,
            timeout: Optional[float] = None) -> defer.Deferred[Optional[bytes]]:
        """
        Read ``key``.

        :param bool stale: read this member's copy at once, without asking the
            leader (may miss recent writes).
        :returns: a Deferred firing with the value or ``None``; by default
            only after :meth:`txraft.member.Raft.read_index` confirmed this
            member has applied every write acknowledged before the call.
        """
        check_key(key)
        if stale:
            return defer.succeed(self.store.get(key))
        timeout = self.timeout if timeout is None else timeout
        d = defer.maybeDeferred(self.raft.read_index, timeout)
        return d.addCallback(lambda _: self.store.get(key))
