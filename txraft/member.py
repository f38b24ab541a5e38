"""
:class:`Raft`, the member API: the handle an application holds on its replica.

It wires a :class:`~txraft.core.raft.RaftCore` to storage and transport, and
gives ``append()`` its guarantees: any member accepts a command (a follower
forwards it to the leader, as the seed's ``Append`` RPC does), the Deferred
fires with the value ``apply()`` returned on this member, and a command that is
retried after a lost reply or a change of leader is applied at most once
(the bookkeeping is :mod:`txraft.proposals`'s).  It depends on the storage
and transport interfaces only; :mod:`txraft.defaults` builds the default ones.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from txraft import defaults, errors
from txraft.core.observers import RaftObserver
from txraft.core.raft import RaftCore
from txraft.core.waiters import Waiters
from txraft.interfaces import IRPCHandler
from txraft.messages import Role, Status
from txraft.proposals import Proposals


class _AppliedWaiters(RaftObserver):
    """Deferreds waiting for this member to apply up to an index (for reads)."""

    def __init__(self):
        self.waiting = Waiters()

    def applied_through(self, index):
        self.waiting.release_through(index, index)


class _LeaderLog(RaftObserver):
    """
    Logs who leads each term as this member learns it, with the fields
    ``member``, ``leader`` and ``term``.  The winner of an election logs
    "ID leads term N" from the core (with the same fields).
    """

    log = Logger()

    def __init__(self, member):
        self.member = member

    def leader_changed(self, leader, term):
        if leader and leader != self.member:
            self.log.info("{member} follows {leader}, leader of term {term}",
                          member=self.member, leader=leader, term=term)


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
        self._proposals = None  # the pending appends, once the core exists
        self._applied_waiters = _AppliedWaiters()

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
        """Every member's id, sorted."""
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
            self._storage = defaults.default_storage(self.config, self.reactor)
        yield defer.maybeDeferred(self._storage.open)
        if self._transport is None:
            self._transport = defaults.default_transport(self.config, self.reactor)
        # Listen first: with port 0 the member id is only known afterwards.
        # Requests that arrive before the core exists are refused as Stopped.
        listening = yield self._transport.start(self)
        self._adopt_address(listening)
        self.core = RaftCore(self.id, self._members, self._storage, self._transport,
                             self.client, self.reactor, self.rng, self.config)
        self._proposals = Proposals(self.core, self.reactor, self.config, self._session)
        self.core.add_observer(self._proposals)
        self.core.add_observer(self._applied_waiters)
        self.core.add_observer(_LeaderLog(self.id))
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
        if self._proposals is not None:
            self._proposals.stop(errors.Stopped(f"member {self.id} {how}"))
        self._applied_waiters.waiting.fail(errors.Stopped(f"member {self.id} {how}"))

    # -- queries ---------------------------------------------------------------

    def status(self):
        """:returns: a :class:`~txraft.messages.Status`."""
        if self.core is None:
            return Status(self.id, Role.STOPPED if self._state == "stopped" else Role.FOLLOWER, "", 0, 0, 0, 0,
                          self.members)
        return self.core.status()

    @property
    def queued_appends(self):
        """``append()`` calls waiting in this member's admission queue (backpressure)."""
        return self._proposals.waiting if self._proposals is not None else 0

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
                index = yield self.core.read_index()
                break
            except (errors.NotLeader, errors.TransportError, defer.TimeoutError, defer.CancelledError):
                if self.reactor.seconds() >= deadline or self._state != "running":
                    raise errors.NoQuorum("no leader confirmed a read point in time")
                yield self._sleep(self.config.heartbeat)
        if self.core.applied_index < index:
            waiter = self._applied_waiters.waiting.wait(index)
            waiter.addTimeout(max(deadline - self.reactor.seconds(), 0), self.reactor)
            try:
                yield waiter
            except defer.TimeoutError:
                raise errors.Timeout(f"not applied up to {index} in time") from None
        return index

    def _sleep(self, seconds):
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
            still be applied, but never twice),
            :class:`~txraft.errors.Busy` (at once: the leader holds as much
            uncommitted work as its configuration allows and this member's
            admission queue is full, or the call's timeout passed while it
            was queued; nothing was stored, retry after ``retry_after``
            seconds), or
            :class:`~txraft.errors.Stopped`.
        :raises TypeError: at once, when ``command`` is not bytes.
        """
        if not isinstance(command, bytes):
            raise TypeError(f"append() takes bytes, not {type(command).__name__}")
        if self._state != "running":
            return defer.fail(errors.Stopped(f"member {self.id} is not running"))
        return self._proposals.append(command, timeout)
