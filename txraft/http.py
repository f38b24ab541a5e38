"""
The HTTP API of a member: the key-value store, status and metrics.

:func:`create_api` builds a plain :mod:`twisted.web` resource tree; serve it
with any :class:`twisted.web.server.Site`::

    from twisted.web.server import Site
    from txraft.http import create_api

    site = Site(create_api(raft, store))
    reactor.listenTCP(8001, site, interface="127.0.0.1")

=============================  ==============================================================
``PUT /v1/kv/{key}``           body = value; 200 ``{"index": N}`` once committed and applied here
``GET /v1/kv/{key}``           200 raw value, 404 when absent; linearizable (ReadIndex) unless
                               ``?stale=true``
``DELETE /v1/kv/{key}``        200 ``{"index": N}``
``POST /v1/kv/{key}?cas``      body ``{"expect": str|null, "value": str}``; 200 ``{"ok": true,
                               "index": N}`` or 409 ``{"ok": false, "current": str|null}``
``GET /v1/status``             the member's :class:`~txraft.core.raft.Status` as JSON
``GET /metrics``               Prometheus text exposition (:class:`txraft.metrics.MemberMetrics`)
``/v1/members``, ``/v1/leader`` membership and leadership transfer: :mod:`txraft.http_members`
=============================  ==============================================================

Every member accepts every request: the member API forwards writes and read
points to the leader.  Errors are JSON ``{"error": "..."}``: 400 malformed
input, 404 unknown path or key, 405 wrong method, 409 failed compare-and-set,
413 command above ``max_command_size``, 429 the leader is busy (backpressure:
nothing stored; ``Retry-After`` says when to come back), 503 no leader
answered in time.
``docs/http-api.md`` is the full reference.

Requests wait (``NOT_DONE_YET``) until their entry is applied or the read
point is reached.  A client that disconnects cancels nothing: the command may
still be applied, and the response is simply not written.
"""

from __future__ import annotations

import base64
import json
import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txraft import errors
from txraft.kv import InvalidCommand, InvalidKey, KeyValueClient, KeyValueStore, check_key, encode_cas, \
    encode_delete, encode_put

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from txraft.kv import WriteResult
    from txraft.member import Raft
    from txraft.metrics import MemberMetrics

#: What a render method returns: the body, or NOT_DONE_YET.
_Rendered = Union[bytes, int]
_Headers = Sequence[Tuple[bytes, bytes]]

log = Logger()

JSON = b"application/json"
OCTETS = b"application/octet-stream"

