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
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, List, NoReturn, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft import defaults, errors
from txraft import messages as m
from txraft.config import RaftConfig, parse_host_port
from txraft.core.membership import Configuration
from txraft.core.observers import RaftObserver
from txraft.core.raft import RaftCore
from txraft.core.waiters import Waiters
from txraft.interfaces import IRaftClient, IRPCHandler, IStorage, ITransport
from txraft.messages import Role, Status
from txraft.proposals import Proposals


@dataclass(frozen=True)
class MemberStatus:
    """
    One member as :meth:`txraft.Raft.membership` reports it.

    :ivar id: ``HOST:PORT``.
    :ivar name: its certificate name (``""``: none recorded).
    :ivar voter: whether it votes (else a learner).
    :ivar match_index: on the leader, the last index known to match the
        leader's log (the leader's own last index for itself); else ``None``.
    :ivar leaving: it belongs to the outgoing half of a joint configuration only.
    """

    id: str
    name: str = ""
    voter: bool = True
    match_index: Optional[int] = None
    leaving: bool = False


@dataclass(frozen=True)
class Membership:
    """
    :ivar leader: the leader this member knows of, or ``""``.
    :ivar members: a :class:`MemberStatus` per member, sorted by id.
    :ivar change: on the leader, the configuration change in flight, as text; else ``None``.
    """

    leader: str
    members: Tuple[MemberStatus, ...]
    change: Optional[str] = None


class _ConfigurationFollower(RaftObserver):
    """Tells the transport of each new configuration (its ACL follows the members)."""

    def __init__(self, follow: Callable[[Configuration], object]) -> None:
        self.follow = follow

    def configuration_changed(self, configuration: Configuration) -> None:
        self.follow(configuration)


class _AppliedWaiters(RaftObserver):
    """Deferreds waiting for this member to apply up to an index (for reads)."""

    def __init__(self) -> None:
        self.waiting = Waiters()

    def applied_through(self, index: int) -> None:
        self.waiting.release_through(index, index)


