"""
Executable documentation: every fenced block of ``README.md`` and
``docs/*.md`` is either run here, with its output compared with what the page
shows, or marked illustrative with a reason (see ``docs/testing.md``,
*Documentation examples*).  ``docs/examples/*`` run to completion.

The scenarios start their own members (real ``twistd raft`` processes) on the
pages' loopback addresses with free ports, in a temporary directory, and stop
them at the end.  Everything runs in subprocesses, so the test's own reactor
stays untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.docs.blocks import PAGES, ROOT, all_blocks, scenario_blocks
from tests.docs.runner import ShellSession, environment, free_port, output_matches
from tests.docs.scenario import UNHANDLED, run_scenario

#: Every scenario a page may name in ``<!-- run: ... -->``, and the test that plays it.
SCENARIOS = {
    "readme-library": "test_readme_library",
    "readme-testing": "test_readme_testing",
    "readme-daemon": "test_readme_daemon",
    "http-api": "test_http_api",
    "http-api-embedding": "test_http_api_embedding",
    "quickstart": "test_quickstart",
    "cluster": "test_cluster",
    "security": "test_security",
    "embedding": "test_embedding",
    "testing-guide": "test_testing_guide",
    "deployment-logs": "test_deployment_logs",
    "backup": "test_backup_and_restore",
    "membership": "test_membership_library",
}


# -- the markers ---------------------------------------------------------------


def test_every_block_is_marked():
    """Each fenced block is run by a known scenario, is a run block's output, or says why it is not run."""
    problems = []
    blocks = all_blocks()
    for previous, block in zip([None] + blocks, blocks):
        if block.kind is None:
            problems.append(f"{block.where()}: no <!-- run: SCENARIO --> or <!-- illustrative: REASON --> "
                            "on the line before the fence")
        elif block.kind == "run" and block.arg not in SCENARIOS:
            problems.append(f"{block.where()}: unknown scenario {block.arg!r} (known: {sorted(SCENARIOS)})")
        elif block.kind == "illustrative" and not block.arg:
            problems.append(f"{block.where()}: an illustrative block must say why")
        elif block.kind == "output" and (previous is None or previous.page != block.page
                                         or previous.kind != "run" or previous.lang == "console"):
            problems.append(f"{block.where()}: <!-- output --> must follow a run block (not a console one)")
    assert not problems, "\n".join(problems)


def test_every_scenario_has_blocks_and_a_test():
    """A scenario no page names, or one no test plays, is a mistake."""
    for name, test in SCENARIOS.items():
        assert scenario_blocks(name), f"no block is marked run: {name}"
        assert callable(globals().get(test)), f"{test} (scenario {name}) is not defined"


def test_pages_list():
    """The README and every page of docs/ are checked."""
    assert "README.md" in PAGES and "docs/http-api.md" in PAGES and "docs/operations.md" in PAGES


def test_output_comparison_bites():
    """The placeholders forgive ports, indexes, terms, times and the leader, nothing else."""
    assert output_matches('{"index": 7}', '{"index": 12}')
    assert output_matches("leader   127.0.0.1:7001\nterm     1", "leader   127.0.0.3:45111\nterm     4")
    assert output_matches("a\n...\nz", "a\nb\nc\nz")
    assert not output_matches("total is now 5", "total is now 10")
    assert not output_matches("HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found")
    assert not output_matches('"id": "127.0.0.1:7002"', '"id": "10.0.0.2:7001"')
    assert not output_matches("blue", "")
    assert not output_matches("a\nb", "a\nb\nc")


# -- README ------------------------------------------------------------------------


def test_readme_library(tmp_path):
    """The library snippet prints 5 on every run and leaves no directory behind."""
    for _ in range(2):
        run_scenario("readme-library", tmp_path)
    leftovers = [p.name for p in (tmp_path / ".tmp").iterdir() if p.is_dir()]
    assert not leftovers, f"the README's snippet left {leftovers} behind"


def test_readme_testing(tmp_path):
    """The testing snippet runs; run_scenario fails it on any "Unhandled error in Deferred"."""
    run_scenario("readme-testing", tmp_path)


@pytest.mark.slow
def test_readme_daemon(tmp_path):
    run_scenario("readme-daemon", tmp_path)


# -- docs/http-api.md ----------------------------------------------------------------


