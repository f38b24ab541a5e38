"""
What the mixins of :class:`~txraft.core.raft.RaftCore` share, declared for
the type checker.

:class:`~txraft.core.raft.RaftCore` is one class made of several mixins
(:mod:`~txraft.core.election`, :mod:`~txraft.core.replication`, ...) that
share one member's state.  Each mixin subclasses :class:`CoreState`, which
declares, with their types, the attributes ``RaftCore`` sets and the methods
one mixin calls on another, so that mypy checks every mixin strictly on its
own.  It is a :class:`typing.Protocol` for mypy only: mypy then refuses to
build a ``RaftCore`` that lacks one of them, and checks that each definition
matches its declaration.  At run time :class:`CoreState` is plain ``object``,
so the classes and their method lookups are exactly what they would be
without it.

A mixin's own methods, and ``RaftCore``'s methods that no mixin calls, are
not declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, Union

from txraft import messages as m
from txraft.core.roles import Candidate, Follower, Leader, Stopped

__all__ = ["CoreState", "ProtocolReply", "ProtocolRequest", "RoleState", "TermRole"]

#: The role object of a member: exactly one of these at a time.
RoleState = Union[Follower, Candidate, Leader, Stopped]

#: The roles that belong to one term (a member is each at most once per term).
TermRole = TypeVar("TermRole", Candidate, Leader)

#: The requests the core sends whose replies come back through ``receive_reply``.
ProtocolRequest = Union[m.RequestVote, m.AppendEntries, m.InstallSnapshot, m.TimeoutNow]

#: Their replies.
ProtocolReply = Union[m.RequestVoteReply, m.AppendEntriesReply, m.InstallSnapshotReply, m.TimeoutNowReply]

_T = TypeVar("_T")

if TYPE_CHECKING:
    import random
    from typing import Any, List, NoReturn, Optional, Protocol, Sequence, Tuple, Type

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime
    from twisted.logger import Logger

    from txraft.config import RaftConfig
    from txraft.core.membership import Configuration
    from txraft.core.observers import Observers
    from txraft.core.progress import Progress
    from txraft.core.sessions import SessionTable
    from txraft.interfaces import IRaftClient, ISnapshotSource, IStorage, ITransport

    class CoreState(Protocol):
        """The state and methods of :class:`~txraft.core.raft.RaftCore` its mixins use."""

        # -- set by RaftCore.__init__ ------------------------------------------

        log: Logger
        id: str
        storage: IStorage
        transport: ITransport
        client: IRaftClient
        clock: IReactorTime
        rng: random.Random
        config: RaftConfig
        state: RoleState
        leader: str
        commit_index: int
        applied_index: int
        sessions: SessionTable
        observers: Observers
        _snapshotting: bool
        _snapshot_index: int
        _snapshot_threshold: int

        # -- raft.py ------------------------------------------------------------

        @property
        def term(self) -> int: ...

        @property
        def voted_for(self) -> str: ...

        @property
        def role(self) -> m.Role: ...

        def _fail(self, reason: str) -> NoReturn: ...

        def _enter(self, state: RoleState, error: Optional[BaseException] = None) -> None: ...

        def _role_of_term(self, kind: Type[TermRole], term: int) -> Optional[TermRole]: ...

        def _set_leader(self, leader: str) -> None: ...

        def _become_follower(self, term: int, leader: str) -> None: ...

        def _become_leader(self) -> None: ...

        def _adopt_newer_term(self, reply: ProtocolReply) -> bool: ...

        def _call(self, peer: str, request: object) -> Deferred[Any]: ...

        def _send(self, peer: str, request: ProtocolRequest) -> None: ...

        def _reply_when_durable(self, reply: _T) -> Deferred[_T]: ...

        def _check_sender(self, sender: str, what: str) -> None: ...

        def _advance_commit(self, index: int) -> None: ...

        def _apply_committed(self) -> None: ...

        # -- election.py ----------------------------------------------------------

        def _reset_election_timer(self) -> None: ...

        def _become_candidate(self, disrupt: bool) -> None: ...

        # -- replication.py -------------------------------------------------------

        def progress_of(self, peer: str) -> Optional[Progress]: ...

        def _append_own(self, leader: Leader, entries: Sequence[m.Entry]) -> None: ...

        def _maybe_commit(self, leader: Leader) -> None: ...

        def _replicate(self, leader: Leader, peer: str) -> bool: ...

        def _send_append(self, leader: Leader, peer: str, heartbeat: bool = False) -> bool: ...

        def _progress_for_reply(
            self, peer: str, request: Union[m.AppendEntries, m.InstallSnapshot],
            reply: Optional[Union[m.AppendEntriesReply, m.InstallSnapshotReply]] = None,
        ) -> Tuple[Optional[Leader], Optional[Progress]]: ...

        def _accept_leader(self, term: int, leader: str) -> None: ...

        # -- snapshot_transfer.py ---------------------------------------------------

        def _start_snapshot(self, leader: Leader, progress: Progress) -> None: ...

        def _send_snapshot_chunk(self, leader: Leader, progress: Progress) -> None: ...

        # -- compaction.py ----------------------------------------------------------

        def _restore_from(self, source: ISnapshotSource) -> Configuration: ...

        # -- reads.py ---------------------------------------------------------------

        def _check_reads(self, leader: Leader) -> None: ...

        # -- reconfiguration.py -----------------------------------------------------

        @property
        def configuration(self) -> Configuration: ...

        def configuration_at(self, index: int) -> Configuration: ...

        def removed(self) -> bool: ...

        def may_stand(self) -> bool: ...

        def _voting_peers(self) -> List[str]: ...

        def _load_configurations(self, index: int, configuration: Configuration) -> None: ...

        def _log_appended(self, entries: Sequence[m.Entry]) -> None: ...

        def _fold_configurations(self, index: int) -> None: ...

        def _validate_configuration_entries(self, entries: Sequence[m.Entry]) -> None: ...

        def _reconfigure_after_commit(self, leader: Leader) -> None: ...

        # -- transfer.py --------------------------------------------------------------

        def _send_timeout_now_if_ready(self, leader: Leader) -> None: ...

        def _hand_over(self, leader: Leader) -> None: ...

else:
    CoreState = object
