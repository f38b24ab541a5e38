"""
The HTTP API's membership endpoints, mounted by :func:`txraft.http.create_api`:

=======================================  ==========================================================
``GET /v1/members``                      200 ``{"leader": ID, "members": [{"id", "name", "voter",
                                         "match_index"?}], "change": TEXT|null}``
``POST /v1/members``                     body ``{"id": "HOST:PORT", "name": "...", "voter": bool}``;
                                         200 with the new membership once the change is committed
``DELETE /v1/members/{id}``              200 once the removal is committed
``POST /v1/members/{id}/promote``        200 once the learner votes
``POST /v1/leader/transfer``             body ``{"to": "HOST:PORT"}`` (optional); 200
                                         ``{"leader": ID}`` once the new leader is seen
=======================================  ==========================================================

Any member accepts them: the member API forwards each change to the leader.
409 when a change (or a transfer) is already under way or the change conflicts
with the membership (already a member, the last voter), 404 for an unknown
member, 400 for malformed input, 503 when no leader answered in time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet import defer

from txraft import errors
from txraft.config import parse_host_port
from txraft.http import BadRequest, _failure_response, _json_body, _MethodResource, _read_body, \
    _respond_later, _Response

if TYPE_CHECKING:
    from txraft.member import Raft

#: Largest request body of these endpoints.
MAX_BODY = 64 * 1024


def membership_document(raft):
    """:returns: the JSON document of ``GET /v1/members`` for ``raft``."""
    membership = raft.membership()
    members = []
    for member in membership.members:
        item = {"id": member.id, "name": member.name, "voter": member.voter}
        if member.match_index is not None:
            item["match_index"] = member.match_index
        if member.leaving:
            item["leaving"] = True
        members.append(item)
    return {"leader": membership.leader, "members": members, "change": membership.change}


def _membership_failure(failure):
    error = failure.value
    if isinstance(error, errors.UnknownMember):
        return _Response.json(404, {"error": str(error)})
    if isinstance(error, errors.MembershipError):
        return _Response.json(409, {"error": str(error)})
    if isinstance(error, (errors.InvalidRequest, errors.ConfigurationError)):
        return _Response.json(400, {"error": str(error)})
    return _failure_response(failure)


def _document(request):
    body = _read_body(request, MAX_BODY)
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except ValueError as e:
        raise BadRequest(400, f"body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise BadRequest(400, "body must be a JSON object")
    return document


def _member_id(value, what="id"):
    if not isinstance(value, str):
        raise BadRequest(400, f'"{what}" must be a string HOST:PORT')
    try:
        parse_host_port(value, what)
    except errors.ConfigurationError as e:
        raise BadRequest(400, str(e)) from None
    return value


class MembersResource(_MethodResource):
    """``/v1/members`` and ``/v1/members/{id}[/promote]``."""

    def __init__(self, raft: Raft) -> None:
        super().__init__()
        self.raft = raft

    def _path(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "promote"):
            raise BadRequest(404, "no such resource")
        if parts:
            parts[0] = _member_id(parts[0], "member id")
        return parts

    def _change(self, request, d):
        d.addCallback(lambda _: _Response.json(200, membership_document(self.raft)))
        d.addErrback(_membership_failure)
        return _respond_later(request, d)

    def render_GET(self, request):
        if self._path(request):
            raise BadRequest(405, "GET lists every member: use GET /v1/members")
        return _json_body(request, 200, membership_document(self.raft))

    def render_POST(self, request):
        parts = self._path(request)
        if len(parts) == 2:
            return self._change(request, defer.maybeDeferred(self.raft.promote, parts[0]))
        if parts:
            raise BadRequest(404, "POST /v1/members adds a member; POST /v1/members/{id}/promote promotes one")
        document = _document(request)
        unknown = set(document) - {"id", "name", "voter"}
        if unknown:
            raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        if "id" not in document:
            raise BadRequest(400, 'body must give the new member\'s "id" (HOST:PORT)')
        member_id = _member_id(document["id"])
        name = document.get("name", "")
        voter = document.get("voter", True)
        if not isinstance(name, str) or not isinstance(voter, bool):
            raise BadRequest(400, '"name" must be a string and "voter" a boolean')
        return self._change(request, defer.maybeDeferred(self.raft.add_member, member_id, name or None, voter))

    def render_DELETE(self, request):
        parts = self._path(request)
        if len(parts) != 1:
            raise BadRequest(405, "DELETE needs a member: DELETE /v1/members/{id}")
        return self._change(request, defer.maybeDeferred(self.raft.remove_member, parts[0]))


class TransferResource(_MethodResource):
    """``POST /v1/leader/transfer``."""

    def __init__(self, raft: Raft) -> None:
        super().__init__()
        self.raft = raft

    def render_POST(self, request):
        document = _document(request)
        unknown = set(document) - {"to"}
        if unknown:
            raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        to = document.get("to")
        if to is not None:
            to = _member_id(to, "to")
        d = defer.maybeDeferred(self.raft.transfer_leadership, to)
        d.addCallback(lambda leader: _Response.json(200, {"leader": leader}))
        d.addErrback(_membership_failure)
        return _respond_later(request, d)