@pytest.mark.slow
def test_http_api(tmp_path):
    """The HTTP API page replays in order on the insecure cluster it says how to start."""
    run_scenario("http-api", tmp_path)


def test_http_api_embedding(tmp_path):
    run_scenario("http-api-embedding", tmp_path)


# -- the other pages ------------------------------------------------------------------


@pytest.mark.slow
def test_quickstart(tmp_path):
    run_scenario("quickstart", tmp_path)


def test_cluster(tmp_path):
    """The configuration errors cluster.md quotes are the ones twistd prints."""
    run_scenario("cluster", tmp_path)


def test_security(tmp_path):
    run_scenario("security", tmp_path)


def test_embedding(tmp_path):
    """The embedding guide's pieces run, with the certificate files its configuration names."""
    from txraft.certs import write_cluster_certs

    paths = write_cluster_certs(str(tmp_path / "certs"), ["member1"])
    for source in (*paths["member1"], paths["ca"][0]):
        os.link(source, tmp_path / os.path.basename(source))
    run_scenario("embedding", tmp_path)


def test_testing_guide(tmp_path):
    """The testing guide's snippet (no unhandled error allowed) and random schedules run."""
    run_scenario("testing-guide", tmp_path)


def test_membership_library(tmp_path):
    """docs/membership.md: adding, removing and handing over on the simulator, as printed."""
    run_scenario("membership", tmp_path)


@pytest.mark.slow
def test_deployment_logs(tmp_path):
    """twistd rotates its --logfile on SIGUSR1, as deployment.md says."""
    run_scenario("deployment-logs", tmp_path)


# -- docs/operations.md: backups -----------------------------------------------------------

_MEMBER = ("twistd -n --pidfile= raft --insecure --listen {listen} --http {http} --logdir {logdir}"
           " --snapshot-threshold {threshold} > {logdir}.out 2>&1 &\n"
           "until curl -s http://{http}/v1/status | grep -q '\"role\": \"leader\"'; do sleep 0.2; done\n")


def _shell(session, script, timeout=60):
    out, status, failed = session.run(script, timeout)
    assert not failed and status == 0, f"{script}\nfailed: {failed}\n{out}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("threshold, writes, snapshots", [(10000, 12, False), (5, 40, True)],
                         ids=["no-snapshot-yet", "several-generations"])
def test_backup_and_restore(tmp_path, threshold, writes, snapshots):
    """
    The documented backup of a running member, on a member that never took a
    snapshot (the default threshold) and on one that took several, restores
    into a fresh member that serves every key written before the backup.
    """
    host = "127.0.0.61"
    member = dict(listen=f"{host}:{free_port([host])}", http=f"{host}:{free_port([host])}", threshold=threshold)
    data, backup, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    session = ShellSession(str(tmp_path), environment(str(tmp_path)))
    try:
        _shell(session, _MEMBER.format(logdir=data, **member))
        _shell(session, f"for i in $(seq 1 {writes}); do "
                        f"curl -sf -X PUT --data-binary value$i http://{member['http']}/v1/kv/key$i > /dev/null; done")
        names = os.listdir(data)
        assert any(n.endswith(".snap") for n in names) == snapshots, names

        run_scenario("backup", tmp_path, paths={"/var/lib/txraft": str(data), "/backup": str(backup)},
                     shell=session)
        (copy,) = backup.iterdir()              # the dated directory the script created
        copied = sorted(os.listdir(copy))
        assert [n.rsplit(".", 1)[1] for n in copied] == (["log", "snap"] if snapshots else ["log"]), copied

        # Restore as the page says: stop, an empty --logdir, the backed-up generation into it, start.
        _shell(session, f"cd {tmp_path}; kill %1; wait %1 || true")
        restored.mkdir()
        for name in copied:
            (restored / name).write_bytes((copy / name).read_bytes())
        _shell(session, _MEMBER.format(logdir=restored, **member))
        out = _shell(session, f"for i in $(seq 1 {writes}); do curl -sf http://{member['http']}/v1/kv/key$i; echo; done")
        assert out.split() == [f"value{i}" for i in range(1, writes + 1)]
    finally:
        session.close()


# -- docs/examples and docs/deploy --------------------------------------------------------


#: What each program of docs/examples prints when it worked, as docs/embedding.md says.
EXAMPLES_SAY = {
    "counter.py": "every member counted 10",
    "chaos_counters.py": "\"linearizable\": true",
}


