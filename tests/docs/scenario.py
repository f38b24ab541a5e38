"""
:func:`run_scenario`: play every block marked ``run: NAME`` in order, in one
working directory and one shell, and fail on the first block that does not do
what its page shows.
"""

from __future__ import annotations

import difflib

from tests.docs.blocks import blocks_of, scenario_blocks
from tests.docs.runner import (
    Rewrite, ShellSession, definitions, environment, output_matches, run_python, transcript,
)

#: Printed by Twisted when a failed Deferred nobody consumed is collected.
UNHANDLED = "Unhandled error in Deferred"


class DocError(AssertionError):
    """A block did not do what its page shows."""


def _mismatch(block, what, expected, actual):
    diff = "\n".join(difflib.unified_diff(expected.splitlines(), actual.splitlines(), "the page shows",
                                          "it printed", lineterm=""))
    return DocError(f"{block.where()}: {what}: the output differs (placeholders aside):\n{diff}")


def _python_prelude(block):
    """The imports, classes and functions of the run blocks above ``block`` on its page."""
    earlier = [b for b in blocks_of(block.page)
               if b.line < block.line and b.lang == "python" and b.kind == "run"]
    return "\n\n".join(definitions(b.text) for b in earlier)


def run_scenario(name, workdir, paths=(), timeout=120.0, shell=None):
    """
    Run the scenario ``name`` in ``workdir``.

    :param paths: ``{path on the page: path in the test}``.
    :param timeout: seconds allowed to each command or block.
    :param shell: a :class:`ShellSession` to use (and leave open), for a
        test that goes on after the page's blocks; by default one is made
        and closed, stopping the background jobs the blocks started.
    :returns: ``{block: output}`` for each block run.
    :raises DocError: when a block fails or prints something else than its
        page shows.
    """
    steps = scenario_blocks(name)
    if not steps:
        raise DocError(f"no block is marked 'run: {name}'")
    rewrite = Rewrite("".join(b.text for b, _ in steps), paths)
    env = environment(str(workdir))
    session = shell or ShellSession(str(workdir), env)
    outputs = {}
    try:
        for block, expected in steps:
            text = rewrite(block.text)
            if block.lang == "console":
                printed = []
                for command, shown in transcript(text):
                    out, _, _ = session.run(command, timeout)
                    printed.append(out)
                    if not output_matches(shown, out):
                        raise _mismatch(block, f"$ {command}", shown, out)
                outputs[block] = "".join(printed)
                continue
            if block.lang in ("sh", "bash"):
                out, status, failed = session.run(text, timeout)
                if failed or status:
                    raise DocError(f"{block.where()}: failed ({'; '.join(failed) or f'status {status}'}):\n{out}")
            elif block.lang == "python":
                out, status = run_python(_python_prelude(block) + "\n\n" + text, str(workdir), env, timeout)
                if status or UNHANDLED in out or "Traceback" in out:
                    raise DocError(f"{block.where()}: the Python example failed (status {status}):\n{out}")
            else:
                raise DocError(f"{block.where()}: cannot run a '{block.lang}' block")
            if expected is not None and not output_matches(expected, out):
                raise _mismatch(block, "the block", expected, out)
            outputs[block] = out
    finally:
        if shell is None:
            session.close()
    return outputs
