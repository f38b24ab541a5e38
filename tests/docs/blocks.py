"""
The fenced code blocks of the documentation and the marker that says what
becomes of each one.

Every fenced block in ``README.md`` and ``docs/*.md`` must follow, on the line
right before its opening fence, one HTML comment (invisible once rendered):

``<!-- run: SCENARIO -->``
    ``tests/test_docs.py`` runs the block as part of the named scenario, in
    document order with the scenario's other blocks.
``<!-- output -->``
    the expected output of the ``run`` block just before it.
``<!-- illustrative: REASON -->``
    not run; ``REASON`` says why (another network, an installation...).

A block without one of them fails ``test_every_block_is_marked``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: The pages whose blocks are checked, in the order scenarios run them.
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>run|output|illustrative)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """
    One fenced block.

    :ivar page: its file, relative to the checkout.
    :ivar line: the line number of its opening fence.
    :ivar lang: the info string's first word (``""`` when none).
    :ivar text: its content, with the fence's indentation removed.
    :ivar kind: ``"run"``, ``"output"``, ``"illustrative"`` or ``None``
        (no marker).
    :ivar arg: the scenario (``run``) or reason (``illustrative``).
    """

    page: str
    line: int
    lang: str
    text: str
    kind: str | None
    arg: str

    def where(self):
        """:returns: ``page:line`` for messages."""
        return f"{self.page}:{self.line}"


def blocks_of(page):
    """
    :param str page: a path relative to the checkout.
    :returns: the fenced blocks of ``page``, in order.
    :raises ValueError: on a fence that is never closed.
    """
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        body = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            # The fence's indentation belongs to the list item, not to the code.
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{page}:{i + 1}: the fence is never closed")
        found.append(Block(page, i + 1, opening["info"].strip().split(" ")[0], "\n".join(body) + "\n",
                           marker["kind"] if marker else None, (marker["arg"] or "") if marker else ""))
        i = j + 1
    return found


def all_blocks():
    """:returns: the blocks of every page in :data:`PAGES`."""
    return [b for page in PAGES for b in blocks_of(page)]


def scenario_blocks(name):
    """
    :returns: ``(block, expected_output_or_None)`` for the blocks marked
        ``run: name``, in page order then document order.
    """
    result = []
    for page in PAGES:
        blocks = blocks_of(page)
        for k, block in enumerate(blocks):
            if block.kind == "run" and block.arg == name:
                following = blocks[k + 1] if k + 1 < len(blocks) else None
                expected = following.text if following is not None and following.kind == "output" else None
                result.append((block, expected))
    return result
