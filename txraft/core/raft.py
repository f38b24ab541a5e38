"""
The Raft protocol state machine of one member: hard state, roles, dispatch,
commit and apply.

:class:`RaftCore` implements the Raft paper (Ongaro and Ousterhout, "In Search
of an Understandable Consensus Algorithm", 2014) and the client rules of
Ongaro's dissertation.  Each concern has a module of its own, mixed into the
one class because they share one member's state:

==========================================  =============================================
:mod:`txraft.core.raft` (this module)       hard state (Figure 2), role changes, dispatch of
                                            requests and replies, commit and apply (5.3),
                                            deduplication (dissertation 6.3)
:mod:`txraft.core.roles`                    the state each role keeps, made on entering it
:mod:`txraft.core.election`                 election timer, pre-vote, votes (5.2, 5.4.1, 9.6)
:mod:`txraft.core.replication`              AppendEntries both ways, commit by counting
                                            (5.3, 5.4.2)
:mod:`txraft.core.snapshot_transfer`        InstallSnapshot both ways (7)
:mod:`txraft.core.compaction`               taking and restoring own snapshots (7)
:mod:`txraft.core.reads`                    ReadIndex (dissertation 6.4)
:mod:`txraft.core.reconfiguration`          membership changes: the configuration in
                                            effect, joint consensus, learners (diss. 4)
:mod:`txraft.core.transfer`                 leadership transfer, TimeoutNow (diss. 3.10)
:mod:`txraft.core.observers`                telling the member API, metrics and the
                                            application what happened
:mod:`txraft.core.waiters`                  Deferreds waiting for a round or an index
:mod:`txraft.core.progress`,                the leader's view of a follower; majorities;
:mod:`~txraft.core.quorum`,                 configurations; the session table; the
:mod:`~txraft.core.membership`,             snapshot header
:mod:`~txraft.core.sessions`,
:mod:`~txraft.core.snapshot_header`
==========================================  =============================================

It owns no socket, file, clock or random generator: time comes from an
injected ``IReactorTime``, randomness from an injected ``random.Random``,
persistence goes through an :class:`~txraft.interfaces.IStorage` and messages
through an :class:`~txraft.interfaces.ITransport`.  Given the same inputs it
takes the same steps, which is what lets :mod:`txraft.testing` replay a
failing schedule from its seed.

Requests from other members come in through :meth:`RaftCore.receive`; replies
to the core's own requests through :meth:`RaftCore.receive_reply` (or
:meth:`RaftCore.request_failed`), which is also what the core's own send path
calls, so tests can play any peer by hand.

The durability rule: no reply that depends on the term, the vote or the log
leaves before storage reports those writes durable, and a leader counts itself
towards a commit quorum only for entries it has made durable.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, NoReturn, Optional, Tuple, Type, TypeVar, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft import errors
from txraft import messages as m
from txraft.config import RaftConfig
from txraft.core.compaction import Compaction
from txraft.core.deadlines import Deadlines
from txraft.core.election import Election
from txraft.core.membership import Configuration
from txraft.core.observers import ClientObserver, Observers
from txraft.core.progress import Progress
from txraft.core.reads import Reads
from txraft.core.reconfiguration import Reconfiguration
from txraft.core.replication import Replication
from txraft.core.roles import Follower, Leader, Stopped
from txraft.core.sessions import SessionTable
from txraft.core.shared import ProtocolReply, ProtocolRequest, RoleState, TermRole
from txraft.core.snapshot_transfer import SnapshotTransfer
from txraft.core.transfer import LeadershipTransfer
from txraft.interfaces import IRaftClient, IRaftObserver, IRPCHandler, IStorage, ITransport
from txraft.messages import Role, Status

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["DUPLICATE", "RaftCore", "Role", "Status"]

_T = TypeVar("_T")

#: Marks the outcome of an entry the session table recognised as a duplicate.
DUPLICATE = object()


def _check_numbers(message: DataclassInstance) -> None:
    """
    Terms, indexes and offsets lie in ``0 .. NUMBER_LIMIT - 1``, whatever
    transport brought them (the AMP codec checks the same on the wire), so no
    request can push this member to a term or index it could not store.
    """
    cls = type(message)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(item.name for item in dataclasses.fields(message))
    for name in names:
        value = getattr(message, name)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < m.NUMBER_LIMIT:
                _check_number(value, f"{cls.__name__}.{name}")
        elif name == "entries" and value:
            if len(value) > m.MAX_ENTRIES:
                raise errors.InvalidRequest(f"{len(value)} entries are more than the {m.MAX_ENTRIES} "
                                            "one request may carry")
            _check_number(value[-1].index, f"{cls.__name__}.entries index")
            _check_number(max(entry.term for entry in value), f"{cls.__name__}.entries term")


# Message type -> its field names (every request is checked on arrival).
_FIELD_NAMES: Dict[type, Tuple[str, ...]] = {}


#: The most a request or reply may raise this member's term at once.  Real
#: clusters never come near it (a member back from a long absence is behind by
#: the elections it missed), and it keeps one message from a member
#: certificate holder from taking the term to the last usable one.
MAX_TERM_STEP = 2**32


def _check_term_step(term: int, current: int) -> None:
    if term > current + MAX_TERM_STEP:
        raise errors.InvalidRequest(f"term {term} is more than 2**32 above this member's term {current}")


def _check_number(value: int, what: str) -> None:
    if value < 0:
        raise errors.InvalidRequest(f"{what} must not be negative, got {value}")
    if value >= m.NUMBER_LIMIT:
        raise errors.InvalidRequest(f"{what} must be below 2**62, got {value}")


@implementer(IRPCHandler)
class RaftCore(Election, Replication, SnapshotTransfer, Reads, Compaction, Reconfiguration, LeadershipTransfer):
    """
    One Raft member's protocol state.

    :param str member_id: this member's id.
    :param members: ids of every member of the bootstrap configuration (all
        voters, this one included), or a
        :class:`~txraft.core.membership.Configuration`; the latest
        configuration in the log or snapshot takes precedence.  An empty
        :class:`~txraft.core.membership.Configuration` starts a member that
        waits to be added to a running cluster.
    :param storage: an :class:`~txraft.interfaces.IStorage`, already open.
    :param transport: an :class:`~txraft.interfaces.ITransport`.
    :param client: the :class:`~txraft.interfaces.IRaftClient`.
    :param clock: an ``IReactorTime``.
    :param rng: a ``random.Random`` for election timeouts.
    :param config: a :class:`~txraft.config.RaftConfig` (timing and sizes).

    :ivar state: the role object (:mod:`txraft.core.roles`) of the current role.
    :ivar leader: the leader this member knows of, or ``""``.
    :ivar observers: the :class:`~txraft.core.observers.Observers` notified of
        applies, leader changes and snapshots.
    """

    log = Logger()

    def __init__(self, member_id: str, members: Union[Iterable[str], Configuration], storage: IStorage,
                 transport: ITransport, client: IRaftClient, clock: IReactorTime, rng: random.Random,
                 config: RaftConfig) -> None:
        self.id = member_id
        if not isinstance(members, Configuration):
            members = Configuration.bootstrap(set(members) | {member_id}, getattr(config, "peer_names", None))
        self._init_configurations(members)
        self.storage = storage
        self.transport = transport
        self.client = client
        self.clock = clock
        self.rng = rng
        self.config = config
        self._deadlines = Deadlines(clock, config.rpc_timeout)

        self.state: RoleState = Follower()
        self.leader = ""
        # Invariant: applied_index <= commit_index <= storage.last_index
        # (a follower learns commit only up to entries it has matched).
        self.commit_index = 0
        self.applied_index = 0
        self.sessions = SessionTable()

        self._snapshotting = False
        self._snapshot_index = 0  # index of the latest snapshot in storage
        # Randomized so that members do not all snapshot at once (seed rule).
        threshold = config.snapshot_threshold
        self._snapshot_threshold = threshold + rng.randint(0, threshold >> 3)

        self.observers = Observers()
        # The application hears of leader changes through the same path as
        # every other observer, and first.
        self.observers.add(ClientObserver(member_id, client))

    # -- state -------------------------------------------------------------

    @property
    def term(self) -> int:
        """The current term (durable hard state)."""
        return self.storage.hard_state.term

    @property
    def voted_for(self) -> str:
        """Whom this member voted for in :attr:`term` (durable hard state), or ``""``."""
        return self.storage.hard_state.voted_for

    @property
    def role(self) -> Role:
        """The current :class:`~txraft.messages.Role`."""
        return self.state.role

    @property
    def snapshot_index(self) -> int:
        """Index of the latest snapshot in storage (0: none)."""
        return self._snapshot_index

    def term_at(self, index: int) -> Optional[int]:
        """:returns: the term of the entry at ``index`` in this member's log, or ``None``."""
        return self.storage.term_at(index)

    def was_applied(self, request_id: m.RequestId) -> bool:
        """:returns: whether the command with ``request_id`` has been applied (session table)."""
        return self.sessions.applied(request_id)

    def add_observer(self, observer: IRaftObserver) -> None:
        """Notify ``observer`` (an :class:`~txraft.interfaces.IRaftObserver`) of what happens."""
        self.observers.add(observer)

    def remove_observer(self, observer: IRaftObserver) -> None:
        """Stop notifying ``observer``."""
        self.observers.remove(observer)

    def status(self) -> Status:
        """:returns: a :class:`~txraft.messages.Status`."""
        return Status(
            id=self.id, role=self.role, leader=self.leader, term=self.term,
            commit_index=self.commit_index, applied_index=self.applied_index,
            last_index=self.storage.last_index, members=self.members,
        )

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Restore the application from the latest snapshot and start the election timer."""
        index, configuration = self._base_configuration
        source = self.storage.open_snapshot()
        if source is not None:
            try:
                index, configuration = source.meta.index, self._restore_from(source)
            finally:
                source.close()
        self._load_configurations(index, configuration)
        self._become_follower(self.term, "")

    def stop(self) -> None:
        """Stop every timer; the member answers nothing afterwards."""
        if self.role is Role.STOPPED:
            return
        self._enter(Stopped(), errors.Stopped(f"member {self.id} stopped"))
        self._cancel_election_timer()
        self._deadlines.stop()
        if self._apply_call is not None and self._apply_call.active():
            self._apply_call.cancel()
        self._apply_call = None
        self._drop_incoming()
        self._fail_change_waiters(errors.Stopped(f"member {self.id} stopped"))

    def _fail(self, reason: str) -> NoReturn:
        """A safety invariant broke: stop loudly rather than keep voting."""
        self.log.critical("{member} stopping: {reason}", member=self.id, reason=reason)
        self.stop()
        raise errors.InvariantViolation(reason)

    # -- roles -----------------------------------------------------------

    def _enter(self, state: RoleState, error: Optional[BaseException] = None) -> None:
        """Make ``state`` the current role object; the previous role releases what it held."""
        previous, self.state = self.state, state
        previous.leave(error if error is not None else errors.NotLeader(""))

    def _role_of_term(self, kind: Type[TermRole], term: int) -> Optional[TermRole]:
        """:returns: the current role object if it is a ``kind`` of ``term``, else ``None``."""
        state = self.state
        return state if isinstance(state, kind) and state.term == term else None

    def _set_leader(self, leader: str) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        self.observers.leader_changed(leader, self.term)

    def _become_follower(self, term: int, leader: str) -> None:
        """Step down (or stay) as follower of ``term``; persists the term if it is new."""
        if term > self.term:
            self.storage.save_hard_state(m.HardState(term, ""))
        # When we last heard a leader outlives a change of term as follower
        # (leader stickiness), not a candidacy or a leadership.
        contact = self.clock.seconds() if leader else self.state.leader_contact
        self._enter(Follower(contact), errors.NotLeader(leader))
        self._set_leader(leader)
        if leader or self._election_call is None or not self._election_call.active():
            self._reset_election_timer()
        # Otherwise keep the running timer: only a leader's message or a
        # granted vote postpones an election (Figure 2).  Resetting it on
        # every higher term would let a candidate whose log is too stale to
        # win keep everyone else from standing, forever.

    def _become_leader(self) -> None:
        self._cancel_election_timer()
        now = self.clock.seconds()
        last = self.storage.last_index
        leader = Leader(self.term, {p: Progress(p, last + 1, now) for p in sorted(self._replication_targets())})
        self._enter(leader)
        self._set_leader(self.id)
        self.log.info("{member} leads term {term}", member=self.id, leader=self.id, term=self.term)
        # A no-op of our own term lets us commit entries of earlier terms
        # (Raft paper section 5.4.2 and Figure 8).
        self._append_own(leader, [m.Entry(self.term, last + 1, m.EntryKind.NOOP)])
        leader.heartbeat = LoopingCall(self._on_heartbeat, leader)
        leader.heartbeat.clock = self.clock
        leader.heartbeat.start(self.config.heartbeat, now=True)

    def _adopt_newer_term(self, reply: ProtocolReply) -> bool:
        """A reply from a later term makes us its follower. :returns: whether it did."""
        if reply.term > self.term:
            self._become_follower(reply.term, "")
            return True
        return False

    # -- sending and replies -------------------------------------------------------------

    def _call(self, peer: str, request: object) -> defer.Deferred[Any]:
        return self._deadlines.watch(self.transport.send(peer, request))

    def _send(self, peer: str, request: ProtocolRequest) -> None:
        """Send a protocol request; its reply or failure comes back through :meth:`receive_reply`."""
        self._call(peer, request).addCallbacks(
            self._deliver_reply, self._deliver_failure,
            callbackArgs=(peer, request), errbackArgs=(peer, request))

    def _deliver_reply(self, reply: ProtocolReply, peer: str, request: ProtocolRequest) -> None:
        self.receive_reply(peer, request, reply)

    def _deliver_failure(self, failure: Failure, peer: str, request: ProtocolRequest) -> None:
        self.request_failed(peer, request, failure)

    def receive_reply(self, peer: str, request: ProtocolRequest, reply: ProtocolReply) -> None:
        """
        Handle ``peer``'s ``reply`` to ``request`` (a RequestVote,
        AppendEntries or InstallSnapshot this member sent, or one a test plays).
        A reply to a request of an earlier term or role changes nothing but,
        if it carries a later term, this member's term.

        :raises TypeError: for a request of a kind the core never sends.
        """
        handler = self._reply_handlers.get(type(request))
        if handler is None:
            raise TypeError(f"the core sends no {type(request).__name__} requests")
        if self.role is Role.STOPPED:
            return
        try:
            _check_term_step(reply.term, self.term)
        except errors.InvalidRequest as refusal:
            self.log.warn("{member}: ignoring a {kind} from {peer}: {refusal}", member=self.id,
                          kind=type(reply).__name__, peer=peer, refusal=str(refusal))
            self.request_failed(peer, request, Failure(refusal))
            return
        handler(self, peer, request, reply)

    def request_failed(self, peer: str, request: ProtocolRequest, failure: Union[Failure, BaseException]) -> None:
        """
        ``request`` to ``peer`` failed (lost, timed out, refused): forget what
        the leader assumed about it, so it is sent again.

        :param failure: a :class:`~twisted.python.failure.Failure` or an exception.
        """
        error = failure.getErrorMessage() if isinstance(failure, Failure) else repr(failure)
        self.log.debug("{member}: RPC to {peer} failed: {error}", member=self.id, peer=peer, error=error)
        handler = self._failure_handlers.get(type(request))
        if handler is not None and self.role is not Role.STOPPED:
            handler(self, peer, request, failure)

    _reply_handlers: Dict[type, Callable[[RaftCore, str, Any, Any], None]] = {
        m.RequestVote: Election._on_vote_reply_or_pre_vote,
        m.AppendEntries: Replication._on_append_reply,
        m.InstallSnapshot: SnapshotTransfer._on_snapshot_reply,
        m.TimeoutNow: LeadershipTransfer._on_timeout_now_reply,
    }
    _failure_handlers: Dict[type, Callable[[RaftCore, str, Any, Union[Failure, BaseException]], None]] = {
        m.AppendEntries: Replication._on_append_failure,
        m.InstallSnapshot: SnapshotTransfer._on_snapshot_failure,
    }

    # -- incoming requests ---------------------------------------------------------

    def receive(self, message: Any) -> defer.Deferred[Any]:
        """Handle a request from another member; see :class:`~txraft.interfaces.IRPCHandler`."""
        if self.role is Role.STOPPED:
            return defer.fail(errors.Stopped(f"member {self.id} is stopped"))
        handler = self._handlers.get(type(message))
        if handler is None:
            return defer.fail(errors.InvalidRequest(f"unexpected message {type(message).__name__}"))
        try:
            _check_numbers(message)
            _check_term_step(getattr(message, "term", 0), self.term)
            return defer.maybeDeferred(handler, self, message)
        except Exception:
            return defer.fail(Failure())

    def _reply_when_durable(self, reply: _T) -> defer.Deferred[_T]:
        return self.storage.durable().addCallback(lambda _: reply)

    def _check_sender(self, sender: str, what: str) -> None:
        # Not checked against the configuration: a member must follow a
        # leader (and may vote for a candidate) its log does not yet list,
        # as a member being added does (Raft dissertation section 4.1).
        if not sender or sender == self.id:
            raise errors.InvalidRequest(f"{what} {sender!r} is not another member of this cluster")

    def _handle_forward_append(self, req: m.ForwardAppend) -> m.ForwardAppendReply:
        term, index = self.place(req.command, req.request_id)
        return m.ForwardAppendReply(term, index)

    def _handle_get_members(self, req: m.GetMembers) -> m.GetMembersReply:
        return m.GetMembersReply(self.members)

    def _handle_get_leader(self, req: m.GetLeader) -> m.GetLeaderReply:
        return m.GetLeaderReply(self.leader)

    _handlers: Dict[type, Callable[[RaftCore, Any], Any]] = {
        m.RequestVote: Election._handle_request_vote,
        m.AppendEntries: Replication._handle_append_entries,
        m.InstallSnapshot: SnapshotTransfer._handle_install_snapshot,
        m.ForwardAppend: _handle_forward_append,
        m.GetMembers: _handle_get_members,
        m.GetLeader: _handle_get_leader,
        m.ReadIndex: Reads._handle_read_index,
        m.TimeoutNow: LeadershipTransfer._handle_timeout_now,
        m.ChangeMembers: Reconfiguration._handle_change_members,
        m.TransferLeadership: LeadershipTransfer._handle_transfer_leadership,
    }

    # -- commit and apply ----------------------------------------------------

    def _advance_commit(self, index: int) -> None:
        if index <= self.commit_index:
            return
        self.commit_index = index
        self._apply_committed()

    _apply_call: Optional[IDelayedCall] = None  # the next turn's share of applying, when one turn was not enough

    def _apply_committed(self) -> None:
        """
        Apply committed entries for at most ``config.turn_budget`` seconds,
        then leave the rest to the next reactor turn, so that heartbeats and
        replies are never stuck behind a long apply.
        """
        if self._apply_call is not None:
            return  # the next turn carries on
        clock = self.clock
        deadline = clock.seconds() + self.config.turn_budget
        while self.applied_index < self.commit_index and self.role is not Role.STOPPED:
            low = self.applied_index + 1
            for entry in self.storage.entries(low, min(self.commit_index, low + 255) + 1, 1024 * 1024):
                self._apply(entry)
                if clock.seconds() >= deadline:
                    break
            if clock.seconds() >= deadline and self.applied_index < self.commit_index:
                self._apply_call = clock.callLater(0, self._apply_more)
                break
        self._release_change_waiters()
        self.observers.applied_through(self.applied_index)
        self._maybe_snapshot()

    def _apply_more(self) -> None:
        self._apply_call = None
        if self.role is not Role.STOPPED:
            self._apply_committed()

    def _apply(self, entry: m.Entry) -> None:
        self.applied_index = entry.index
        if entry.kind != m.EntryKind.COMMAND:
            return
        if entry.request_id is not None and not self.sessions.admit(entry.request_id, entry.index):
            outcome = DUPLICATE
        else:
            try:
                outcome = self.client.apply(entry.data, entry.index)
            except Exception as e:
                outcome = errors.ApplyError(entry.index, e)
        self.observers.applied(entry, outcome)
