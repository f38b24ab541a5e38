"""
:class:`Client`: a small HTTP(S) client of one member's key-value API
(``docs/http-api.md``), shared by the ``txraft`` command line, ``txraft demo``,
:mod:`txraft.testing.processes` and the tests.

Over HTTPS it presents a client certificate and trusts any server certificate
of the cluster CA (members' certificates carry member names, not addresses)::

    client = Client("https://10.0.0.1:8001", "admin.pem", "admin.key", "ca.pem")
    await client.put("colour", "blue")
    await client.get("colour")        # b"blue"

Every failure is a :class:`ClientError` naming the request and the reason.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Optional, Union
from urllib.parse import quote

from twisted.internet import defer
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    from txraft.transport.tls import TLSCredentials

__all__ = ["Client", "ClientError"]


class ClientError(Exception):
    """
    A request failed.

    :ivar status: the HTTP status, or ``None`` when no response arrived.
    :ivar body: the parsed JSON body of an error response, or ``None``.
    """

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


@implementer(IPolicyForHTTPS)
class _ClusterCAPolicy:
    """
    TLS for every server: present the client certificate, verify the server's
    against the cluster CA.  Server certificates carry member names, not
    addresses, so (as between members) the name is not matched to the URL's
    host; any certificate of the cluster CA is trusted.
    """

    def __init__(self, options):
        self._options = options

    def creatorForNetloc(self, hostname, port):
        return self._options


class Client:
    """
    A client of one member's HTTP API (``docs/http-api.md``).

    :param server: base URL, ``https://host:port`` (or ``http://`` when
        ``insecure``).
    :param cert: path of the client certificate (PEM); with ``key`` and ``ca``.
    :param key: path of its private key.
    :param ca: path of the cluster CA certificate.
    :param insecure: allow a plain ``http://`` URL without certificates.
    :param timeout: seconds a request may take.
    :param reactor: the reactor; the global one when ``None``.
    :param persistent: keep connections open between requests (then call
        :meth:`close` when done); by default every request has its own.
    :param credentials: :class:`~txraft.transport.tls.TLSCredentials`
        already loaded, instead of ``cert``, ``key`` and ``ca``.
    :param connections: how many idle connections ``persistent`` keeps.
    :raises ValueError: for a URL whose scheme does not fit the options.
    """

    def __init__(self, server: str, cert: Optional[str] = None, key: Optional[str] = None, ca: Optional[str] = None,
                 insecure: bool = False, timeout: float = 15.0, reactor: Any = None, persistent: bool = False,
                 credentials: Optional[TLSCredentials] = None, connections: int = 64) -> None:
        import treq.client
        from twisted.web.client import Agent, HTTPConnectionPool

        if reactor is None:
            from twisted.internet import reactor
        server = server.rstrip("/")
        if "://" not in server:
            server = ("http://" if insecure else "https://") + server
        scheme = server.split("://", 1)[0]
        if scheme not in ("http", "https"):
            raise ValueError(f"--server must be an http:// or https:// URL, got {server!r}")
        if scheme == "http" and not insecure:
            raise ValueError(f"{server} is plain HTTP: use https:// with --cert/--key/--ca, or pass --insecure")
        self.server = server
        self.timeout = timeout
        self.reactor = reactor
        policy = None
        if scheme == "https":
            if credentials is None:
                missing = [name for name, value in (("cert", cert), ("key", key), ("ca", ca)) if not value]
                if missing:
                    raise ValueError(_missing_credentials(missing))
                from txraft.transport.tls import TLSCredentials

                credentials = TLSCredentials.load(cert, key, ca)
            policy = _ClusterCAPolicy(credentials.options())
        # Without persistent connections nothing stays open after a request.
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool.maxPersistentPerHost = connections
        agent = Agent(reactor, contextFactory=policy, pool=self._pool, connectTimeout=timeout) \
            if policy is not None else Agent(reactor, pool=self._pool, connectTimeout=timeout)
        self._http = treq.client.HTTPClient(agent)

    def close(self) -> defer.Deferred[None]:
        """Close kept-alive connections; :returns: a Deferred firing when they are closed."""
        return self._pool.closeCachedConnections()

    def _url(self, key=None):
        if key is None:
            return self.server
        return f"{self.server}/v1/kv/{quote(key, safe='')}"

    def request(self, method, url, data=None, params=None):
        """
        Any request to the member, for APIs beyond the key-value store (an
        application's own under ``/v1/app/``).

        :returns: a Deferred firing with ``(status code, body bytes)``, or
            failing with :class:`ClientError` when no answer came.
        """
        return defer.ensureDeferred(self._request(method, url, data, params))

    async def _request(self, method, url, data=None, params=None):
        # One deadline for the whole exchange, body included: treq's own
        # timeout stops at the response headers.
        exchange = defer.Deferred.fromCoroutine(self._exchange(method, url, data, params))
        timer = self.reactor.callLater(self.timeout, exchange.cancel)
        try:
            return await exchange
        except Exception as e:
            if not timer.active() or _timed_out(e):
                raise ClientError(f"{method} {url}: no answer from {self.server} within {self.timeout:g} s") from None
            raise ClientError(f"{method} {url}: {_describe(e, self.server)}") from None
        finally:
            if timer.active():
                timer.cancel()

    async def _exchange(self, method, url, data, params):
        response = await self._http.request(method, url, data=data, params=params)
        body = await response.content()
        return response.code, body

    @staticmethod
    def _json(code, body, url):
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ClientError(f"{url}: HTTP {code} with a body that is not JSON: {body[:80]!r}", code) from None

    def _failure(self, method, url, code, body):
        try:
            parsed = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            parsed = None
        detail = parsed.get("error") if isinstance(parsed, dict) and parsed.get("error") else body[:200].decode(
            "utf-8", "replace").strip()
        return ClientError(f"{method} {url}: HTTP {code}: {detail}", code, parsed)

    async def status(self) -> Dict[str, Any]:
        """:returns: the member's ``/v1/status`` as a dict."""
        url = self._url() + "/v1/status"
        code, body = await self._request("GET", url)
        if code != 200:
            raise self._failure("GET", url, code, body)
        return self._json(code, body, url)

    async def put(self, key: str, value: Union[bytes, str]) -> Dict[str, Any]:
        """Store ``value`` (bytes or str) under ``key``; :returns: the JSON reply, ``{"index": N}``."""
        url = self._url(key)
        code, body = await self._request("PUT", url, data=_bytes(value))
        if code != 200:
            raise self._failure("PUT", url, code, body)
        return self._json(code, body, url)

    async def get(self, key: str, stale: bool = False) -> Optional[bytes]:
        """:returns: the value (bytes), or ``None`` when the key is absent."""
        url = self._url(key)
        code, body = await self._request("GET", url, params={"stale": "true"} if stale else None)
        if code == 404:
            return None
        if code != 200:
            raise self._failure("GET", url, code, body)
        return body

    async def delete(self, key):
        """:returns: the JSON reply, ``{"index": N}``."""
        url = self._url(key)
        code, body = await self._request("DELETE", url)
        if code != 200:
            raise self._failure("DELETE", url, code, body)
        return self._json(code, body, url)

    async def cas(self, key, expect, value):
        """
        Set ``key`` to ``value`` if its value is ``expect`` (``None``: absent).

        :returns: the JSON reply: ``{"ok": true, "index": N}`` or, on a
            conflict, ``{"ok": false, "current": ...}``.
        """
        url = self._url(key) + "?cas"
        payload = json.dumps({"expect": _text(expect), "value": _text(value)}).encode()
        code, body = await self._request("POST", url, data=payload)
        if code in (200, 409):
            reply = self._json(code, body, url)
            if isinstance(reply, dict):
                reply.setdefault("ok", code == 200)
                return reply
        raise self._failure("POST", url, code, body)


    async def _call_json(self, method, path, document=None):
        url = self._url() + path
        data = None if document is None else json.dumps(document).encode()
        code, body = await self._request(method, url, data=data)
        if code != 200:
            raise self._failure(method, url, code, body)
        return self._json(code, body, url)

    async def members(self):
        """:returns: ``GET /v1/members``: the leader, each member, the change in flight."""
        return await self._call_json("GET", "/v1/members")

    async def add_member(self, member_id, name=None, voter=True):
        """Add ``member_id`` (a learner first; a voter once caught up when ``voter``); :returns: the membership."""
        document = {"id": member_id, "voter": voter}
        if name:
            document["name"] = name
        return await self._call_json("POST", "/v1/members", document)

    async def remove_member(self, member_id):
        """:returns: the membership once ``member_id`` is removed."""
        return await self._call_json("DELETE", f"/v1/members/{quote(member_id, safe=':')}")

    async def promote(self, member_id):
        """:returns: the membership once the learner ``member_id`` votes."""
        return await self._call_json("POST", f"/v1/members/{quote(member_id, safe=':')}/promote")

    async def transfer_leader(self, to=None):
        """:returns: ``{"leader": ID}`` once leadership moved (to ``to``, or the most up-to-date voter)."""
        return await self._call_json("POST", "/v1/leader/transfer", {} if to is None else {"to": to})


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _missing_credentials(missing):
    """The usage error for HTTPS without some of ``cert``, ``key`` and ``ca``."""
    needs = []
    if "cert" in missing or "key" in missing:
        needs.append("a client certificate and its key")
    if "ca" in missing:
        needs.append("the cluster CA certificate")
    return (f"HTTPS needs {' and '.join(needs)}: give " + ", ".join("--" + m for m in missing)
            + " (or " + ", ".join("TXRAFT_" + m.upper() for m in missing) + ")")


def _timed_out(error):
    """Whether ``error`` is a timeout or a cancellation, possibly wrapped by the HTTP client."""
    from twisted.internet import error as internet_error
    from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed

    timeouts = (defer.CancelledError, defer.TimeoutError, internet_error.TimeoutError)
    if isinstance(error, timeouts):
        return True
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        return any(reason.check(*timeouts) for reason in error.reasons)
    return False


def _describe(error, server):
    """One line for a connection-level failure (not a timeout) of a request to ``server``."""
    from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed

    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        from OpenSSL import SSL

        reasons = [r.getErrorMessage() for r in error.reasons]
        text = "; ".join(r for r in reasons if r) or "connection closed"
        if any(r.check(SSL.Error) for r in error.reasons):
            # The handshake itself failed: a question of CAs, not of names.
            if "certificate verify failed" in text:
                return f"the server's certificate is not signed by the CA given as --ca (TLS: {text})"
            if "unknown ca" in text:
                return f"the server does not trust the client certificate's CA (TLS: {text})"
            return f"the TLS handshake failed ({text})"
        if server.startswith("https://"):
            # The handshake went through: a server whose --client-acl lacks
            # our name closes the connection right after it (with TLS 1.3
            # the client learns only then).
            return (f"the server closed the connection ({text}); "
                    "is the client certificate's name in the server's --client-acl?")
        return f"the server closed the connection ({text})"
    message = str(error) or type(error).__name__
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__
