"""
``twistd raft``: the options of one txraft member and the service they make.

Run a member in the foreground::

    twistd -n --pidfile= raft --listen 10.0.0.1:7001 \\
        --peers member1@10.0.0.1:7001,member2@10.0.0.2:7001,member3@10.0.0.3:7001 \\
        --logdir /var/lib/txraft --cert member1.pem --key member1.key --ca ca.pem \\
        --http 10.0.0.1:8001 --client-acl admin

Every option is checked in :meth:`Options.postOptions`, before anything is
written or bound: a bad configuration stops ``twistd`` with one
``usage.UsageError`` line and a non-zero exit.  ``docs/cluster.md`` explains
each option; :data:`DEFAULTS` holds the defaults.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket

from twisted.python import usage

from txraft.config import FSYNC_POLICIES, RaftConfig, parse_host_port
from txraft.errors import ConfigurationError

__all__ = ["Options", "makeService", "DEFAULTS", "load_app_class"]

#: Default values of the options (in their target types; ``None`` where the
#: help says what the default is, since usage.Options appends
#: "[default: VALUE]" to every other one).  The timing
#: defaults were measured with ``bench/bench_failover.py`` and
#: ``bench/compare.py`` (docs/cluster.md, "Timing"): a 3-member cluster of real
#: processes on a busy 2-core machine holds no spurious elections under write
#: load or 60 s of saturation, and a write succeeds through a survivor about
#: 0.57 s after the leader is killed.
DEFAULTS = {
    "listen": "127.0.0.1:7001",
    "peers": None,
    "heartbeat": 0.1,
    "election-timeout": 0.45,
    "snapshot-threshold": 10000,
    "fsync": "always",
    "acl": None,
    "app": "txraft.kv:KeyValueStore",
    "max-http-connections": 512,
    "max-http-connections-per-address": 128,
    "http": None,
    "client-acl": None,
    "request-timeout": 10.0,
}


def _seconds(option, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0 or number != number or number == float("inf"):
        raise ConfigurationError(f"--{option} must be a positive number of seconds, got {value!r}")
    return number


def _positive_int(option, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigurationError(f"--{option} must be a positive integer, got {value!r}")
    return number


def _names(value):
    """``"a,b, c"`` -> ``("a", "b", "c")``."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def load_app_class(spec):
    """
    Import the application class named ``module:Class`` (or ``module.Class``).

    :returns: the class, a :class:`txraft.RaftClient` subclass or any class
        providing :class:`txraft.interfaces.IRaftClient`.
    :raises ConfigurationError: naming what could not be found.
    """
    from txraft.interfaces import IRaftClient

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(f"--app must be module:Class, got {spec!r}")
    spec = spec.strip()
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
    else:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must be module:Class, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"--app {spec}: cannot import module {module_name!r} ({e})") from None
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigurationError(f"--app {spec}: module {module_name!r} has no {attribute!r}")
    if not isinstance(target, type) or not IRaftClient.implementedBy(target):
        raise ConfigurationError(f"--app {spec}: {attribute} is not a RaftClient subclass")
    return target


def _check_logdir(path):
    """Refuse a log directory that cannot be used, without creating anything."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigurationError(f"--logdir {path}: exists and is not a directory")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigurationError(f"--logdir {path}: not readable and writable by this user")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigurationError(f"--logdir {path}: cannot be created, {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--logdir {path}: cannot be created, {parent} is not writable")


def _check_file(option, path):
    if not os.path.exists(path):
        raise ConfigurationError(f"--{option} {path}: no such file")
    if not os.path.isfile(path):
        # A directory, a device (/dev/zero would be read forever), a FIFO, a socket.
        raise ConfigurationError(f"--{option} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigurationError(f"--{option} {path}: not readable")


def _check_key_private(path, allow_readable):
    """Refuse a private key other users may read or change, unless allowed (then a warning at start)."""
    mode = os.stat(path).st_mode & 0o777
    if not mode & 0o077:
        return None
    problem = (f"--key {path}: other users may {'change' if mode & 0o022 else 'read'} it (mode {mode:04o}); "
               f"anyone who reads it can join the cluster as this member")
    if mode & 0o022 or not allow_readable:
        raise ConfigurationError(problem + ": chmod 600 it" + (
            "" if mode & 0o022 else ", or pass --allow-readable-key (e.g. a key shared with a group-readable "
                                    "secrets mount)"))
    return problem


def _check_bindable(option, host, port):
    """Fail now, with one line, when ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            reason = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise ConfigurationError(f"--{option} {host}:{port}: cannot listen there: {reason}") from None


