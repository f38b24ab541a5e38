"""
The live cluster page every member serves at ``/`` of its HTTP(S) API, behind
the same TLS and ``--client-acl`` checks as the rest of the API.

The page itself is static (``static/index.html``, ``page.css``, ``page.js``,
shipped in the package; nothing is fetched from elsewhere).  Its script polls
``/ui/state`` every second: this member's view of the cluster as JSON, with,
when this member leads, each follower's match index, lag and last contact.
Rates are drawn in the browser from successive polls of the member's own
counters, so the member keeps no timer for the page::

    root = create_api(raft, store)        # calls install(root, raft, metrics)
"""

from __future__ import annotations

import collections
import json
from importlib import resources
from typing import Any, Deque, Dict, List, Optional

from twisted.web import pages
from twisted.web.resource import Resource

from txraft.core.observers import RaftObserver

__all__ = ["install", "ClusterEvents", "StateResource", "StaticResource", "cluster_state"]

#: Events kept for the page (leader changes, snapshots).
MAX_EVENTS = 50

_STATIC = {
    b"": ("index.html", "text/html; charset=utf-8"),
    b"page.css": ("page.css", "text/css; charset=utf-8"),
    b"page.js": ("page.js", "text/javascript; charset=utf-8"),
}
# The page runs only its own script and style, and talks only to its member.
_SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


def install(root: Resource, raft: Any, metrics: Any = None) -> None:
    """Serve the page at ``/`` and its files and state under ``/ui/`` of ``root``."""
    events = ClusterEvents(raft)
    ui = _Directory()
    for name in (b"page.css", b"page.js"):
        ui.putChild(name, StaticResource(name))
    ui.putChild(b"state", StateResource(raft, events, metrics))
    root.putChild(b"", StaticResource(b""))
    root.putChild(b"ui", ui)


class _ReadOnly(Resource):
    """A resource that answers GET and HEAD, and a JSON 405 to any other method."""

    def render(self, request: Any) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            body: bytes = super().render(request)
            return body
        # twisted.web answers 501 for methods it does not know (PUT, DELETE):
        # say plainly that this resource is read-only, as the API does.
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "method not allowed: the cluster page is read-only"}'


class _Directory(_ReadOnly):
    """``/ui/``: its own files, and 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return pages.notFound("No such resource", "The page has no such file.")

    def render_GET(self, request: Any) -> bytes:
        page: bytes = self.getChild(b"", request).render(request)
        return page


class StaticResource(_ReadOnly):
    """One of the page's files, read from the package."""

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        filename, self.content_type = _STATIC[name]
        self.body = resources.files(__name__).joinpath("static").joinpath(filename).read_bytes()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type.encode("ascii"))
        for header, value in _SECURITY_HEADERS.items():
            request.setHeader(header, value)
        return self.body