#: Query values of ``?stale=`` read as true and false; a bare ``?stale`` is true.
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class BadRequest(Exception):
    """A request the API refuses; carries its HTTP status code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def create_api(raft: Raft, store: object, metrics: Optional[MemberMetrics] = None,
               request_timeout: Optional[float] = None, max_command_size: int = 1024 * 1024) -> Resource:
    """
    Build the HTTP API of one member.

    :param raft: the :class:`txraft.member.Raft`.
    :param store: its :class:`~txraft.kv.KeyValueStore`; ``None`` (or any other
        application) leaves ``/v1/kv`` answering 404 while ``/v1/status`` and
        ``/metrics`` still work.  An application with an ``http_resource(raft)``
        method has the resource it returns served under ``/v1/app/``.
    :param metrics: a :class:`~txraft.metrics.MemberMetrics`; one is made when
        ``None``.  Writes through the API feed its append latency histogram.
    :param float request_timeout: seconds a write or a linearizable read may
        wait before it fails with 503 (``None``: the member's
        ``request_timeout``).
    :param int max_command_size: largest encoded command, in bytes; larger
        requests get 413.
    :returns: the root :class:`twisted.web.resource.Resource`.
    :raises TypeError, ValueError: for arguments of the wrong type or range.
    """
    if not isinstance(max_command_size, int) or max_command_size < 1:
        raise ValueError(f"max_command_size must be a positive int, got {max_command_size!r}")
    if request_timeout is not None and (not isinstance(request_timeout, (int, float)) or request_timeout <= 0):
        raise ValueError(f"request_timeout must be a positive number of seconds, got {request_timeout!r}")
    if metrics is None:
        from txraft.metrics import MemberMetrics

        metrics = MemberMetrics(raft)
    root = _Directory()
    v1 = _Directory()
    root.putChild(b"v1", v1)
    root.putChild(b"metrics", MetricsResource(metrics))
    v1.putChild(b"status", StatusResource(raft))
    from txraft.http_members import MembersResource, TransferResource  # it builds on this module

    v1.putChild(b"members", MembersResource(raft))
    leader = _Directory()
    v1.putChild(b"leader", leader)
    leader.putChild(b"transfer", TransferResource(raft))
    if isinstance(store, KeyValueStore):
        kv = KeyValueClient(raft, store, metrics=metrics, timeout=request_timeout)
        v1.putChild(b"kv", KeyValueResource(kv, max_command_size))
    else:
        v1.putChild(b"kv", _ErrorResource(404, "no key-value store on this member"))
    app_resource = getattr(store, "http_resource", None)
    if callable(app_resource):
        # The application's own API, behind the same TLS and client ACL.
        v1.putChild(b"app", app_resource(raft))
    from txraft.ui import install as install_cluster_page

    install_cluster_page(root, raft, metrics)
    return root


# -- reading bodies within a limit ------------------------------------------------


class BoundedRequest(server.Request):
    """
    A request whose body may not exceed its site's ``max_body_bytes``
    (``None``: no limit): as soon as the declared ``Content-Length``, or the
    chunks received, pass it, the client gets a JSON 413 and the connection is
    closed.  Nothing beyond the limit is written to the request's content
    file, and the resource is never called.

    Use it as the ``requestFactory`` of a :class:`~twisted.web.server.Site`
    that has a ``max_body_bytes`` attribute
    (:class:`txraft.service.ClientCertificateSite` does).
    """

    refused = False
    _received = 0

    def _limit(self) -> Optional[int]:
        return getattr(getattr(self.channel, "site", None), "max_body_bytes", None)

    def gotLength(self, length: Optional[int]) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self._refuse(f"request body of {length} bytes is above the limit of {limit}")
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # Twisted's, unannotated

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self._refuse(f"request body of more than {limit} bytes is above the limit of {limit}")
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # Twisted's, unannotated

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # Twisted's, unannotated

    def _refuse(self, message: str) -> None:
        self.refused = True
        # Not "100 Continue" after the refusal: twisted.web sends it after gotLength.
        self.requestHeaders.removeHeader(b"expect")
        if self.content is not None:
            self.content.close()
        self.content = None
        body = json.dumps({"error": message}).encode("utf-8") + b"\n"
        assert self.channel.transport is not None  # the request is being received on it
        self.channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.channel.loseConnection()


# -- plumbing ----------------------------------------------------------------


def _json_body(request: server.Request, code: int, document: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document).encode("utf-8") + b"\n"


def _error_body(request: server.Request, code: int, message: str) -> bytes:
    return _json_body(request, code, {"error": message})


class _Response:
    """What an asynchronous handler produces: status, content type, body."""

    __slots__ = ("code", "body", "content_type", "headers")

    def __init__(self, code: int, body: bytes, content_type: bytes = JSON, headers: _Headers = ()) -> None:
        self.code = code
        self.body = body
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def json(cls, code: int, document: object, headers: _Headers = ()) -> _Response:
        return cls(code, json.dumps(document).encode("utf-8") + b"\n", JSON, headers)


def _failure_response(failure: Failure) -> _Response:
    """Map a failure of the Raft layer (or of the store) to a response."""
    error = failure.value
    if isinstance(error, BadRequest):
        return _Response.json(error.code, {"error": str(error)})
    if isinstance(error, errors.CommandTooLarge):
        return _Response.json(413, {"error": str(error)})
    if isinstance(error, errors.InvalidRequest):
        return _Response.json(400, {"error": str(error)})
    if isinstance(error, errors.Busy):
        # Backpressure: nothing was stored; the client should come back later.
        retry_after = b"%d" % max(1, math.ceil(error.retry_after))
        return _Response.json(429, {"error": f"busy: {error}", "retry_after": error.retry_after},
                              headers=((b"retry-after", retry_after),))
    if isinstance(error, errors.NoQuorum):
        return _Response.json(503, {"error": f"no quorum: {error}"})
    if isinstance(error, errors.Timeout):
        return _Response.json(503, {"error": f"timed out: {error}"})
    if isinstance(error, (errors.NotLeader, errors.TransportError)):
        return _Response.json(503, {"error": f"no leader reachable: {error}"})
    if isinstance(error, (errors.Stopped, errors.MembershipError)):
        return _Response.json(503, {"error": f"member unavailable: {error}"})
    if isinstance(error, errors.ApplyError) and isinstance(error.cause, InvalidCommand):
        return _Response.json(400, {"error": str(error.cause)})
    log.failure("HTTP API request failed", failure, level=LogLevel.error)
    return _Response.json(500, {"error": f"internal error: {type(error).__name__}: {error}"})


def _respond_later(request: server.Request, d: defer.Deferred[_Response]) -> int:
    """
    Write the :class:`_Response` ``d`` fires with (or the response to its
    failure, :func:`_failure_response`), unless the client has gone.

    One pair of callbacks per request, and no ``notifyFinish()`` Deferred:
    a request whose connection was lost has no ``channel`` any more.

    :returns: ``NOT_DONE_YET``.
    """
    d.addCallbacks(_send, _send_failure, callbackArgs=(request,), errbackArgs=(request,))
    return NOT_DONE_YET


def _send_failure(failure: Failure, request: server.Request) -> None:
    _send(_failure_response(failure), request)


def _send(response: _Response, request: server.Request) -> None:
    # twisted.web's Request.connectionLost sets channel to None: nothing more
    # may be written then.
    if request.channel is None or request.finished:
        return
    try:
        _write_now(request, response)
        request.setHeader(b"content-length", b"%d" % len(response.body))
        request.write(response.body)
        request.finish()
    except Exception:
        log.failure("writing an HTTP API response failed")


class _MethodResource(Resource):
    """
    A leaf answering the methods it has ``render_*`` handlers for; any other
    method gets a JSON 405 with ``Allow``.  HEAD is answered as GET (Twisted
    drops the body).
    """

    isLeaf = True

    def render(self, request: server.Request) -> _Rendered:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            allowed = {name[len("render_"):] for name in dir(self) if name.startswith("render_")}
            allowed.discard("HEAD")  # twisted.web.resource.Resource's own, answered as GET above
            if "GET" in allowed:
                allowed.add("HEAD")
            names = sorted(allowed)
            request.setHeader(b"allow", ", ".join(names).encode())
            return _error_body(request, 405, f"method {method} not allowed here; use {', '.join(names)}")
        try:
            rendered: _Rendered = handler(request)
            return rendered
        except BadRequest as e:
            return _error_body(request, e.code, str(e))
        except Exception:
            # A bug of ours, not the client's mistake: a JSON 500 and one error
            # line, never twisted.web's HTML page and critical traceback.
            log.failure("HTTP API {method} {path} failed", method=method,
                        path=request.path.decode("latin-1"), level=LogLevel.error)
            return _error_body(request, 500, "internal error; see the member's log")


class _ErrorResource(Resource):
    """Answers every request below it with one JSON error."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.code = code
        self.message = message

    def render(self, request: server.Request) -> bytes:
        return _error_body(request, self.code, self.message)


