"""
The Raft safety properties (paper Figure 3), checked on a live simulation.

:class:`SafetyChecker` looks at every member after every step and raises
:class:`SafetyViolation` the moment one property fails:

- election safety: at most one leader per term, whatever configurations
  the members hold;
- learners never stand nor lead: only voters of their own configuration
  become candidates or leaders; and a leader won with votes that form a
  majority of its configuration's voters (learners' votes do not count);
- log matching: two logs holding an entry with the same index and term hold
  the same entry there and the same entries before it;
- leader completeness: a leader's log holds every committed entry;
- state machine safety: no two members apply different commands at an index;
- exactly once: no member applies one command twice, and every
  acknowledged ``append()`` is applied, at the index it was acknowledged
  with, on every member that gets that far.

The last one assumes commands are unique, as the random schedules make them.
"""

from __future__ import annotations

from txraft.messages import Role


def _groups(configuration):
    return [configuration.members] + ([configuration.old] if configuration.old is not None else [])


class SafetyViolation(AssertionError):
    """A Raft safety property failed; the message says which and where."""


class SafetyChecker:
    """Checks a :class:`~txraft.testing.cluster.SimulatedCluster` (see module docstring)."""

    def __init__(self):
        self.leaders = {}  # term -> member id
        self.committed = {}  # index -> (term, kind, data)
        self.applied = {}  # index -> command (as the application saw it)
        self.acknowledged = {}  # command -> index
        self._commit_seen = {}  # member id -> commit index already recorded
        self._leader_checked = set()  # (member, term) already checked for completeness
        self._applied_seen = {}  # member id -> (client object, last index checked)
        self._matched = {}  # (id a, id b) -> storage versions last checked
        self._signatures = {}  # member id -> state last checked

    def acknowledge(self, command, index):
        """Record that ``append(command)`` reported success at ``index``."""
        if command in self.acknowledged and self.acknowledged[command] != index:
            raise SafetyViolation(f"command {command!r} acknowledged at {self.acknowledged[command]} and {index}")
        self.acknowledged[command] = index

    def check(self, cluster):
        """Check every property on ``cluster``'s running members; :raises SafetyViolation: for the first broken."""
        changed = False
        for member_id in cluster.running():
            core = cluster.members[member_id].core
            if core is None:
                continue
            client = cluster.clients[member_id]
            # Most events change nothing a property depends on; skip those.
            signature = (id(core), core.role, core.term, core.commit_index, core.applied_index,
                         getattr(core.storage, "version", None), len(self.committed))
            if self._signatures.get(member_id) == signature and signature[5] is not None:
                continue
            self._signatures[member_id] = signature
            changed = True
            self._check_voting(member_id, core, cluster)
            self._check_leader(member_id, core)
            self._record_commits(member_id, core)
            self._check_applied(member_id, client, core)
        if changed:
            self._check_log_matching(cluster)

    def _check_voting(self, member_id, core, cluster):
        # Voters and majorities are worked out here from the members' flags,
        # not with the Configuration methods the core uses, so that a bug in
        # those cannot hide itself.
        configuration = core.configuration
        voting_sets = [{x.id for x in group if x.voter} for group in _groups(configuration)]
        # A member whose latest (uncommitted) configuration removed it may
        # stand while it was a voter of the one before (see may_stand()).
        was_voter = core.configuration_index > core.commit_index and any(
            x.id == member_id and x.voter
            for group in _groups(core.configuration_at(core.configuration_index - 1)) for x in group)
        is_voter = any(member_id in voters for voters in voting_sets)
        if core.role is Role.CANDIDATE and not is_voter and not was_voter:
            raise SafetyViolation(f"learners never stand: {member_id} campaigns in term {core.term} "
                                  f"but is no voter of {configuration.describe()}")
        if core.role is not Role.LEADER or (member_id, core.term) in self._leader_checked:
            return
        if not is_voter and not was_voter:
            raise SafetyViolation(f"learners never lead: {member_id} leads term {core.term} "
                                  f"but is no voter of {configuration.describe()}")
        # Its votes: voters whose durable vote in this term is for it, and
        # those already in a later term (their vote is no longer visible).
        possible = set()
        for voter in set().union(*voting_sets):
            storage = cluster.storages.get(voter)
            state = storage.hard_state if storage is not None else None
            if state is not None and (state.term > core.term or (state.term, state.voted_for) == (core.term, member_id)):
                possible.add(voter)
        if not all(len(voters & possible) > len(voters) // 2 for voters in voting_sets):
            raise SafetyViolation(f"election safety (only voters count): {member_id} leads term {core.term} without votes "
                                  f"from a majority of {configuration.describe()} (voted: {sorted(possible)})")

    def _check_leader(self, member_id, core):
        if core.role is not Role.LEADER:
            return
        other = self.leaders.setdefault(core.term, member_id)
        if other != member_id:
            raise SafetyViolation(f"election safety: {other} and {member_id} both lead term {core.term}")
        if (member_id, core.term) in self._leader_checked:
            return
        self._leader_checked.add((member_id, core.term))
        storage = core.storage
        for index, (term, kind, data) in self.committed.items():
            if index < storage.first_index:
                continue  # inside its snapshot
            if index > storage.last_index:
                raise SafetyViolation(
                    f"leader completeness: {member_id} leads term {core.term} without committed entry {index}")
            entry = storage.entries(index, index + 1)[0]
            if (entry.term, entry.kind, entry.data) != (term, kind, data):
                raise SafetyViolation(
                    f"leader completeness: {member_id} leads term {core.term} with {entry} at {index}, "
                    f"committed was term {term}")

    def _record_commits(self, member_id, core):
        seen = self._commit_seen.get(member_id, 0)
        if core.commit_index <= seen:
            self._commit_seen[member_id] = min(seen, core.commit_index)
            return
        storage = core.storage
        low = max(seen + 1, storage.first_index)
        for entry in storage.entries(low, core.commit_index + 1) if low <= core.commit_index else ():
            value = (entry.term, entry.kind, entry.data)
            known = self.committed.setdefault(entry.index, value)
            if known != value:
                raise SafetyViolation(
                    f"state machine safety: {member_id} committed {value} at {entry.index}, "
                    f"another member committed {known}")
        self._commit_seen[member_id] = core.commit_index

    def _check_applied(self, member_id, client, core):
        previous_client, checked = self._applied_seen.get(member_id, (None, 0))
        if previous_client is not client:
            checked = 0  # restarted member: its application was rebuilt
        applied = getattr(client, "applied", None)
        if applied is None:
            return
        indexes = [i for i in applied if i > checked] if checked else list(applied)
        commands_here = {}
        for index in sorted(indexes):
            command = applied[index]
            known = self.applied.setdefault(index, command)
            if known != command:
                raise SafetyViolation(
                    f"state machine safety: {member_id} applied {command!r} at {index}, another member {known!r}")
            expected = self.acknowledged.get(command)
            if expected is not None and expected != index:
                raise SafetyViolation(
                    f"exactly once: {member_id} applied {command!r} at {index}, acknowledged at {expected}")
            commands_here[command] = index
        if not checked:
            # Full scan after a (re)start: also check no command appears twice.
            seen = {}
            for index, command in applied.items():
                if command in seen:
                    raise SafetyViolation(
                        f"exactly once: {member_id} applied {command!r} at {seen[command]} and {index}")
                seen[command] = index
        self._applied_seen[member_id] = (client, max(applied, default=0))

    def _check_log_matching(self, cluster):
        logs = [(i, cluster.storages[i]) for i in cluster.ids]
        for a in range(len(logs)):
            for b in range(a + 1, len(logs)):
                (id_a, log_a), (id_b, log_b) = logs[a], logs[b]
                versions = (id(log_a), getattr(log_a, "version", None), id(log_b), getattr(log_b, "version", None))
                if versions[1] is not None and self._matched.get((id_a, id_b)) == versions:
                    continue  # neither log changed since the last check
                self._match_pair(id_a, log_a, id_b, log_b)
                self._matched[(id_a, id_b)] = versions

    def _match_pair(self, id_a, a, id_b, b):
        low = max(a.first_index, b.first_index)
        high = min(a.last_index, b.last_index)
        if low > high:
            return
        entries_a = a.entries(low, high + 1)
        entries_b = b.entries(low, high + 1)
        # Find the highest index where the terms agree; everything up to it must be equal.
        top = None
        for ea, eb in zip(reversed(entries_a), reversed(entries_b)):
            if ea.term == eb.term:
                top = ea.index
                break
        if top is None:
            return
        for ea, eb in zip(entries_a, entries_b):
            if ea.index > top:
                break
            if ea != eb:
                raise SafetyViolation(
                    f"log matching: {id_a} and {id_b} agree on the term at {top} but differ at {ea.index}: "
                    f"{ea} vs {eb}")

    def check_final(self, cluster):
        """
        After the cluster has converged: every acknowledged command is applied
        on every member of the configuration.
        """
        for member_id in cluster.in_configuration():
            client = cluster.clients[member_id]
            applied = getattr(client, "applied", {})
            for command, index in self.acknowledged.items():
                if applied.get(index) != command:
                    raise SafetyViolation(
                        f"acknowledged {command!r} at {index} is missing on {member_id} "
                        f"(found {applied.get(index)!r})")
