"""
The ``txraft`` command line.

::

    txraft certs --out certs --names member1,member2,member3 --client admin
    txraft --server https://10.0.0.1:8001 --cert certs/admin.pem --key certs/admin.key --ca certs/ca.pem \\
        put colour blue
    txraft get colour                  # linearizable; --stale reads the member's own state
    txraft cas colour red --expect blue
    txraft delete colour
    txraft status
    txraft check perf --server https://10.0.0.1:8001 --connections 8 --duration 10
    txraft member list                 # members, roles, and on the leader how far each has caught up
    txraft member add 10.0.0.4:7000 --name member4 [--learner]
    txraft member remove 10.0.0.2:7000
    txraft member promote 10.0.0.4:7000
    txraft transfer-leader [--to 10.0.0.3:7000]
    txraft demo                        # a 3-member cluster of real processes, start to finish

The connection options may also come from the environment: ``TXRAFT_SERVER``,
``TXRAFT_CERT``, ``TXRAFT_KEY``, ``TXRAFT_CA``.  Every command prints a
readable result (``--json``: the server's JSON), and on failure one line on
standard error and a non-zero exit status: 1 for an error, 2 for bad usage,
3 when a key is absent or a compare-and-set finds another value.
``--timeout`` bounds each request, answer included: a member that cannot
commit (no quorum) or does not answer gives ``no answer from SERVER within
N s`` (status 1).

:class:`~txraft.http_client.Client` (in its own module) is the HTTP(S)
client the commands use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from twisted.internet import defer, task

from txraft.http_client import Client, ClientError

__all__ = ["main", "Client", "ClientError", "NOT_FOUND_OR_CONFLICT"]

#: Exit status when a key is absent (get) or a compare-and-set conflicts.
NOT_FOUND_OR_CONFLICT = 3


# -- the commands -----------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(
        prog="txraft", description="Talk to a txraft cluster, make its certificates, or run a demo cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    certs = sub.add_parser("certs", help="write a cluster CA and member/client certificates")
    certs.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created if missing)")
    certs.add_argument("--names", required=True, metavar="N1,N2,...", help="member certificate names")
    certs.add_argument("--client", metavar="NAME", help="also write a client certificate with this name")
    certs.add_argument("--json", action="store_true", help="print the paths as JSON")

    def connection(p):
        p.add_argument("--server", default=os.environ.get("TXRAFT_SERVER", "https://127.0.0.1:8001"),
                       help="URL of any member's HTTP API (env TXRAFT_SERVER; default %(default)s)")
        p.add_argument("--cert", default=os.environ.get("TXRAFT_CERT"), help="client certificate (PEM)")
        p.add_argument("--key", default=os.environ.get("TXRAFT_KEY"), help="client private key (PEM)")
        p.add_argument("--ca", default=os.environ.get("TXRAFT_CA"), help="cluster CA certificate (PEM)")
        p.add_argument("--insecure", action="store_true", help="allow a plain http:// server")
        p.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default %(default)s)")
        p.add_argument("--json", action="store_true", help="print the server's JSON answer")

    put = sub.add_parser("put", help="store a value")
    put.add_argument("name", metavar="KEY")
    put.add_argument("value", help="the value; '-' reads it from standard input")
    connection(put)

    get = sub.add_parser("get", help="read a value (linearizable unless --stale)")
    get.add_argument("name", metavar="KEY")
    get.add_argument("--stale", action="store_true", help="read the member's own state, without the leader")
    connection(get)

    delete = sub.add_parser("delete", help="delete a key")
    delete.add_argument("name", metavar="KEY")
    connection(delete)

    cas = sub.add_parser("cas", help="compare-and-set: store VALUE only if KEY holds --expect")
    cas.add_argument("name", metavar="KEY")
    cas.add_argument("value")
    cas.add_argument("--expect", help="the value KEY must hold now (omit: KEY must be absent)")
    connection(cas)

    status = sub.add_parser("status", help="show a member's view of the cluster")
    connection(status)

    check = sub.add_parser("check", help="check a running cluster")
    check_sub = check.add_subparsers(dest="check", metavar="CHECK")
    check_sub.required = True
    perf = check_sub.add_parser(
        "perf", help="write to the named cluster for a while; report throughput, latency and errors",
        description="Load the cluster behind --server with writes (keys under txraft-check-perf/, deleted "
                    "afterwards), then print throughput, latency percentiles and errors, and a verdict. "
                    "Exit status 0 for PASS, 1 for FAIL.")
    perf.add_argument("--connections", type=int, default=8, help="concurrent writers, one connection each "
                      "(default %(default)s)")
    perf.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                      help="how long to write (default %(default)s)")
    perf.add_argument("--value-size", type=int, default=256, metavar="BYTES",
                      help="bytes per value (default %(default)s)")
    perf.add_argument("--min-throughput", type=float, default=100.0, metavar="WRITES_PER_S",
                      help="pass only with at least this many writes/s (default %(default)s)")
    perf.add_argument("--max-p99", type=float, default=500.0, metavar="MS",
                      help="pass only with a p99 latency of at most this many ms (default %(default)s)")
    perf.add_argument("--max-error-rate", type=float, default=0.0, metavar="PERCENT",
                      help="pass only with at most this %% of writes failed (default %(default)s)")
    perf.add_argument("--no-progress", action="store_true", help="do not draw the progress bar on stderr")
    connection(perf)
    # Load only ever goes to a cluster the user names: no default server.
    perf.set_defaults(server=os.environ.get("TXRAFT_SERVER"))
    member = sub.add_parser("member", help="list, add, remove or promote members")
    actions = member.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    connection(actions.add_parser("list", help="list the members, their roles and progress"))
    add = actions.add_parser("add", help="add a member: a learner, promoted to voter once caught up")
    add.add_argument("member_id", metavar="HOST:PORT")
    add.add_argument("--name", help="the certificate name the member presents")
    add.add_argument("--learner", action="store_true", help="keep it a learner (never promoted on its own)")
    connection(add)
    for action, text in (("remove", "remove a member"), ("promote", "make a learner a voter")):
        p = actions.add_parser(action, help=text)
        p.add_argument("member_id", metavar="HOST:PORT")
        connection(p)

    transfer = sub.add_parser("transfer-leader", help="hand leadership to another voter")
    transfer.add_argument("--to", metavar="HOST:PORT", help="the voter to hand to (default: the most up to date)")
    connection(transfer)

    demo = sub.add_parser("demo", help="run a 3-member cluster of twistd processes and show failover")
    demo.add_argument("--timeout", type=float, default=180.0, help="overall limit in seconds (default %(default)s)")
    demo.add_argument("--json", action="store_true", help="also print the report as JSON")
    return parser


class _Failed(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def _print_json(value):
    print(json.dumps(value, indent=2, sort_keys=True))


def _run_certs(args):
    from txraft.certs import write_cluster_certs

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    existing = set(os.listdir(args.out)) if os.path.isdir(args.out) else set()
    try:
        paths = write_cluster_certs(args.out, names, client=args.client)
    except (ValueError, TypeError) as e:
        raise _Failed(str(e), 2)
    if args.json:
        _print_json({name: {"cert": pair[0], "key": pair[1]} for name, pair in paths.items()})
        return
    for name, (pem, key) in paths.items():
        kept = os.path.basename(pem) in existing
        print(f"{name:<12} {pem}  {key}{'  (kept)' if kept else ''}")


async def _run_client(args, reactor):
    try:
        client = Client(args.server, args.cert, args.key, args.ca, insecure=args.insecure, timeout=args.timeout,
                        reactor=reactor)
    except ValueError as e:
        raise _Failed(str(e), 2)
    try:
        if args.command == "status":
            reply = await client.status()
            if args.json:
                _print_json(reply)
            else:
                print(_format_status(reply))
        elif args.command == "put":
            value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode("utf-8")
            reply = await client.put(args.name, value)
            _print_json(reply) if args.json else print(f"stored {args.name!r} at index {reply.get('index')}")
        elif args.command == "get":
            value = await client.get(args.name, stale=args.stale)
            if value is None:
                raise _Failed(f"{args.name!r} not found", NOT_FOUND_OR_CONFLICT)
            if args.json:
                _print_json({"key": args.name, "value": value.decode("utf-8", "replace")})
            else:
                sys.stdout.buffer.write(value + (b"" if value.endswith(b"\n") else b"\n"))
                sys.stdout.flush()
        elif args.command == "delete":
            reply = await client.delete(args.name)
            _print_json(reply) if args.json else print(f"deleted {args.name!r} at index {reply.get('index')}")
        elif args.command == "cas":
            reply = await client.cas(args.name, args.expect, args.value)
            if args.json:
                _print_json(reply)
            if not reply.get("ok"):
                current = reply.get("current")
                now = "absent" if current is None else repr(current)
                raise _Failed(f"compare-and-set refused: {args.name!r} is {now}", NOT_FOUND_OR_CONFLICT)
            if not args.json:
                print(f"swapped {args.name!r} at index {reply.get('index')}")
        elif args.command == "member":
            await _run_member(args, client)
        elif args.command == "transfer-leader":
            reply = await client.transfer_leader(args.to)
            _print_json(reply) if args.json else print(f"{reply.get('leader')} leads")
    except ClientError as e:
        if e.status == 429:
            raise _Failed(f"{e} (the cluster is busy: nothing was stored; try again in a moment)")
        raise _Failed(str(e))


async def _run_member(args, client):
    if args.action == "list":
        reply = await client.members()
    elif args.action == "add":
        reply = await client.add_member(args.member_id, args.name, voter=not args.learner)
    elif args.action == "remove":
        reply = await client.remove_member(args.member_id)
    else:
        reply = await client.promote(args.member_id)
    if args.json:
        _print_json(reply)
        return
    if args.action != "list":
        print(f"{args.action} {args.member_id}: done")
    print(_format_members(reply))


def _format_members(reply):
    leader = reply.get("leader") or ""
    lines = []
    for m in reply.get("members") or []:
        role = "leader" if m.get("id") == leader else ("voter" if m.get("voter") else "learner")
        match = f"  match {m['match_index']}" if "match_index" in m else ""
        leaving = "  (leaving)" if m.get("leaving") else ""
        lines.append(f"{m.get('id'):<22} {role:<8} {m.get('name') or '-'}{match}{leaving}")
    if reply.get("change"):
        lines.append(f"change in progress: {reply['change']}")
    return "\n".join(lines)


def _format_status(s):
    lines = [
        f"member   {s.get('id')}  ({s.get('role')})",
        f"leader   {s.get('leader') or '(unknown)'}",
        f"term     {s.get('term')}",
        f"indexes  commit {s.get('commit_index')}, applied {s.get('applied_index')}, last {s.get('last_index')}",
        f"members  {', '.join(s.get('members') or [])}",
    ]
    return "\n".join(lines)


async def _main(reactor, argv):
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        raise SystemExit(e.code)
    try:
        if args.command == "certs":
            _run_certs(args)
        elif args.command == "check":
            from txraft.perf import check_perf

            try:
                passed = await check_perf(args, reactor)
            except ValueError as e:
                raise _Failed(str(e), 2)
            if not passed:
                raise SystemExit(1)
        elif args.command == "demo":
            from txraft.demo import run_demo

            ok = await run_demo(reactor, timeout=args.timeout, as_json=args.json)
            if not ok:
                raise SystemExit(1)
        else:
            await _run_client(args, reactor)
    except _Failed as e:
        sys.stderr.write(f"txraft {args.command}: {e}\n")
        raise SystemExit(e.code)
    except SystemExit:
        raise
    except Exception as e:
        from txraft.errors import ConfigurationError

        if isinstance(e, ConfigurationError):
            sys.stderr.write(f"txraft {args.command}: {e}\n")
            raise SystemExit(2)
        raise


def main(argv=None):
    """Entry point of the ``txraft`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, argv)))


if __name__ == "__main__":
    main()
