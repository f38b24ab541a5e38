"""
Checking your own replicated application with the chaos runner.

``Counters`` is an application of the kind users write: named counters that
only ever grow, a :class:`txraft.RaftClient` with an HTTP API of its own
(``http_resource``: ``twistd raft`` serves it under ``/v1/app/`` with the
same TLS and client ACL as the rest of the API).  To check it under faults,
the chaos runner needs two more small pieces, both here:

- ``CounterModel``: what a correct counter does, one operation at a time
  (``init`` and ``step``), for the linearizability checker;
- ``CountersAdapter``: how to ask one member to run one operation
  (:class:`txraft.testing.workload.IChaosAdapter`).

Run it (from the repository root, so that ``docs.examples`` imports)::

    python -m txraft.testing.chaos --duration 30 \\
        --app docs.examples.chaos_counters:Counters \\
        --adapter docs.examples.chaos_counters:CountersAdapter

or ``python docs/examples/chaos_counters.py``, which does the same for 10
seconds in a temporary directory and prints the runner's JSON line.
"""

import json
from urllib.parse import quote

from twisted.internet import defer
from twisted.web import resource, server
from zope.interface import implementer

from txraft import RaftClient
from txraft.http_client import ClientError
from txraft.testing.workload import Definite, IChaosAdapter


class Counters(RaftClient):
    """Named counters; a command is ``{"key": name, "add": n}`` as JSON."""

    def __init__(self):
        self.counts = {}

    def apply(self, command, index):
        change = json.loads(command)
        self.counts[change["key"]] = self.counts.get(change["key"], 0) + change["add"]
        return self.counts[change["key"]]

    def save_snapshot(self, fileobj):
        fileobj.write(json.dumps(self.counts).encode())

    def restore_snapshot(self, index, fileobj):
        self.counts = json.loads(fileobj.read() or b"{}")

    def http_resource(self, raft):
        return _CountersResource(self, raft)


class _CountersResource(resource.Resource):
    """``GET /v1/app/NAME`` reads a counter (linearizably); ``POST /v1/app/NAME?add=N`` adds to it."""

    def __init__(self, app, raft):
        super().__init__()
        self.app, self.raft = app, raft

    def getChild(self, name, request):
        return _Counter(self.app, self.raft, name.decode("utf-8"))


class _Counter(resource.Resource):
    isLeaf = True

    def __init__(self, app, raft, key):
        super().__init__()
        self.app, self.raft, self.key = app, raft, key

    def render_GET(self, request):
        d = self.raft.read_index()
        d.addCallback(lambda _: {"value": self.app.counts.get(self.key, 0)})
        return self._answer(request, d)

    def render_POST(self, request):
        try:
            add = int(request.args[b"add"][0])
        except (KeyError, ValueError):
            request.setResponseCode(400)
            return b'{"error": "give ?add=N"}'
        d = self.raft.append(json.dumps({"key": self.key, "add": add}).encode())
        d.addCallback(lambda total: {"value": total})
        return self._answer(request, d)

    def _answer(self, request, d):
        def ok(document):
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(document).encode())
            request.finish()

        def failed(failure):
            request.setResponseCode(503)  # unknown outcome: it may still be applied
            request.write(json.dumps({"error": str(failure.value)}).encode())
            request.finish()

        d.addCallbacks(ok, failed)
        return server.NOT_DONE_YET


class CounterModel:
    """A counter: ``read`` returns the total; ``add`` adds ``value`` (its output is not checked)."""

    def init(self):
        return 0

    def step(self, state, op):
        if op.kind == "read":
            return op.status != "ok" or op.output == state, state
        return True, state + op.value


@implementer(IChaosAdapter)
class CountersAdapter:
    """Drives :class:`Counters` through its ``/v1/app/`` API."""

    model = CounterModel()

    def __init__(self, cluster, timeout=3.0):
        self.cluster = cluster
        self.timeout = timeout
        self._clients = {}

    def next_operation(self, rng, key):
        return ("read", None) if rng.random() < 0.5 else ("add", rng.randrange(1, 10))

    def invoke(self, member, kind, key, value):
        return defer.ensureDeferred(self._invoke(member, kind, key, value))

    async def _invoke(self, member, kind, key, value):
        client = self._clients.get(member.id)
        if client is None:
            client = self._clients[member.id] = self.cluster.client(member, timeout=self.timeout)
        url = f"{client.server}/v1/app/{quote(key, safe='')}"
        try:
            if kind == "read":
                code, body = await client.request("GET", url)
            else:
                code, body = await client.request("POST", url, params={"add": str(value)})
        except ClientError as e:
            if "refused" in str(e).lower():
                raise Definite(str(e)) from None
            raise
        if 400 <= code < 500:
            raise Definite(f"{kind} {key}: HTTP {code}")
        if code != 200:
            raise RuntimeError(f"{kind} {key}: HTTP {code}: outcome unknown")
        return json.loads(body)["value"] if kind == "read" else None

    def read(self, member, key):
        return self.invoke(member, "read", key, None)

    def close(self):
        return defer.succeed(None)


if __name__ == "__main__":
    import os
    import sys
    import tempfile

    from txraft.testing import chaos

    os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    with tempfile.TemporaryDirectory(prefix="txraft-chaos-counters-") as out:
        sys.exit(chaos.main(["--duration", "10", "--out", out,
                             "--app", "docs.examples.chaos_counters:Counters",
                             "--adapter", "docs.examples.chaos_counters:CountersAdapter"]))
