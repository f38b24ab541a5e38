"""
:class:`Raft`, the member API: the handle an application holds on its replica.

It wires a :class:`~txraft.core.raft.RaftCore` to storage and transport, and
gives ``append()`` its guarantees: any member accepts a command (a follower
forwards it to the leader, as the seed's ``Append`` RPC does), the Deferred
fires with the value ``apply()`` returned on this member, and a command that is
retried after a lost reply or a change of leader is applied at most once.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txraft import errors
from txraft import messages as m
from txraft.core.raft import DUPLICATE, LEADER, STOPPED, RaftCore, Status
from txraft.interfaces import IRPCHandler


class _Pending:
    """One ``append()`` waiting for its command to be applied here."""

    __slots__ = ("command", "seq", "deferred", "placed", "timer", "retry")

    def __init__(self, command, seq, deferred):
        self.command = command
        self.seq = seq
        self.deferred = deferred
        self.placed = None  # (term, index) the leader reported, or None
        self.timer = None
        self.retry = None


@implementer(IRPCHandler)
class Raft:
    """
    One member of a Raft cluster.

    :param config: a :class:`txraft.RaftConfig`; ``config.listen`` is the
        member id.
    :param client: the replicated application (a :class:`txraft.RaftClient`).
    :param reactor: provides ``IReactorTime`` (and networking for the default
        transport); defaults to the global reactor.
    :param transport: an :class:`~txraft.interfaces.ITransport`; defaults to
        AMP over TLS built from ``config``.
    :param storage: an :class:`~txraft.interfaces.IStorage`; defaults to the
        disk store in ``config.log_dir``, or memory when that is ``None``.
    :param rng: a ``random.Random`` for election timeouts and session ids.
    """

    log = Logger()

    def __init__(self, config, client, reactor=None, transport=None, storage=None, rng=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.client = client
        self.reactor = reactor
        self.rng = rng if rng is not None else random.Random()
        self.id = config.listen
        self._members = [self.id]
        self._transport = transport
        self._storage = storage
        self.core = None
        self._state = "new"
        self._session = "%032x" % self.rng.getrandbits(128)
        self._next_seq = 1
        self._pending = {}  # seq -> _Pending
        self._placed = {}  # index -> seq, for pending commands the leader has placed
        self._apply_waiters = []  # [(index, Deferred)] fired once applied_index reaches index

    # -- membership and lifecycle -----------------------------------------

    def add_member(self, member_id):
        """
        Add a member (``"host:port"``) to the cluster.  Only before :meth:`start`.

        :raises RaftError: after start.
        """
        if self._state != "new":
            raise errors.RaftError("members can only be added before start()")
        if not isinstance(member_id, str) or not member_id:
            raise TypeError(f"member id must be a non-empty str, got {member_id!r}")
        if member_id not in self._members:
            self._members.append(member_id)

    @property
    def members(self):
        return tuple(sorted(self._members))

    @defer.inlineCallbacks
    def start(self):
        """
        Open storage, restore the application from its latest snapshot, start
        listening and start the election timer.

        :returns: a Deferred that fires when the member runs.
        """
        if self._state != "new":
            raise errors.Stopped(f"member {self.id} was already started; stopped members cannot restart")
        self._state = "starting"
        if self._storage is None:
            self._storage = self._default_storage()
        opener = getattr(self._storage, "open", None)
        if opener is not None:
            yield defer.maybeDeferred(opener)
        if self._transport is None:
            self._transport = self._default_transport()
        # Listen first: with port 0 the member id is only known afterwards.
        # Requests that arrive before the core exists are refused as Stopped.
        listening = yield self._transport.start(self)
        self._adopt_address(listening if isinstance(listening, str) else getattr(self._transport, "address", None))
        self.core = RaftCore(self.id, self._members, self._storage, self._transport,
                             self.client, self.reactor, self.rng, self.config)
        self.core.on_apply.append(self._on_apply)
        self.core.on_leader_change.append(self._on_leader_change)
        self.core.on_restore.append(self._on_restore)
        self.core.on_applied.append(self._on_applied)
        self.core.start()
        self._state = "running"

    def _adopt_address(self, address):
        """With ``listen`` on port 0, the id becomes the address actually bound."""
        if not self.id.endswith(":0") or not isinstance(address, str) or address.endswith(":0"):
            return
        self._members = [address if member == self.id else member for member in self._members]
        self.id = address

    def receive(self, message):
        """:class:`~txraft.interfaces.IRPCHandler`: hand a member RPC to the core."""
        if self.core is None:
            return defer.fail(errors.Stopped(f"member {self.id} is starting"))
        return self.core.receive(message)

    def _default_storage(self):
        if self.config.log_dir is None:
            from txraft.storage.memory import MemoryStorage

            return MemoryStorage()
        from txraft.storage.disk import DiskStorage

        return DiskStorage(self.config.log_dir, fsync=self.config.fsync, reactor=self.reactor)

    def _default_transport(self):
        from txraft.transport.amp import AMPTransport

        return AMPTransport.from_config(self.config, self.reactor)

    @defer.inlineCallbacks
    def stop(self):
        """
        Stop the member: fail waiting ``append()`` calls with
        :class:`~txraft.errors.Stopped`, close the transport and flush storage.
        A stopped member cannot be started again.
        """
        if self._state in ("stopping", "stopped"):
            return
        previous, self._state = self._state, "stopping"
        self._halt("stopped")
        if self._transport is not None and previous != "new":
            yield self._transport.stop()
        if self._storage is not None and previous != "new":
            yield self._storage.close()
        self._state = "stopped"

    def crash(self):
        """
        Stop at once without flushing anything (for simulations): timers are
        cancelled and waiting ``append()`` calls fail; storage and transport
        are left to the caller.
        """
        self._state = "stopped"
        self._halt("crashed")

    def _halt(self, how):
        """Stop the core and fail everything waiting on this member with Stopped."""
        if self.core is not None:
            self.core.stop()
        for pending in list(self._pending.values()):
            self._finish(pending, errors.Stopped(f"member {self.id} {how}"))
        waiters, self._apply_waiters = self._apply_waiters, []
        for _, waiter in waiters:
            waiter.errback(errors.Stopped(f"member {self.id} {how}"))

    # -- queries ---------------------------------------------------------------

    def status(self):
        """:returns: a :class:`~txraft.core.raft.Status`."""
        if self.core is None:
            return Status(self.id, STOPPED if self._state == "stopped" else "follower", "", 0, 0, 0, 0,
                          self.members)
        return self.core.status()

    def start_election(self):
        """Force this member to stand for election now (the seed's StartElection)."""
        if self.core is None or self._state != "running":
            raise errors.Stopped(f"member {self.id} is not running")
        self.core.start_election()

    @defer.inlineCallbacks
    def read_index(self, timeout=None):
        """
        Wait until this member has applied every command committed before the
        call (a linearizable read point, Raft dissertation section 6.4).

        :returns: a Deferred firing with the index; the application's state may
            then be read locally.
        """
        if self._state != "running":
            raise errors.Stopped(f"member {self.id} is not running")
        deadline = self.reactor.seconds() + (timeout or self.config.request_timeout)
        while True:
            try:
                if self.core.role == LEADER:
                    index = yield self.core.read_index()
                elif self.core.leader:
                    reply = yield self.core._call(self.core.leader, m.ReadIndex())
                    index = reply.index
                else:
                    raise errors.NotLeader("")
                break
            except (errors.NotLeader, errors.TransportError, defer.TimeoutError, defer.CancelledError):
                if self.reactor.seconds() >= deadline or self._state != "running":
                    raise errors.NoQuorum("no leader confirmed a read point in time")
                yield self._sleep(self.config.heartbeat)
        if self.core.applied_index < index:
            waiter = defer.Deferred()
            self._apply_waiters.append((index, waiter))
            waiter.addTimeout(max(deadline - self.reactor.seconds(), 0), self.reactor)
            try:
                yield waiter
            except defer.TimeoutError:
                raise errors.Timeout(f"not applied up to {index} in time") from None
        return index

    def _on_applied(self, applied):
        if not self._apply_waiters:
            return
        ready = [w for w in self._apply_waiters if w[0] <= applied]
        self._apply_waiters = [w for w in self._apply_waiters if w[0] > applied]
        for _, waiter in ready:
            waiter.callback(applied)

    def _sleep(self, seconds):
        from twisted.internet.task import deferLater

        return deferLater(self.reactor, seconds, lambda: None)

    # -- append ----------------------------------------------------------------

    def append(self, command, timeout=None):
        """
        Replicate ``command`` and wait until this member has applied it.

        :param bytes command: the command; ``apply()`` receives it unchanged.
        :param float timeout: seconds to wait (default ``config.request_timeout``).
        :returns: a Deferred firing with what ``apply()`` returned here, or
            failing with :class:`~txraft.errors.ApplyError` (``apply()``
            raised), :class:`~txraft.errors.Timeout` (outcome unknown: it may
            still be applied, but never twice), or
            :class:`~txraft.errors.Stopped`.
        :raises TypeError: at once, when ``command`` is not bytes.
        """
        if not isinstance(command, bytes):
            raise TypeError(f"append() takes bytes, not {type(command).__name__}")
        if self._state != "running":
            return defer.fail(errors.Stopped(f"member {self.id} is not running"))
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        d = defer.Deferred()
        pending = self._pending[seq] = _Pending(command, seq, d)
        limit = self.config.request_timeout if timeout is None else timeout
        pending.timer = self.reactor.callLater(limit, self._expire, pending)
        self._submit(pending)
        return d

    def _request_id(self, pending):
        return m.RequestId(self._session, pending.seq, min(self._pending, default=pending.seq))

    def _submit(self, pending):
        if pending.seq not in self._pending or self._state != "running":
            return
        self._forget_placement(pending)
        core = self.core
        request_id = self._request_id(pending)
        if core.role == LEADER:
            self._placed_at(pending, *core.propose(pending.command, request_id))
        elif core.leader:
            d = core._call(core.leader, m.ForwardAppend(pending.command, request_id))
            d.addCallbacks(lambda reply: self._placed_at(pending, reply.term, reply.index),
                           lambda failure: self._retry_later(pending, failure))
        # With no leader known, wait for _on_leader_change.

    def _placed_at(self, pending, term, index):
        if pending.seq not in self._pending:
            return
        pending.placed = (term, index)
        if index <= self.core.applied_index:
            # Applied before the reply arrived; if it is ours, _on_apply
            # resolved it already.  If it is not ours, it was lost: resubmit.
            if self.core.storage.term_at(index) != term:
                self._retry_later(pending, None)
            return
        self._placed[index] = pending.seq

    def _forget_placement(self, pending):
        if pending.placed is not None:
            if self._placed.get(pending.placed[1]) == pending.seq:
                del self._placed[pending.placed[1]]
            pending.placed = None

    def _retry_later(self, pending, failure):
        if pending.seq not in self._pending or pending.retry is not None:
            return
        if failure is not None:
            self.log.debug("{member}: append retry after {error}", member=self.id,
                           error=failure.getErrorMessage())

        def retry():
            pending.retry = None
            self._submit(pending)

        pending.retry = self.reactor.callLater(self.config.heartbeat, retry)

    def _expire(self, pending):
        pending.timer = None
        if self.core is not None and not self.core.leader:
            error = errors.NoQuorum(
                "append() timed out with no leader known to this member; "
                "the command may still be applied (at most once)")
        else:
            error = errors.Timeout("append() timed out; the command may still be applied (at most once)")
        self._finish(pending, error)

    def _finish(self, pending, outcome):
        if self._pending.pop(pending.seq, None) is None:
            return
        self._forget_placement(pending)
        for call in (pending.timer, pending.retry):
            if call is not None and call.active():
                call.cancel()
        pending.timer = pending.retry = None
        if isinstance(outcome, Exception):
            pending.deferred.errback(outcome)
        else:
            pending.deferred.callback(outcome)

    # -- notifications from the core -------------------------------------------

    def _on_apply(self, entry, outcome):
        rid = entry.request_id
        if rid is not None and rid.session == self._session and rid.seq in self._pending:
            pending = self._pending[rid.seq]
            if outcome is DUPLICATE:
                # An earlier copy was applied; it resolved this append already
                # unless that happened before we were waiting.
                outcome = errors.ResultUnavailable(
                    f"command already applied; result at index {entry.index} is a duplicate")
            self._finish(pending, outcome)
        seq = self._placed.pop(entry.index, None)
        if seq is not None and seq in self._pending:
            # Another entry took the place the leader gave us: ours was lost
            # with a change of leader.  Submit again (deduplicated if needed).
            pending = self._pending[seq]
            pending.placed = None
            self._retry_later(pending, None)

    def _on_leader_change(self, leader):
        if not leader:
            return
        # A new leader may not hold what the old one placed, and nothing may
        # ever be written at that index again to tell us so.  Submit every
        # waiting command again: the session table applies each at most once.
        for pending in list(self._pending.values()):
            if pending.placed is not None and pending.placed[0] >= self.core.term:
                continue  # placed by this very leader
            self._forget_placement(pending)
            if pending.retry is None:
                self._retry_later(pending, None)

    def _on_restore(self, meta):
        for pending in list(self._pending.values()):
            if self.core.sessions.applied(self._request_id(pending)):
                self._finish(pending, errors.ResultUnavailable(
                    "command applied; this member learnt of it from a snapshot, so its result is unknown"))
            elif pending.placed is not None and pending.placed[1] <= meta.index:
                self._forget_placement(pending)
                self._retry_later(pending, None)