class _LeaderLog(RaftObserver):
    """
    Logs who leads each term as this member learns it, with the fields
    ``member``, ``leader`` and ``term``.  The winner of an election logs
    "ID leads term N" from the core (with the same fields).
    """

    log = Logger()

    def __init__(self, member: str) -> None:
        self.member = member

    def leader_changed(self, leader: str, term: int) -> None:
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

    :ivar reads: :meth:`read_index` calls ended, by outcome: ``"ok"`` (a
        linearizable read served), ``"no_quorum"``, ``"timeout"`` and
        ``"stopped"``; plain counts, read by the metrics at scrape time.
    """

    log = Logger()

    def __init__(self, config: RaftConfig, client: IRaftClient, reactor: Optional[IReactorTime] = None,
                 transport: Optional[ITransport] = None, storage: Optional[IStorage] = None,
                 rng: Optional[random.Random] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        assert reactor is not None  # mypy does not count the import as narrowing it
        self.config = config
        self.client = client
        self.reactor = reactor
        self.rng = rng if rng is not None else random.Random()
        self.id = config.listen
        self._members = [self.id]
        self._names = dict(config.peer_names or {})
        self._joining = bool(config.join)
        self._contacts = tuple(config.join)
        self._join_call: Optional[IDelayedCall] = None
        self._transport = transport
        self._storage = storage
        self.core: Optional[RaftCore] = None
        self._state = "new"
        self._session = "%032x" % self.rng.getrandbits(128)
        self._proposals: Optional[Proposals] = None  # the pending appends, once the core exists
        self._applied_waiters = _AppliedWaiters()
        self.reads = {"ok": 0, "no_quorum": 0, "timeout": 0, "stopped": 0}

    # -- membership and lifecycle -----------------------------------------

    def add_member(self, member_id: str, name: Optional[str] = None,
                   voter: bool = True) -> Optional[defer.Deferred[Configuration]]:
        """
        Add a member (``"host:port"``) to the cluster.

        Before :meth:`start` this lists a member of the bootstrap
        configuration, as every member of a new cluster does for all the
        others, and returns ``None``.  After start it proposes the change to
        the leader (see :doc:`/membership`): the member joins as a learner
        and, when ``voter`` and ``config.auto_promote``, is promoted once it
        has caught up.

        :param str name: the certificate name the member presents.
        :returns: after start, a Deferred firing once the addition is
            committed, or failing with :class:`~txraft.errors.MembershipError`
            (already a member, a change in flight:
            :class:`~txraft.errors.ChangeInProgress`),
            :class:`~txraft.errors.NotLeader` or
            :class:`~txraft.errors.Timeout`.
        :raises TypeError: for an id that is not a non-empty str.
        :raises ConfigurationError: for an id that is not ``HOST:PORT``.
        """
        if not isinstance(member_id, str) or not member_id:
            raise TypeError(f"member id must be a non-empty str, got {member_id!r}")
        parse_host_port(member_id, "member id")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if self._state == "new":
            if member_id not in self._members:
                self._members.append(member_id)
            if name:
                self._names[member_id] = name
            return None
        return self._change("add", member_id, name or "", bool(voter))

    def join(self, contacts: Optional[Iterable[str]] = None) -> None:
        """
        Before :meth:`start`: start with no configuration of its own and wait
        to be added to a running cluster (a log that already holds a
        configuration wins).  With ``contacts`` (``HOST:PORT`` of members)
        the member asks them, in turn, to add it, as ``twistd raft --join``
        does; otherwise an operator adds it (:meth:`add_member` elsewhere).

        :raises RaftError: after start.
        """
        if self._state != "new":
            raise errors.RaftError("join() must be called before start()")
        if contacts is not None:
            contacts = tuple(contacts)
            for contact in contacts:
                parse_host_port(contact, "join")
            self._contacts = contacts
        self._joining = True

    def remove_member(self, member_id: str) -> defer.Deferred[Configuration]:
        """
        Remove ``member_id`` from the cluster (after :meth:`start`).  A leader
        that removes itself hands over and steps down once the change commits.

        :returns: a Deferred firing once the removal is committed, or failing
            with :class:`~txraft.errors.UnknownMember`,
            :class:`~txraft.errors.MembershipError` (it is the last voter),
            :class:`~txraft.errors.ChangeInProgress`, ...
        """
        return self._change("remove", member_id)

    def promote(self, member_id: str) -> defer.Deferred[Configuration]:
        """
        Make the learner ``member_id`` a voter.

        :returns: a Deferred firing once the promotion is committed, or
            failing with :class:`~txraft.errors.MembershipError` when it has
            not caught up with the leader's log or already votes.
        """
        return self._change("promote", member_id)

    def _change(self, action: str, member_id: str, name: str = "",
                voter: bool = True) -> defer.Deferred[Configuration]:
        if not isinstance(member_id, str) or not member_id:
            raise TypeError(f"member id must be a non-empty str, got {member_id!r}")
        if self._state != "running":
            return defer.fail(errors.Stopped(f"member {self.id} is not running"))
        d = defer.ensureDeferred(self._change_when_ready(action, member_id, name, voter))
        d.addTimeout(self.config.request_timeout, self.reactor, self._change_timed_out)
        return d

    async def _change_when_ready(self, action: str, member_id: str, name: str, voter: bool) -> Configuration:
        assert self.core is not None
        while True:
            try:
                placed = await self.core.change_members(action, member_id, name, voter)
                break
            except defer.TimeoutError:
                raise errors.Timeout(f"the leader did not answer the {action} request in time; "
                                     "it may still take effect") from None
            except (errors.LeaderNotReady, errors.NotLeader) as e:
                # Nothing was proposed: a leader that has just been elected,
                # or none known yet.  Ask again in a moment.
                if isinstance(e, errors.NotLeader) and e.leader or self._state != "running":
                    raise
                await self._sleep(self.config.heartbeat)
        return await self.core.wait_for_change(*placed)

    @staticmethod
    def _change_timed_out(result: object, timeout: float) -> NoReturn:
        raise errors.Timeout(f"the membership change did not complete within {timeout} seconds; "
                             "it may still take effect")

    def transfer_leadership(self, to: Optional[str] = None) -> defer.Deferred[str]:
        """
        Hand leadership over to the voter ``to``, or to the most up-to-date
        voter (Raft dissertation section 3.10).  The leader accepts no new
        command meanwhile (they wait and go to the next leader), and leads on
        if the transfer has not completed within an election timeout.

        :returns: a Deferred firing with the new leader's id once this member
            sees it lead, or failing with :class:`~txraft.errors.Timeout`,
            :class:`~txraft.errors.NotLeader`, or
            :class:`~txraft.errors.MembershipError` for a ``to`` that cannot lead.
        """
        if to is not None and (not isinstance(to, str) or not to):
            raise TypeError(f"to must be a member id or None, got {to!r}")
        if self._state != "running":
            return defer.fail(errors.Stopped(f"member {self.id} is not running"))
        return self._transfer(to)

    def _transfer(self, to: Optional[str]) -> defer.Deferred[str]:
        assert self.core is not None
        deadline = self.reactor.seconds() + 2 * self.config.election_base + self.config.rpc_timeout
        before = self.core.leader
        d = self.core.transfer_leadership(to)
        d.addErrback(lambda f: f.trap(defer.TimeoutError) and defer.fail(errors.Timeout(
            "the leader did not answer the transfer request in time")))
        return d.addCallback(self._await_new_leader, before, deadline)

    @defer.inlineCallbacks
    def _await_new_leader(self, target: str, previous: str,
                          deadline: float) -> Generator[defer.Deferred[Any], Any, str]:
        assert self.core is not None
        while self._state in ("running", "stopping") and self.core.role is not Role.STOPPED:
            leader = self.core.leader
            if leader and (leader == target or leader != previous):
                return leader
            if self.reactor.seconds() >= deadline:
                raise errors.Timeout(f"leadership went to {target}, but no new leader was seen in time")
            yield self._sleep(self.config.heartbeat / 4)
        raise errors.Stopped(f"member {self.id} stopped")

    @property
    def members(self) -> Tuple[str, ...]:
        """Ids of every member of the configuration in effect (sorted)."""
        if self.core is not None:
            return self.core.members
        return tuple(sorted(self._members))

    def membership(self) -> Membership:
        """
        :returns: a :class:`~txraft.member.Membership`: the leader this member knows of, each
            member's id, certificate name and role, and, on the leader, how
            far each member's log matches and the change in flight.
        """
        if self.core is None:
            configuration = Configuration.bootstrap(self._members, self._names)
            return Membership("", tuple(MemberStatus(x.id, x.name, x.voter) for x in configuration.members))
        core = self.core
        configuration = core.configuration
        leading = core.role is Role.LEADER
        listed: List[MemberStatus] = []
        for member in configuration.members + (configuration.old or ()):
            if any(x.id == member.id for x in listed):
                continue
            match = None
            if leading:
                progress = core.progress_of(member.id)
                match = core.storage.last_index if member.id == self.id else (
                    progress.match_index if progress is not None else None)
            listed.append(MemberStatus(member.id, member.name, configuration.is_voter(member.id), match,
                                       leaving=member not in configuration.members))
        change = configuration.describe() if leading and core.change_in_flight() else None
        return Membership(core.leader, tuple(listed), change)

    @defer.inlineCallbacks
    def start(self) -> Generator[defer.Deferred[Any], Any, None]:
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
        bootstrap = Configuration.bootstrap(self._members, self._names)
        if self._joining and self._storage.last_index == 0:
            # Waits to be added.  A member that holds a log (restarted after
            # joining, or bootstrapped) takes its configuration from it.
            bootstrap = Configuration(())
        self.core = RaftCore(self.id, bootstrap, self._storage, self._transport,
                             self.client, self.reactor, self.rng, self.config)
        self._proposals = Proposals(self.core, self.reactor, self.config, self._session)
        self.core.add_observer(self._proposals)
        self.core.add_observer(self._applied_waiters)
        self.core.add_observer(_LeaderLog(self.id))
        follow = getattr(self._transport, "follow_configuration", None)
        if follow is not None:
            self.core.add_observer(_ConfigurationFollower(follow))
        self.core.add_observer(_ConfigurationFollower(self._on_configuration))
        self.core.start()
        self._state = "running"
        if self._joining and self._contacts and self.id not in self.core.members:
            self._ask_to_join(0)

    def _ask_to_join(self, attempt: int) -> None:
        """Ask the contacts in turn to add this member, until one has (``--join``)."""
        assert self.core is not None and self._transport is not None
        self._join_call = None
        if self._state != "running" or self.id in self.core.members:
            return
        contact = self._contacts[attempt % len(self._contacts)]
        request = m.ChangeMembers("add", self.id, self.config.name, True)
        d = self._transport.send(contact, request)
        d.addTimeout(self.config.rpc_timeout, self.reactor)

        def refused(failure: Failure) -> None:
            if failure.check(errors.MembershipError) and "already a member" in failure.getErrorMessage():
                return
            self.log.info("{member}: asking {contact} to add it failed: {error}", member=self.id,
                          contact=contact, error=failure.getErrorMessage())
            if self._state == "running":
                self._join_call = self.reactor.callLater(
                    min(5 * self.config.heartbeat * (attempt + 1), 5.0), self._ask_to_join, attempt + 1)

        d.addCallbacks(lambda reply: self.log.info("{member} added by the cluster at {index}",
                                                   member=self.id, index=reply.index), refused)

    def _on_configuration(self, configuration: Configuration) -> None:
        assert self.core is not None and self._proposals is not None
        if self.core.removed():
            # Nothing more will be applied here: answer waiting appends now.
            self._proposals.fail_waiting(errors.MembershipError(f"{self.id} was removed from the cluster"))

    def _adopt_address(self, address: object) -> None:
        """With ``listen`` on port 0, the id becomes the address actually bound."""
        if not self.id.endswith(":0") or not isinstance(address, str) or address.endswith(":0"):
            return
        self._members = [address if member == self.id else member for member in self._members]
        self.id = address

    def receive(self, message: Any) -> defer.Deferred[Any]:
        """:class:`~txraft.interfaces.IRPCHandler`: hand a member RPC to the core."""
        if self.core is None:
            return defer.fail(errors.Stopped(f"member {self.id} is starting"))
        return self.core.receive(message)

    @defer.inlineCallbacks
    def stop(self, transfer: bool = False) -> Generator[defer.Deferred[Any], Any, None]:
        """
        Stop the member: fail waiting ``append()`` calls with
        :class:`~txraft.errors.Stopped`, close the transport and flush storage.
        A stopped member cannot be started again.

        :param bool transfer: when this member leads, first hand leadership
            to the most up-to-date voter (waiting at most two election
            timeouts), so that clients see no failover delay.
        """
        if self._state in ("stopping", "stopped"):
            return
        previous, self._state = self._state, "stopping"
        if transfer and previous == "running" and self.core is not None and self.core.role is Role.LEADER \
                and len(self.core.configuration.voters) > 1:
            # Hand over first, so that a rolling restart loses (almost) no writes.
            try:
                yield self._transfer(None)
            except Exception as e:
                self.log.info("{member}: no leadership transfer before stopping: {error}",
                              member=self.id, error=e)
        self._halt("stopped")
        if self._transport is not None and previous != "new":
            yield self._transport.stop()
        if self._storage is not None and previous != "new":
            yield self._storage.close()
        self._state = "stopped"

    def crash(self) -> None:
        """
        Stop at once without flushing anything (for simulations): timers are
        cancelled and waiting ``append()`` calls fail; storage and transport
        are left to the caller.
        """
        self._state = "stopped"
        self._halt("crashed")

    def _halt(self, how: str) -> None:
        """Stop the core and fail everything waiting on this member with Stopped."""
        if self._join_call is not None and self._join_call.active():
            self._join_call.cancel()
        self._join_call = None
        if self.core is not None:
            self.core.stop()
        if self._proposals is not None:
            self._proposals.stop(errors.Stopped(f"member {self.id} {how}"))
        self._applied_waiters.waiting.fail(errors.Stopped(f"member {self.id} {how}"))

    # -- queries ---------------------------------------------------------------

    def status(self) -> Status:
        """:returns: a :class:`~txraft.messages.Status`."""
        if self.core is None:
            return Status(self.id, Role.STOPPED if self._state == "stopped" else Role.FOLLOWER, "", 0, 0, 0, 0,
                          self.members)
        return self.core.status()

    @property
    def queued_appends(self) -> int:
        """``append()`` calls waiting in this member's admission queue (backpressure)."""
        return self._proposals.waiting if self._proposals is not None else 0

    def start_election(self) -> None:
        """Force this member to stand for election now (the seed's StartElection)."""
        if self.core is None or self._state != "running":
            raise errors.Stopped(f"member {self.id} is not running")
        self.core.start_election()

    @defer.inlineCallbacks
    def read_index(self, timeout: Optional[float] = None) -> Generator[defer.Deferred[Any], Any, int]:
        """
        Wait until this member has applied every command committed before the
        call (a linearizable read point, Raft dissertation section 6.4).

        :returns: a Deferred firing with the index; the application's state may
            then be read locally.
        """
        if self._state != "running":
            self.reads["stopped"] += 1
            raise errors.Stopped(f"member {self.id} is not running")
        assert self.core is not None
        deadline = self.reactor.seconds() + (timeout or self.config.request_timeout)
        while True:
            try:
                index: int = yield self.core.read_index()
                break
            except (errors.NotLeader, errors.TransportError, defer.TimeoutError, defer.CancelledError):
                if self.reactor.seconds() >= deadline or self._state != "running":
                    self.reads["no_quorum"] += 1
                    raise errors.NoQuorum("no leader confirmed a read point in time")
                yield self._sleep(self.config.heartbeat)
            except errors.Stopped:
                self.reads["stopped"] += 1
                raise
        if self.core.applied_index < index:
            waiter = self._applied_waiters.waiting.wait(index)
            waiter.addTimeout(max(deadline - self.reactor.seconds(), 0), self.reactor)
            try:
                yield waiter
            except defer.TimeoutError:
                self.reads["timeout"] += 1
                raise errors.Timeout(f"not applied up to {index} in time") from None
            except errors.Stopped:
                self.reads["stopped"] += 1
                raise
        self.reads["ok"] += 1
        return index

    def _sleep(self, seconds: float) -> defer.Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    # -- append ----------------------------------------------------------------

    def append(self, command: bytes, timeout: Optional[float] = None) -> defer.Deferred[Any]:
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
            admission queue is full; or the call's timeout passed while it
            was queued, or while a busy leader kept refusing it; nothing was
            stored, retry after ``retry_after`` seconds), or
            :class:`~txraft.errors.Stopped`.
        :raises TypeError: at once, when ``command`` is not bytes.
        """
        if not isinstance(command, bytes):
            raise TypeError(f"append() takes bytes, not {type(command).__name__}")
        if self._state != "running":
            return defer.fail(errors.Stopped(f"member {self.id} is not running"))
        assert self._proposals is not None
        return self._proposals.append(command, timeout)