class _Directory(Resource):
    """A Resource whose unknown children and own path answer a JSON 404."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated

    def getChild(self, path: bytes, request: server.Request) -> _ErrorResource:
        return _ErrorResource(404, "no such resource")

    def render(self, request: server.Request) -> bytes:
        return _error_body(request, 404, "no such resource")


def _query(request: server.Request) -> Dict[str, List[str]]:
    """:returns: the URL's query arguments (str -> list of str), never the form body's."""
    query = urlsplit(request.uri).query.decode("latin-1")
    try:
        return parse_qs(query, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(400, "query string is not valid UTF-8") from None


def _read_body(request: server.Request, limit: int) -> bytes:
    """:returns: the request body; :raises BadRequest: 413 when above ``limit``."""
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {int(declared)} bytes is above the limit of {limit}")
    content = request.content
    if content is None:
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        raise BadRequest(413, f"request body of {size} bytes is above the limit of {limit}")
    content.seek(0)
    return content.read()


def _text(value: Optional[bytes]) -> Optional[str]:
    """A stored value as JSON text: its UTF-8 decoding."""
    return None if value is None else value.decode("utf-8", "replace")


# -- resources -----------------------------------------------------------------


class StatusResource(_MethodResource):
    """``GET /v1/status``: the member's view of the cluster."""

    def __init__(self, raft: Raft) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.raft = raft

    def render_GET(self, request: server.Request) -> bytes:
        status = self.raft.status()
        return _json_body(request, 200, {
            "id": status.id,
            "role": status.role,
            "leader": status.leader or "",
            "term": status.term,
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "last_index": status.last_index,
            "members": list(status.members),
        })