def test_every_example_says_what_it_prints():
    assert sorted(EXAMPLES_SAY) == sorted(p.name for p in (ROOT / "docs" / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES_SAY))
def test_example_runs(tmp_path, example):
    """Each program in docs/examples runs to completion and prints what it should."""
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / example)], cwd=tmp_path,
                          env=environment(str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=180)
    assert done.returncode == 0 and UNHANDLED not in done.stdout, done.stdout
    assert EXAMPLES_SAY[example] in done.stdout, done.stdout


def _unit(text):
    """:returns: ``{section: {key: [values]}}`` of a systemd unit, continuation lines joined."""
    sections, section = {}, None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return sections


def _check_member_options(argv, tmp_path, rewrite):
    """Parse ``argv`` (after ``raft``) with the plugin's own options, on this machine's addresses and files."""
    from twisted.python import usage

    from txraft.certs import write_cluster_certs
    from txraft.tap import Options

    write_cluster_certs(str(tmp_path / "certs"), ["member1", "member2", "member3"], client="admin")
    options = Options()
    try:
        options.parseOptions([rewrite(a) for a in argv])
    except usage.UsageError as e:
        pytest.fail(f"twistd raft refuses {argv}: {e}")
    return options


def test_systemd_unit(tmp_path):
    """The unit waits for the network, restarts, raises the descriptor limit and runs an accepted command."""
    unit = _unit((ROOT / "docs" / "deploy" / "txraft@.service").read_text())
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]
    service = unit["Service"]
    assert service["User"] == ["txraft"] and service["Restart"] == ["on-failure"]
    assert int(service["LimitNOFILE"][0]) >= 4096
    assert service["KillSignal"] == ["SIGTERM"]
    assert "/var/lib/txraft" in service["ReadWritePaths"][0]
    (command,) = service["ExecStart"]
    argv = command.split()
    assert argv[:4] == ["@TWISTD@", "-n", "--pidfile=", "raft"], "install.sed replaces @TWISTD@ with command -v twistd"
    env = dict(line.split("=", 1) for line in (ROOT / "docs" / "deploy" / "member1.env").read_text().splitlines()
               if line and not line.startswith("#"))
    ports = {p: str(free_port(["127.0.0.71"])) for p in ("7001", "8001")}

    def rewrite(arg):
        for name, value in env.items():
            arg = arg.replace("${%s}" % name, value)
        arg = arg.replace("%i", "member1").replace("/etc/txraft/", f"{tmp_path}/certs/")
        arg = arg.replace("/var/lib/txraft/", f"{tmp_path}/data/")
        for old, new in ports.items():
            arg = arg.replace(":" + old, ":" + new)
        return arg.replace("10.0.0.1:", "127.0.0.71:")

    options = _check_member_options(argv[4:], tmp_path, rewrite)
    assert options["acl_names"] == ("member1", "member2", "member3")


def test_compose_file(tmp_path):
    """compose.yaml parses; each member's command is accepted by twistd raft and names its own files and address."""
    import yaml
    compose = yaml.safe_load((ROOT / "docs" / "deploy" / "compose.yaml").read_text())
    dockerfile = (ROOT / "docs" / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["twistd", "-n", "--pidfile=", "raft"]' in dockerfile
    assert compose["services"].keys() == {"member1", "member2", "member3"}
    for n, (name, service) in enumerate(sorted(compose["services"].items()), 1):
        address = service["networks"]["txraft"]["ipv4_address"]
        command = service["command"]
        assert command[command.index("--listen") + 1] == f"{address}:7001"
        assert f"./certs/{name}.key:/certs/{name}.key:ro" in service["volumes"]
        assert service["ulimits"]["nofile"] >= 4096 and service["restart"] == "on-failure"
        host = f"127.0.0.7{n}"
        ports = {p: str(free_port([host])) for p in ("7001", "8001")}

        def rewrite(arg):
            arg = arg.replace("/certs/", f"{tmp_path}/certs/").replace("/var/lib/txraft/", f"{tmp_path}/{name}/")
            arg = arg.replace(f"{address}:7001", f"{host}:{ports['7001']}")
            return arg.replace(f"{address}:8001", f"{host}:{ports['8001']}")

        _check_member_options(command, tmp_path, rewrite)
