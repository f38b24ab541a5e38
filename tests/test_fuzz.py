"""
Fuzzing what reaches a member from outside (issue 9): arbitrary AMP boxes and
bytes to the member protocol, arbitrary HTTP requests to the API, arbitrary
bytes in a log directory.  Whatever arrives, the member answers with a typed
error or closes only that connection, logs nothing critical, and its stored
state does not change.

Each test runs ``TXRAFT_FUZZ_EXAMPLES`` examples (60 by default, a few
seconds); a longer run::

    TXRAFT_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py
"""

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from txraft import errors
from txraft import messages as m
from txraft.http import create_api
from txraft.kv import KeyValueStore
from txraft.service import ClientCertificateSite
from txraft.storage.recovery import recover
from txraft.testing import SimulatedCluster
from txraft.transport import commands
from txraft.transport.amp import MemberContext, MemberProtocol
from tests.core.harness import make_core

FUZZ = settings(max_examples=int(os.environ.get("TXRAFT_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Serious:
    """Collects log events at error level or above while in a ``with`` block."""

    def __enter__(self):
        self.events = []
        globalLogPublisher.addObserver(self._observe)
        return self

    def _observe(self, event):
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            self.events.append(event)

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self._observe)


# -- the member protocol ------------------------------------------------------------

COMMAND_NAMES = sorted(c.commandName for c in (*commands.COMMANDS.values(), commands.Fragment))
ARGUMENT_NAMES = sorted({name for c in (*commands.COMMANDS.values(), commands.Fragment) for name, _ in c.arguments})
values = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"True", b"False", b"=", b"@1", b"=\x90", b"=\x91\x90", b"\x93\xa1s\x01\x01", b""]),
)
boxes = st.dictionaries(st.sampled_from(ARGUMENT_NAMES) | st.binary(min_size=1, max_size=12), values, max_size=10)


def state(core):
    return core.storage.hard_state, core.storage.last_index, core.commit_index


def server_on_string_transport(core):
    context = MemberContext(None, 1 << 20)
    context.handler = core
    server = MemberProtocol(context, "server")
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport


@FUZZ
@given(st.sampled_from(COMMAND_NAMES) | st.binary(min_size=1, max_size=20), boxes)
def test_arbitrary_boxes_get_a_typed_answer_or_close_only_their_connection(name, box):
    core = make_core()
    before = state(core)
    server, transport = server_on_string_transport(core)
    request = amp.AmpBox(box)
    request.update({b"_ask": b"1", b"_command": name})
    with Serious() as serious:
        server.dataReceived(request.serialize())
    assert not serious.events, serious.events
    answers = amp.parseString(transport.value())
    assert len(answers) == 1 or transport.disconnecting, (answers, transport.disconnecting)
    for answer in answers:
        assert answer.get(b"_answer") == b"1" or answer.get(b"_error") == b"1", answer
        if b"_error" in answer:
            assert answer[b"_error_code"] in set(commands.ERRORS.values()) | {b"BAD_REQUEST", b"UNHANDLED"}, answer
            assert state(core) == before


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_on_a_member_connection_never_escape_the_protocol(chunks):
    core = make_core()
    before = state(core)
    server, transport = server_on_string_transport(core)
    with Serious() as serious:
        for chunk in chunks:
            server.dataReceived(chunk)
    assert not serious.events, serious.events
    assert state(core) == before


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=255), st.binary(max_size=2000)), max_size=12))
def test_framed_boxes_with_arbitrary_keys_and_values_are_parsed_within_limits(pairs):
    core = make_core()
    server, transport = server_on_string_transport(core)
    data = b"".join(struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v for k, v in pairs)
    with Serious() as serious:
        server.dataReceived(data + b"\x00\x00")
    assert not serious.events, serious.events
    assert state(core)[0] == m.HardState(0, "")


# -- the HTTP API --------------------------------------------------------------------