class MetricsResource(_MethodResource):
    """``GET /metrics``: rendered on the reactor thread from the member's own registry."""

    def __init__(self, metrics: MemberMetrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", self.metrics.content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()


class KeyValueResource(_MethodResource):
    """
    ``/v1/kv/{key}``.  The key is the rest of the path after ``/v1/kv/``,
    percent-decoded, as UTF-8 (it may contain ``/``).

    :param kv: the member's :class:`~txraft.kv.KeyValueClient`.
    :param int max_command_size: largest encoded command accepted.
    """

    def __init__(self, kv: KeyValueClient, max_command_size: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.kv = kv
        self.max_command_size = max_command_size

    def _key(self, request: server.Request) -> str:
        try:
            key = b"/".join(request.postpath or ()).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(400, "key is not valid UTF-8") from None
        try:
            return check_key(key)
        except InvalidKey as e:
            raise BadRequest(400, f"bad key: {e}") from None

    def _command(self, encode: Callable[..., bytes], *args: Any) -> bytes:
        try:
            command = encode(*args)
        except (InvalidKey, TypeError) as e:
            raise BadRequest(400, str(e)) from None
        if len(command) > self.max_command_size:
            raise BadRequest(413, f"command of {len(command)} bytes is above the limit of "
                                  f"{self.max_command_size}")
        return command

    def _submit(self, request: server.Request, command: bytes, respond: Callable[[Any], _Response]) -> int:
        try:
            d = self.kv.append(command)
        except Exception:
            d = defer.fail()
        d.addCallbacks(respond, self._result_unavailable, errbackArgs=(respond,))
        return _respond_later(request, d)

    def _result_unavailable(self, failure: Failure, respond: Callable[[Any], _Response]) -> _Response:
        # The command was applied, but this member learnt of it from a
        # snapshot: its index is no later than what is applied now.
        failure.trap(errors.ResultUnavailable)
        return respond(None)

    def _written(self, result: Any) -> _Response:
        index = result.index if result is not None else self.kv.raft.status().applied_index
        # What json.dumps({"index": index}) writes, without its encoder.
        return _Response(200, b'{"index": %d}\n' % index)

    def render_PUT(self, request: server.Request) -> int:
        key = self._key(request)
        value = _read_body(request, self.max_command_size)
        return self._submit(request, self._command(encode_put, key, value), self._written)

    def render_DELETE(self, request: server.Request) -> int:
        key = self._key(request)
        return self._submit(request, self._command(encode_delete, key), self._written)

    def render_POST(self, request: server.Request) -> int:
        key = self._key(request)
        if "cas" not in _query(request):
            raise BadRequest(400, "POST /v1/kv/{key} needs ?cas (compare-and-set)")
        body = _read_body(request, self.max_command_size)
        try:
            document = json.loads(body)
        except ValueError as e:  # bad UTF-8 included
            raise BadRequest(400, f"body is not JSON: {e}") from None
        except RecursionError:
            raise BadRequest(400, "body is not JSON this API reads: it is nested too deeply") from None
        if not isinstance(document, dict) or "value" not in document or "expect" not in document:
            raise BadRequest(400, 'body must be a JSON object {"expect": <string or null>, "value": <string>}')
        expect, value = document["expect"], document["value"]
        if not isinstance(value, str) or not (expect is None or isinstance(expect, str)):
            raise BadRequest(400, '"value" must be a string and "expect" a string or null')
        try:
            expect = None if expect is None else expect.encode("utf-8")
            value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(400, "strings must be valid Unicode (no lone surrogates)") from None
        command = self._command(encode_cas, key, expect, value)

        def swapped(result: WriteResult) -> _Response:
            if result.ok:
                return _Response.json(200, {"ok": True, "index": result.index})
            raw = result.current
            current = _text(raw)
            conflict: Dict[str, object] = {"ok": False, "current": current}
            if raw is not None and current is not None and current.encode("utf-8") != raw:
                conflict["current_base64"] = base64.b64encode(raw).decode("ascii")
            return _Response.json(409, conflict)

        d = defer.maybeDeferred(self.kv.append, command)
        d.addCallback(swapped)
        d.addErrback(_cas_unknown)
        return _respond_later(request, d)

    def render_GET(self, request: server.Request) -> _Rendered:
        key = self._key(request)
        stale = _query(request).get("stale", ["false"])[-1].lower()
        if stale not in _TRUE | _FALSE:
            raise BadRequest(400, f"stale must be true or false, got {stale!r}")
        store = self.kv.store
        if stale in _TRUE:
            return _write_now(request, self._value(key, store.applied_index))
        d = defer.maybeDeferred(self.kv.raft.read_index, self.kv.timeout).addCallback(
            lambda index: self._value(key, index))
        return _respond_later(request, d)

    def _value(self, key: str, index: int) -> _Response:
        value = self.kv.store.get(key)
        headers = [(b"x-raft-index", b"%d" % index)]
        if value is None:
            return _Response.json(404, {"error": "key not found"}, headers)
        return _Response(200, value, OCTETS, headers)


def _cas_unknown(failure: Failure) -> _Response:
    failure.trap(errors.ResultUnavailable)
    return _Response.json(500, {"error": "the compare-and-set was applied, but this member learnt of it from "
                                         "a snapshot, so whether it swapped is unknown; read the key"})


def _write_now(request: server.Request, response: _Response) -> bytes:
    request.setResponseCode(response.code)
    request.setHeader(b"content-type", response.content_type)
    request.setHeader(b"cache-control", b"no-store")
    for name, value in response.headers:
        request.setHeader(name, value)
    return response.body
