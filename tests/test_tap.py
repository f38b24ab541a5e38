"""
``twistd raft``: the plugin is found, its options have their documented
defaults, and every bad configuration stops with one clear UsageError before
anything is written.
"""

import os
import socket
import subprocess

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from txraft import certs
from txraft.testing.processes import twistd_command
from txraft.tap import DEFAULTS, Options, load_app_class, makeService

APP = "txraft.testing:RecordingClient"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tap-pki")
    paths = certs.write_cluster_certs(str(directory), ["member1", "member2", "member3"], client="admin")
    return {name: {"cert": pair[0], "key": pair[1], "ca": paths["ca"][0]} for name, pair in paths.items()}


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def tls_args(pki, name="member1"):
    files = pki[name]
    return ["--cert", files["cert"], "--key", files["key"], "--ca", files["ca"]]


def refused(*args):
    with pytest.raises(usage.UsageError) as info:
        parse(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- packaging ----------------------------------------------------------------


def test_the_raft_plugin_is_found_by_twisted():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "raft" in makers
    assert makers["raft"].options is Options


def test_twistd_lists_raft_from_any_directory(tmp_path):
    twistd = subprocess.run([*twistd_command(), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert twistd.returncode == 0, twistd.stderr
    assert any(line.split()[:1] == ["raft"] for line in twistd.stdout.splitlines()), twistd.stdout


# -- defaults -------------------------------------------------------------------


def test_defaults(tmp_path):
    logdir = str(tmp_path / "log")
    options = parse("--insecure", "--app", APP, "--logdir", logdir)
    config = options.config()
    assert config.listen == DEFAULTS["listen"] == "127.0.0.1:7001"
    assert config.heartbeat == DEFAULTS["heartbeat"]
    assert config.election_timeout == DEFAULTS["election-timeout"]
    assert config.snapshot_threshold == DEFAULTS["snapshot-threshold"]
    assert config.fsync == "always"
    assert config.log_dir == logdir
    assert config.insecure
    assert options["members"] == ("127.0.0.1:7001",)
    assert options["http_address"] is None
    assert options["app"] != APP or options["app_class"].__name__ == "RecordingClient"
    assert not os.path.exists(logdir), "parsing options must not write anything"


def test_the_default_logdir_is_named_after_the_listen_address(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = parse("--insecure", "--app", APP, "--listen", "127.0.0.21:7101")
    assert options["logdir"] == os.path.join(".", "txraft-127.0.0.21-7101")
    assert os.listdir(tmp_path) == []


def test_help_states_each_default_once():
    """usage.Options appends "[default: VALUE]" unless the default is None: no "[default: ]" next to ours."""
    help_text = " ".join(str(Options()).split())
    assert "[default: ]" not in help_text
    assert help_text.count("[default:") == len([o for o in Options.optParameters if o[2] is not None]) + sum(
        "[default:" in o[3] for o in Options.optParameters if o[2] is None)
    assert "admitted. [default: the NAMEs of --peers] --allow-readable-key" in help_text
    assert "[default: none, a one-member cluster] --request-timeout" in help_text


def test_the_default_app_is_the_key_value_store():
    assert DEFAULTS["app"] == "txraft.kv:KeyValueStore"
    assert Options().defaults["app"] == "txraft.kv:KeyValueStore"


@pytest.mark.parametrize("include_self", [True, False])
def test_peers_may_include_or_omit_this_member(tmp_path, include_self):
    peers = ["127.0.0.22:7002", "127.0.0.23:7003"] + (["127.0.0.21:7001"] if include_self else [])
    options = parse("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"),
                    "--listen", "127.0.0.21:7001", "--peers", ",".join(peers))
    assert sorted(options["members"]) == ["127.0.0.21:7001", "127.0.0.22:7002", "127.0.0.23:7003"]
    assert options.config().listen == "127.0.0.21:7001"


def test_named_peers_give_the_acl_and_the_names_members_must_carry(tmp_path, pki):
    options = parse(*tls_args(pki), "--app", APP, "--logdir", str(tmp_path / "d"), "--listen", "127.0.0.21:7001",
                    "--peers", "member1@127.0.0.21:7001,member2@127.0.0.22:7002,member3@127.0.0.23:7003")
    config = options.config()
    assert config.acl == ("member1", "member2", "member3")
    assert config.peer_names == {"127.0.0.21:7001": "member1", "127.0.0.22:7002": "member2",
                                 "127.0.0.23:7003": "member3"}
    assert not config.insecure


def test_every_option_is_parsed(tmp_path, pki):
    options = parse(*tls_args(pki), "--app", "txraft.kv:KeyValueStore", "--logdir", str(tmp_path / "d"), "--listen", "127.0.0.21:7001",
                    "--peers", "127.0.0.22:7002", "--heartbeat", "0.05", "--election-timeout", "0.5",
                    "--snapshot-threshold", "500", "--fsync", "never", "--acl", "member2, member3",
                    "--http", "127.0.0.21:0", "--client-acl", "admin,ops", "--request-timeout", "3")
    config = options.config()
    assert (config.heartbeat, config.election_timeout, config.snapshot_threshold, config.fsync) == (
        0.05, 0.5, 500, "never")
    assert config.acl == ("member2", "member3")
    assert config.request_timeout == 3.0
    assert options["http_address"] == ("127.0.0.21", 0)
    assert options["client_acl_names"] == ("admin", "ops")


def test_make_service_builds_a_raft_service(tmp_path):
    from txraft.service import RaftService

    options = parse("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"), "--peers", "127.0.0.1:7002")
    svc = makeService(options)
    assert isinstance(svc, RaftService)
    assert svc.members == ("127.0.0.1:7001", "127.0.0.1:7002")
    assert type(svc.app).__name__ == "RecordingClient"
    assert svc.tune_gc  # a twistd member makes the collector's pauses rare (docs/performance.md)
    assert (svc.http_guard.limits.max_connections, svc.http_guard.limits.max_per_source) == (512, 128)


def test_the_http_connection_caps_are_options(tmp_path):
    options = parse("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"),
                    "--max-http-connections", "2048", "--max-http-connections-per-address", "1100")
    limits = makeService(options).http_guard.limits
    assert (limits.max_connections, limits.max_per_source) == (2048, 1100)


def test_make_service_hands_down_the_credentials_loaded_while_checking(tmp_path, pki):
    """The certificate files are read once, by the options check; the service
    (member transport and HTTPS API) gets those credentials, not the paths to read again."""
    options = parse(*tls_args(pki), "--app", APP, "--logdir", str(tmp_path / "d"))
    assert options["credentials"].certificate is not None
    svc = makeService(options)
    assert svc.credentials is options["credentials"]


# -- bad configuration ----------------------------------------------------------


def test_tls_options_missing_without_insecure(tmp_path):
    message = refused("--app", APP, "--logdir", str(tmp_path / "d"))
    assert "--cert" in message and "--insecure" in message


def test_missing_certificate_file(tmp_path, pki):
    args = tls_args(pki)
    args[1] = str(tmp_path / "nowhere.pem")
    message = refused(*args, "--app", APP, "--logdir", str(tmp_path / "d"))
    assert message == f"--cert {tmp_path / 'nowhere.pem'}: no such file"


def test_a_key_that_does_not_belong_to_the_certificate(tmp_path, pki):
    args = tls_args(pki)
    args[3] = pki["member2"]["key"]
    assert "does not belong" in refused(*args, "--app", APP, "--logdir", str(tmp_path / "d"))


def test_insecure_with_certificates_is_contradictory(tmp_path, pki):
    assert "--insecure" in refused("--insecure", *tls_args(pki), "--app", APP, "--logdir", str(tmp_path / "d"))


def test_tls_cluster_without_any_acl(tmp_path, pki):
    message = refused(*tls_args(pki), "--app", APP, "--logdir", str(tmp_path / "d"), "--peers", "127.0.0.1:7002")
    assert "--acl" in message


def test_logdir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    assert "is not a directory" in refused("--insecure", "--app", APP, "--logdir", str(path))
    assert "cannot be created" in refused("--insecure", "--app", APP, "--logdir", str(path / "sub"))


def test_logdir_that_is_not_writable(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(str(locked), os.W_OK):
        # Root passes every permission check, so make access() answer as the
        # kernel would for any other user; the check under test is the same.
        import txraft.tap

        real_access = os.access
        monkeypatch.setattr(txraft.tap.os, "access",
                            lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    assert "not readable and writable" in refused("--insecure", "--app", APP, "--logdir", str(locked))


@pytest.mark.parametrize("listen, expected", [
    ("7001", "must be HOST:PORT"),
    (":7001", "the host is empty"),
    ("127.0.0.1:http", "is not a port number"),
    ("127.0.0.1:70000", "port out of range"),
    ("127.0.0.1:0", "fixed port"),
    ("0.0.0.0:7001", "not a wildcard"),
])
def test_malformed_listen_address(tmp_path, listen, expected):
    message = refused("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"), "--listen", listen)
    assert expected in message and "--listen" in message


@pytest.mark.parametrize("peers, expected", [
    ("127.0.0.1", "must be HOST:PORT"),
    ("@127.0.0.1:7002", "name before '@' is empty"),
    ("127.0.0.1:0", "fixed port"),
    ("a@127.0.0.1:7002,b@127.0.0.1:7002", "two certificate names"),
])
def test_malformed_peers(tmp_path, peers, expected):
    assert expected in refused("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"), "--peers", peers)


@pytest.mark.parametrize("app, expected", [
    ("no.such.module:Thing", "cannot import module 'no.such.module'"),
    ("txraft.testing:NoSuchClass", "has no 'NoSuchClass'"),
    ("txraft.config:RaftConfig", "is not a RaftClient subclass"),
    ("nocolon", "must be module:Class"),
])
def test_unknown_app_class(tmp_path, app, expected):
    message = refused("--insecure", "--app", app, "--logdir", str(tmp_path / "d"))
    assert expected in message and "--app" in message


def test_load_app_class_accepts_dots_and_colons():
    from txraft.testing import RecordingClient

    assert load_app_class("txraft.testing:RecordingClient") is RecordingClient
    assert load_app_class("txraft.testing.RecordingClient") is RecordingClient


@pytest.mark.parametrize("args, expected", [
    (["--fsync", "sometimes"], "--fsync must be one of always, never"),
    (["--heartbeat", "0"], "heartbeat"),
    (["--heartbeat", "fast"], "heartbeat"),
    (["--election-timeout", "0.05"], "must be above --heartbeat"),
    (["--snapshot-threshold", "0"], "snapshot-threshold"),
    (["--max-http-connections", "none"], "--max-http-connections must be a positive integer"),
    (["--max-http-connections-per-address", "0"], "--max-http-connections-per-address must be a positive"),
    (["--max-http-connections", "100"], "--max-http-connections-per-address (128) is above --max-http-connections (100)"),
    (["--http", "localhost"], "--http must be HOST:PORT"),
])
def test_bad_values(tmp_path, args, expected):
    assert expected in refused("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"), *args)