methods = st.sampled_from([b"GET", b"PUT", b"POST", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS", b"G\x00T", b""])
paths = st.one_of(
    st.sampled_from([b"/v1/kv/k", b"/v1/kv/k?cas", b"/v1/kv/%FF", b"/v1/status", b"/metrics", b"/", b"/v1/kv/",
                     b"/v1/kv/k?stale=%FF", b"*", b"//", b"/v1/kv/" + b"x" * 2000]),
    st.binary(max_size=60),
)
headers = st.lists(st.tuples(st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Expect",
                                              b"Host", b"X"]) | st.binary(max_size=20),
                             st.sampled_from([b"5", b"-1", b"99999999999", b"chunked", b"100-continue", b"abc"])
                             | st.binary(max_size=20)), max_size=6)
bodies = st.one_of(st.binary(max_size=300), st.sampled_from([b"[" * 3000, b'{"expect": null, "value": "\xff"}',
                                                            b'{"expect": 1, "value": []}', b"5\r\nhello\r\n0\r\n\r\n"]))


def http_member():
    cluster = SimulatedCluster(1, seed=3, client_factory=KeyValueStore)
    cluster.start()
    cluster.wait_for_leader()
    member_id = cluster.ids[0]
    return cluster, cluster.members[member_id], cluster.clients[member_id]


@FUZZ
@given(methods, paths, headers, bodies, st.booleans())
def test_arbitrary_http_requests_get_an_http_answer_or_a_closed_connection(method, path, header_list, body, lf):
    cluster, raft, store = http_member()
    before = (store.items(), raft.status().last_index)
    site = ClientCertificateSite(create_api(raft, store, max_command_size=1024), reactor=Clock(),
                                 max_body_bytes=1024)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    end = b"\n" if lf else b"\r\n"
    request = method + b" " + path + b" HTTP/1.1" + end + b"".join(k + b": " + v + end for k, v in header_list)
    with Serious() as serious:
        channel.dataReceived(request + end + body)
    assert not serious.events, serious.events
    written = transport.value()
    if written:
        assert written.startswith(b"HTTP/1.1 "), written[:80]
        status = int(written.split(b" ", 2)[1])
        assert status < 500, written[:300]
    # The store changes only by applying committed entries, which needs the
    # cluster's clock to run; a well-formed write may have placed one entry.
    assert store.items() == before[0]
    placed = raft.status().last_index - before[1]
    assert placed == 0 or (placed == 1 and method in (b"PUT", b"POST", b"DELETE"))
    channel.connectionLost(Failure(ConnectionError("test over")))


# -- log recovery ----------------------------------------------------------------------

FIRST_LOG = "00000000000000000000.00000000000000000000.log"


def a_log():
    from txraft.storage.records import new_log_bytes

    entries = [m.Entry(1, i, data=b"cmd%d" % i) for i in range(1, 6)]
    data, _ = new_log_bytes(0, 0, m.HardState(1, "127.0.0.1:7000"), entries)
    return data


LOG = a_log()


@FUZZ
@given(st.integers(min_value=0, max_value=len(LOG)), st.binary(max_size=64), st.booleans())
def test_arbitrary_bytes_in_a_log_are_recovered_or_refused_with_corrupt_log(tmp_path_factory, at, junk, replace):
    directory = str(tmp_path_factory.mktemp("fuzzed"))
    data = LOG[:at] + junk + (LOG[at + len(junk):] if replace else LOG[at:])
    with open(os.path.join(directory, FIRST_LOG), "wb") as f:
        f.write(data)
    try:
        state = recover(directory, fsync=False)
    except errors.CorruptLog as refusal:
        assert FIRST_LOG in str(refusal)
        with open(os.path.join(directory, FIRST_LOG), "rb") as f:
            assert f.read() == data  # refused: nothing changed
        return
    try:
        # What is kept is a prefix of the history: entries 1..n in order, each intact.
        assert state.index.first_index == 1 and 0 <= state.index.last_index
        for index in range(1, state.index.last_index + 1):
            assert state.index.term_at(index) is not None
        assert state.hard_state.term < m.NUMBER_LIMIT
    finally:
        for segment in {id(s): s for s in list(state.index.segments) + [state.active]}.values():
            segment.close()
        os.close(state.lock)
