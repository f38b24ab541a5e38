"""
Running documentation blocks: a shell session that keeps its variables and
background jobs from one block to the next, Python blocks in a fresh
interpreter, and the comparison of what they print with what the page shows.

What the comparison forgives (and nothing else):

- the port after an IPv4 address (``127.0.0.1:8001`` matches any port on
  127.0.0.1), because the test gives members free ports;
- which member leads: the words ``leader``, ``follower`` and ``candidate``
  match each other, and the address after ``leader`` (``"leader":
  "127.0.0.1:7001"``, ``leader   127.0.0.1:7001``) matches any address;
- a number after ``index``, ``term``, ``commit``, ``applied``, ``last`` or
  ``pid`` (any case, up to eight characters between: ``"term": 3``,
  ``X-Raft-Index: 8``, ``at index 7``), durations (``1.58s``, ``22.0 ms``)
  and ISO timestamps;
- the path of ``twistd`` where it names itself (``twistd -n: ...`` matches
  ``/usr/local/bin/twistd -n: ...``);
- a line ``...``, which stands for any number of lines;
- trailing spaces, blank lines at either end, and the HTTP headers
  ``Server``, ``Date``, ``Cache-Control`` and ``Content-Length``.
"""

from __future__ import annotations

import ast
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

from tests.docs.blocks import ROOT

_PLACEHOLDERS = re.compile(
    r"(?P<prog>^twistd(?= ))"
    r"|(?P<lead>(?i:leader)\W{1,4})\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d+"
    r"|(?P<role>\b(?:leader|follower|candidate)\b)"
    r"|(?P<addr>\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}):\d+"
    r"|(?P<word>(?i:index|term|commit|applied|last|pid)\W{0,8})\d+"
    r"|\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d{4}|Z)?"
    r"|\b\d+(?:\.\d+)?(?P<unit> ?m?s)\b"
)
_NOISE = re.compile(r"^(Server|Date|Cache-Control|Content-Length): ")


def line_pattern(expected):
    """:returns: a regular expression matching the lines ``expected`` stands for."""
    parts = []
    last = 0
    for m in _PLACEHOLDERS.finditer(expected):
        parts.append(re.escape(expected[last:m.start()]))
        if m["prog"]:
            parts.append(r"(?:\S*/)?twistd")
        elif m["lead"]:
            parts.append(re.escape(m["lead"]) + r"\d+\.\d+\.\d+\.\d+:\d+")
        elif m["role"]:
            parts.append(r"(?:leader|follower|candidate)")
        elif m["addr"]:
            parts.append(re.escape(m["addr"]) + r":\d+")
        elif m["word"]:
            parts.append(re.escape(m["word"]) + r"\d+")
        elif m["unit"] is not None:
            parts.append(r"\d+(?:\.\d+)?" + re.escape(m["unit"]))
        else:
            parts.append(r"\S+")
        last = m.end()
    parts.append(re.escape(expected[last:]))
    return re.compile("".join(parts) + r"\Z")


def _lines(text, drop_noise):
    lines = [line.rstrip() for line in text.splitlines()]
    if drop_noise:
        lines = [line for line in lines if not _NOISE.match(line)]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def output_matches(expected, actual):
    """
    :returns: whether ``actual`` output is what ``expected`` shows, with the
        placeholders described in this module's docstring.
    """
    want = _lines(expected, drop_noise=False)
    got = _lines(actual, drop_noise=True)
    patterns = [None if line == "..." else line_pattern(line) for line in want]

    def match(i, j):
        if i == len(patterns):
            return j == len(got)
        if patterns[i] is None:
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and patterns[i].match(got[j]) is not None and match(i + 1, j + 1)

    return match(0, 0)