def test_the_http_api_needs_the_key_value_store(tmp_path):
    message = refused("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"), "--http", "127.0.0.1:0")
    assert message == ("--http serves the key-value API or the application's own (its http_resource(raft) "
                       "method), but --app txraft.testing:RecordingClient is not a txraft.kv.KeyValueStore "
                       "and has no http_resource")


def test_https_needs_a_client_acl(tmp_path, pki):
    message = refused(*tls_args(pki), "--app", APP, "--logdir", str(tmp_path / "d"), "--http", "127.0.0.1:0")
    assert "--client-acl" in message


def test_listen_address_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        message = refused("--insecure", "--app", APP, "--logdir", str(tmp_path / "d"),
                          "--listen", f"127.0.0.1:{port}")
    assert message == f"--listen 127.0.0.1:{port}: cannot listen there: address already in use"


def test_twistd_stops_with_one_clear_line_and_writes_nothing(tmp_path, pki):
    logdir = tmp_path / "log"
    missing = tmp_path / "missing.key"
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "raft", "--app", APP, "--logdir", str(logdir),
         "--listen", f"127.0.0.1:{free_port()}", "--cert", pki["member1"]["cert"], "--key", str(missing),
         "--ca", pki["member1"]["ca"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(f"--key {missing}: no such file"), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_a_member_that_cannot_start_exits_with_one_line(tmp_path):
    """A log directory locked by another member is only found at start: exit 1, one line, no traceback."""
    import fcntl

    logdir = tmp_path / "log"
    logdir.mkdir()
    holder = os.open(logdir, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", "raft", "--insecure", "--app", APP, "--logdir", str(logdir),
             "--listen", f"127.0.0.1:{free_port()}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    finally:
        os.close(holder)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "could not start: log_dir" in output and "is in use by another storage" in output
    assert "Traceback" not in output
    assert os.listdir(logdir) == []


def test_a_corrupt_log_points_to_the_lost_disk_procedure(tmp_path):
    """A CorruptLog refusal at start says where the operator finds what to do."""
    from txraft.storage.files import log_name

    logdir = tmp_path / "log"
    logdir.mkdir()
    (logdir / log_name(0, 0)).write_bytes(b"not a txraft log at all")
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "raft", "--insecure", "--app", APP, "--logdir", str(logdir),
         "--listen", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    # twistd -n sends standard error to its log, on standard output.
    (line,) = [l for l in (result.stdout + result.stderr).splitlines() if "txraft: member" in l]
    assert "not a txraft log" in line
    assert line.endswith("the member refuses to run on a damaged log: "
                         "see \"A member's disk is lost\" in docs/operations.md"), line
    assert "## A member's disk is lost" in open(os.path.join(os.path.dirname(__file__), "..", "docs",
                                                             "operations.md")).read()
    assert "Traceback" not in result.stdout + result.stderr