class Options(usage.Options):
    """The command line of ``twistd raft``."""

    synopsis = "[options]"
    longdesc = (
        "Run one member of a txraft cluster: a Raft replicated log on disk, mutual-TLS member "
        "connections with a certificate-name ACL, the replicated application (by default the "
        "key-value store) and, with --http, its HTTP(S) API. See docs/cluster.md."
    )

    optFlags = [
        ["insecure", None, "Plain TCP and HTTP: no certificates, no encryption, no ACL. Never in production."],
        ["allow-readable-key", None,
         "Start even if other users may read --key (a warning is logged); a key others may change is "
         "always refused."],
        ["no-auto-promote", None,
         "As leader, leave members added as voters learners until promoted explicitly (txraft member promote)."],
    ]

    optParameters = [
        ["logdir", "d", None,
         "Directory of the log and snapshots; created if missing. [default: ./txraft-HOST-PORT of --listen]"],
        ["listen", "l", DEFAULTS["listen"], "HOST:PORT the member listens on for peers; also its member id."],
        ["peers", "p", DEFAULTS["peers"],
         "Comma-separated HOST:PORT or NAME@HOST:PORT of the cluster's members (this one may be included "
         "or left out). NAME is the certificate name that member must carry. [default: none, a "
         "one-member cluster]"],
        ["heartbeat", None, DEFAULTS["heartbeat"], "Seconds between the leader's heartbeats."],
        ["election-timeout", None, DEFAULTS["election-timeout"],
         "Seconds without a leader before a follower stands for election (plus a random part of up "
         "to one heartbeat)."],
        ["snapshot-threshold", None, DEFAULTS["snapshot-threshold"],
         "Applied entries between snapshots."],
        ["fsync", None, DEFAULTS["fsync"],
         "always: the log is fsynced before a member acknowledges; never: leave it to the OS "
         "(see docs/operations.md)."],
        ["cert", None, None, "PEM certificate of this member (required unless --insecure)."],
        ["key", None, None, "PEM private key of this member (required unless --insecure)."],
        ["ca", None, None, "PEM certificate of the cluster CA (required unless --insecure)."],
        ["acl", None, DEFAULTS["acl"],
         "Comma-separated certificate names of the members admitted. [default: the NAMEs of --peers]"],
        ["app", None, DEFAULTS["app"], "The replicated application, module:Class (a RaftClient subclass)."],
        ["http", None, DEFAULTS["http"],
         "HOST:PORT of the client API (HTTPS with client certificates; HTTP with --insecure). "
         "[default: off]"],
        ["client-acl", None, DEFAULTS["client-acl"],
         "Comma-separated certificate names of the clients admitted to the HTTPS API (required "
         "with --http unless --insecure)."],
        ["max-http-connections", None, DEFAULTS["max-http-connections"],
         "Connections the HTTP(S) API holds at once; more are closed at accept (see docs/security.md)."],
        ["max-http-connections-per-address", None, DEFAULTS["max-http-connections-per-address"],
         "Connections the HTTP(S) API holds from one client address at once (a proxy or a load balancer "
         "counts as one address)."],
        ["request-timeout", None, DEFAULTS["request-timeout"],
         "Seconds a client request may wait for a quorum before it fails (HTTP 503)."],
        ["join", None, None,
         "Comma-separated HOST:PORT of running members: with an empty log directory, ask them to add this "
         "member (as a learner, promoted once caught up) instead of starting a cluster of --peers. "
         "See docs/membership.md."],
    ]

    compData = usage.Completions(
        optActions={
            "fsync": usage.CompleteList(FSYNC_POLICIES),
            "cert": usage.CompleteFiles("*.pem"),
            "key": usage.CompleteFiles("*.key"),
            "ca": usage.CompleteFiles("*.pem"),
            "logdir": usage.CompleteDirs(),
        }
    )

    _config_error = False

    def postOptions(self):
        try:
            self._check()
        except ConfigurationError as e:
            self._config_error = True
            raise usage.UsageError(str(e)) from None

    def getUsage(self, width=None):
        # twistd prints the usage before the error: after a configuration
        # error, keep it to one line so that the error stays readable.
        if self._config_error:
            return "(twistd raft --help lists the options)"
        return super().getUsage(width)

    def _check(self):
        from txraft.transport.addresses import member_id, parse_peers

        host, port = parse_host_port(self["listen"], "--listen")
        if port == 0:
            raise ConfigurationError(f"--listen {self['listen']}: a member needs a fixed port, not 0")
        if host in ("0.0.0.0", "::", "*"):
            raise ConfigurationError(
                f"--listen {self['listen']}: the listen address is the member id, which the other members "
                "dial: give this host's address, not a wildcard")
        me = member_id(host, port)
        peers = parse_peers(self["peers"] or "")
        members = list(peers.ids)
        if me not in members:
            members.insert(0, me)
        self["member_id"] = me
        self["members"] = tuple(members)
        self["peer_names"] = dict(peers.names)
        self["join_members"] = ()
        if self["join"]:
            self["join_members"] = tuple(parse_peers(self["join"]).ids)
            if me in self["join_members"]:
                raise ConfigurationError(f"--join {self['join']}: names this member itself")

        for option in ("heartbeat", "election-timeout", "request-timeout"):
            self[option] = _seconds(option, self[option])
        self["snapshot-threshold"] = _positive_int("snapshot-threshold", self["snapshot-threshold"])
        for option in ("max-http-connections", "max-http-connections-per-address"):
            self[option] = _positive_int(option, self[option])
        if self["max-http-connections-per-address"] > self["max-http-connections"]:
            raise ConfigurationError(
                f"--max-http-connections-per-address ({self['max-http-connections-per-address']}) is above "
                f"--max-http-connections ({self['max-http-connections']})")
        if self["fsync"] not in FSYNC_POLICIES:
            raise ConfigurationError(f"--fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self['fsync']!r}")
        if self["election-timeout"] <= self["heartbeat"]:
            raise ConfigurationError(
                f"--election-timeout ({self['election-timeout']}) must be above --heartbeat ({self['heartbeat']})")

        if self["logdir"] is None:
            self["logdir"] = os.path.join(".", f"txraft-{host}-{port}")
        _check_logdir(self["logdir"])

        acl = _names(self["acl"]) or tuple(sorted(set(self["peer_names"].values())))
        self["acl_names"] = acl
        self["client_acl_names"] = _names(self["client-acl"])

        if self["insecure"]:
            given = [o for o in ("cert", "key", "ca") if self[o]]
            if given:
                raise ConfigurationError(f"--insecure contradicts --{given[0]}: choose certificates or --insecure")
            self["credentials"] = None
            self["key_warning"] = None
        else:
            missing = [o for o in ("cert", "key", "ca") if not self[o]]
            if missing:
                raise ConfigurationError(
                    "TLS needs --cert, --key and --ca (missing: "
                    + ", ".join("--" + o for o in missing)
                    + "); or run with --insecure (plain TCP, never in production)")
            for option in ("cert", "key", "ca"):
                _check_file(option, self[option])
            self["key_warning"] = _check_key_private(self["key"], self["allow-readable-key"])
            from txraft.transport.tls import TLSCredentials

            self["credentials"] = TLSCredentials.load(self["cert"], self["key"], self["ca"])
            self["credentials"].check_own_certificate()
            if (len(members) > 1 or self["join_members"]) and not acl:
                raise ConfigurationError(
                    "no member would be admitted: give --acl NAME,... or name the members in --peers "
                    "(NAME@HOST:PORT)")

        app_class = load_app_class(self["app"])
        self["app_class"] = app_class

        self["http_address"] = None
        if self["http"] is not None:
            http_host, http_port = parse_host_port(self["http"], "--http")
            if (http_host, http_port) == (host, port):
                raise ConfigurationError(f"--http {self['http']}: the same address as --listen")
            if not self["insecure"] and not self["client_acl_names"]:
                raise ConfigurationError(
                    "--http with certificates needs --client-acl NAME,... (the client certificate names "
                    "admitted); or run with --insecure")
            from txraft.kv import KeyValueStore

            if not issubclass(app_class, KeyValueStore) and not callable(getattr(app_class, "http_resource", None)):
                raise ConfigurationError(
                    f"--http serves the key-value API or the application's own (its http_resource(raft) "
                    f"method), but --app {self['app']} is not a txraft.kv.KeyValueStore and has no http_resource")
            self["http_address"] = (http_host, http_port)

        _check_bindable("listen", host, port)
        if self["http_address"] is not None and self["http_address"][1] != 0:
            _check_bindable("http", *self["http_address"])

    def config(self):
        """:returns: the :class:`~txraft.config.RaftConfig` these options describe."""
        return RaftConfig(
            log_dir=self["logdir"],
            listen=self["member_id"],
            heartbeat=self["heartbeat"],
            election_timeout=self["election-timeout"],
            snapshot_threshold=self["snapshot-threshold"],
            request_timeout=self["request-timeout"],
            fsync=self["fsync"],
            cert=self["cert"],
            key=self["key"],
            ca=self["ca"],
            acl=self["acl_names"],
            insecure=bool(self["insecure"]),
            peer_names=self["peer_names"],
            auto_promote=not self["no-auto-promote"],
            join=self["join_members"],
            name=self._own_name(),
        )

    def _own_name(self):
        """The certificate name this member presents (recorded in the configuration when it joins)."""
        if self["credentials"] is None:
            return ""
        from txraft.transport.tls import certificate_names

        names = sorted(certificate_names(self["credentials"].certificate))
        return names[0] if names else ""


def makeService(options):
    """
    :returns: a :class:`txraft.service.RaftService` for parsed ``options``.
        When the member cannot start (its log directory is locked by another
        member, a port was taken meanwhile), the process exits with status 1
        after logging one line.
    """
    from dataclasses import replace

    from txraft.service import RaftService
    from txraft.transport.limits import HTTP_LIMITS

    return RaftService(
        options.config(),
        options["app_class"](),
        members=options["members"],
        http=options["http_address"],
        client_acl=options["client_acl_names"],
        exit_on_failure=True,
        tune_gc=True,
        # Loaded once, while the options were checked; the member transport
        # and the HTTPS API share them.
        credentials=options["credentials"],
        warnings=[options["key_warning"]] if options["key_warning"] else [],
        http_limits=replace(HTTP_LIMITS, max_connections=options["max-http-connections"],
                            max_per_source=options["max-http-connections-per-address"]),
    )