def free_port(hosts):
    """:returns: a TCP port that is free on every address in ``hosts`` now."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


class Rewrite:
    """
    What a scenario changes in a page's text before running it: the page's
    fixed ports become free ones (on the same addresses), and paths of a
    production machine (``/var/lib/txraft``) become directories of the test.

    :param text: every block of the scenario, to find its ports.
    :param paths: ``{page path: test path}``.
    """

    _ADDRESS = re.compile(r"\b(127\.\d+\.\d+\.\d+|127\.0\.0\.\d*\$\w+|\w+):(\d{4})\b")

    def __init__(self, text, paths=()):
        hosts = sorted({h for h, _ in self._ADDRESS.findall(text) if h.startswith("127.") and "$" not in h})
        hosts = hosts or ["127.0.0.1"]
        ports = sorted({int(p) for _, p in self._ADDRESS.findall(text)})
        self.ports = {p: free_port(hosts) for p in ports}
        self.paths = dict(paths)

    def __call__(self, text):
        for old, new in self.paths.items():
            text = text.replace(old, new)
        if self.ports:
            text = re.sub(r"(?<=:)(%s)\b" % "|".join(map(str, self.ports)),
                          lambda m: str(self.ports[int(m.group(1))]), text)
        return text


def environment(workdir):
    """:returns: the environment blocks run with: this checkout's txraft, a private TMPDIR, a quiet curl."""
    tmp = os.path.join(workdir, ".tmp")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, ".curlrc"), "w") as f:
        # In a terminal curl shows no progress meter; in a pipe it would.
        f.write("silent\nshow-error\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXRAFT_")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=tmp, CURL_HOME=tmp, PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


class ShellSession:
    """
    One ``bash`` that runs a scenario's shell blocks in turn, so that
    ``export``, variables and background jobs carry over as in a terminal.

    :param workdir: its working directory.
    :param env: its environment.
    """

    def __init__(self, workdir, env):
        self._token = uuid.uuid4().hex
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=workdir, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # A failing command inside a block shows up in its output.
        self._send(f"trap 'echo \"FAILED({self._token}) $? $BASH_COMMAND\"' ERR\n")

    def _read(self):
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, text):
        self._process.stdin.write(text)
        self._process.stdin.flush()

    def run(self, script, timeout):
        """
        :returns: ``(output, status, failed)``: what ``script`` printed, its
            last command's exit status and the commands that failed in it.
        :raises TimeoutError: when it does not finish within ``timeout`` seconds.
        """
        self._send(script.rstrip("\n") + "\n" + f"__s=$?; printf '\\nDONE({self._token}) %s\\n' $__s\n")
        deadline = time.monotonic() + timeout
        out, failed = [], []
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"not done within {timeout} s; output so far:\n{''.join(out)}") from None
            if line is None:
                raise RuntimeError(f"the shell exited; output:\n{''.join(out)}")
            if line.startswith(f"DONE({self._token}) "):
                return "".join(out), int(line.split()[1]), failed
            if line.startswith(f"FAILED({self._token}) "):
                failed.append(line.split(" ", 1)[1].strip())
                continue
            out.append(line)

    def close(self, timeout=30):
        """Stop the session's background jobs with SIGTERM (as ``kill %1`` would), then the shell."""
        try:
            self.run("trap - ERR; kill $(jobs -p) 2>/dev/null; wait", timeout)
            self._send("exit\n")
            self._process.wait(timeout)
        except (TimeoutError, RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait()


def transcript(text):
    """
    :returns: ``[(command, expected output)]`` of a ``console`` block: lines
        starting with ``$ `` are commands (a trailing backslash continues
        one), the lines after them its output.
    """
    steps = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"console block: output before any command: {lines[i]!r}")
        command = [lines[i][2:]]
        while command[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        output = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append(("\n".join(command), "\n".join(output)))
    return steps


_KEPT = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def definitions(source):
    """:returns: the imports, classes and functions of ``source``, without its statements."""
    tree = ast.parse(source)
    return "\n\n".join(ast.unparse(node) for node in tree.body if isinstance(node, _KEPT))


def run_python(source, workdir, env, timeout):
    """
    Run ``source`` in a fresh interpreter.

    :returns: ``(output, status)``: standard output and error together.
    """
    path = os.path.join(workdir, ".tmp", "block.py")
    with open(path, "w") as f:
        f.write(source)
    done = subprocess.run([sys.executable, path], cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return done.stdout, done.returncode