class ClusterEvents(RaftObserver):
    """
    The recent leader changes and snapshots one member saw, newest last, as
    an observer of its core (attached when the core exists).
    """

    def __init__(self, raft: Any) -> None:
        self.raft = raft
        self.events: Deque[Dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self.leader: str = ""
        self.leader_since: Optional[float] = None
        self._core: Any = None
        self.attach()

    def attach(self) -> None:
        """Observe the member's current core, if it has one not observed yet."""
        core = getattr(self.raft, "core", None)
        if core is not None and core is not self._core:
            self._core = core
            core.add_observer(self)

    def _add(self, kind: str, text: str, **fields: Any) -> None:
        self.events.append(dict(time=self.raft.reactor.seconds(), kind=kind, text=text, **fields))

    def leader_changed(self, leader: str, term: int) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        self.leader_since = self.raft.reactor.seconds() if leader else None
        if leader:
            self._add("leader", f"{leader} leads term {term}", leader=leader, term=term)
        else:
            self._add("no-leader", f"no leader known in term {term}", term=term)

    def snapshot_taken(self, meta: Any) -> None:
        self._add("snapshot", f"snapshot taken through index {meta.index}", index=meta.index)

    def restored(self, meta: Any) -> None:
        self._add("snapshot", f"snapshot installed through index {meta.index}", index=meta.index)


def cluster_state(raft: Any, events: ClusterEvents, metrics: Any = None) -> Dict[str, Any]:
    """
    :returns: this member's view of the cluster, as ``/ui/state`` serves it.
        Other members' roles and progress are known only to the leader; a
        follower reports the leader it knows and lists the rest as
        ``follower`` without figures.  Learners are named ``learner`` from
        the configuration this member holds (:meth:`txraft.Raft.membership`),
        and the leader shows their progress as it does its followers'.
    """
    events.attach()
    now = raft.reactor.seconds()
    status = raft.status()
    core = getattr(raft, "core", None)
    names = dict(getattr(raft.config, "peer_names", {}) or {})
    learners = set()
    for held in raft.membership().members:
        if held.name:
            names[held.id] = held.name
        if not held.voter:
            learners.add(held.id)
    progress: Dict[str, Any] = {}
    window = 2 * raft.config.election_base
    if core is not None and status.role == "leader":
        progress = dict(getattr(core.state, "progress", {}) or {})
    own_role = "learner" if status.id in learners and status.role == "follower" else str(status.role)
    members: List[Dict[str, Any]] = []
    reachable = 0
    for member in status.members:
        entry: Dict[str, Any] = {"id": member, "name": names.get(member, ""), "self": member == status.id,
                                 "match_index": None, "lag": None, "last_contact": None}
        if member == status.id:
            entry["role"] = own_role
            entry["match_index"] = status.last_index
            entry["lag"] = 0
            reachable += 1
        elif member in progress:
            p = progress[member]
            age = now - p.last_reply
            entry["match_index"] = p.match_index
            entry["lag"] = max(0, status.last_index - p.match_index)
            entry["last_contact"] = round(age, 3)
            entry["role"] = "unreachable" if age > window else "learner" if member in learners else "follower"
            reachable += age <= window and member not in learners
        elif member == status.leader:
            entry["role"] = "leader"
        elif member in learners:
            entry["role"] = "learner"
        else:
            entry["role"] = "follower" if status.leader else "unknown"
        members.append(entry)
    warning = None
    if status.role == "stopped":
        warning = f"{status.id} is stopped"
    elif not status.leader:
        warning = (f"no leader: {status.id} (term {status.term}) has lost its leader or cannot reach a quorum; "
                   "writes fail until a leader is elected")
    elif status.role == "leader" and reachable <= (len(status.members) - len(learners)) // 2:
        # Learners never count towards a quorum.
        warning = (f"{status.id} leads but reaches {reachable} of {len(status.members) - len(learners)} voters, "
                   "not a quorum; it will step down")
    appends = None
    if metrics is not None:
        appends = sum(sample.value for family in metrics.append_latency.collect() for sample in family.samples
                      if sample.name.endswith("_count"))
    return {
        "time": now,
        "id": status.id,
        "role": own_role,
        "leader": status.leader or "",
        "leader_since": events.leader_since if events.leader == status.leader and status.leader else None,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_index": status.last_index,
        "snapshot_index": getattr(core, "snapshot_index", 0) if core is not None else 0,
        "snapshot_bytes": metrics.snapshot_bytes if metrics is not None else None,
        "members": members,
        "warning": warning,
        "events": list(events.events)[-20:],
        "appends": appends,
        # Linearizable reads this member served (Raft.reads), for the read chart.
        "reads": raft.reads["ok"],
    }


class StateResource(_ReadOnly):
    """``GET /ui/state``: :func:`cluster_state` as JSON."""

    isLeaf = True

    def __init__(self, raft: Any, events: ClusterEvents, metrics: Any = None) -> None:
        super().__init__()
        self.raft = raft
        self.events = events
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(cluster_state(self.raft, self.events, self.metrics)).encode("utf-8")
