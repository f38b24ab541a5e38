"""
The direction of imports, and the module map in docs/architecture.md.

The Raft core must stay pure (no sockets, files or global reactor), and the
member API must reach storage and transport only through their interfaces:
that is what lets the simulator replay the real algorithm.  These tests read
the source with :mod:`ast`, so an import inside a function counts too.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "txraft"

CORE_FORBIDDEN = (
    "txraft.storage",
    "txraft.transport",
    "txraft.member",
    "txraft.service",
    "txraft.http",
    "txraft.defaults",
    "twisted.internet.reactor",
)
MEMBER_FORBIDDEN = ("txraft.storage", "txraft.transport")


def imported_names(source, package="txraft"):
    """
    Every module an import statement in ``source`` names, at any depth.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a module,
    as in ``from twisted.internet import reactor``).
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offending(names, forbidden):
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_checker_sees_imports_inside_functions_and_from_imports():
    source = (
        "import os\n"
        "def later():\n"
        "    from twisted.internet import reactor\n"
        "    import txraft.storage.disk\n"
    )
    assert offending(imported_names(source), CORE_FORBIDDEN) == [
        "twisted.internet.reactor", "txraft.storage.disk"]
    assert offending(imported_names("from .roles import Leader\n", "txraft.core"), CORE_FORBIDDEN) == []
    assert offending(imported_names("from ..transport import amp\n", "txraft.core"), CORE_FORBIDDEN) == [
        "txraft.transport", "txraft.transport.amp"]


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_nothing_outward(path):
    names = imported_names(path.read_text(), "txraft.core")
    assert offending(names, CORE_FORBIDDEN) == [], f"{path.relative_to(ROOT)} imports outward"


def test_the_member_api_knows_storage_and_transport_only_by_interface():
    for module in ("member.py", "proposals.py"):
        names = imported_names((PACKAGE / module).read_text())
        assert offending(names, MEMBER_FORBIDDEN) == [], f"txraft/{module} imports a concrete part"


def modules_in_tree():
    found = set()
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "twisted" / "plugins").glob("*.py")):
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        found.add(path.relative_to(ROOT).as_posix())
    return found


def modules_in_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- `([^`]+\.py)`: \S", section, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    return set(listed)


def test_the_module_map_matches_the_tree():
    tree, listed = modules_in_tree(), modules_in_map()
    assert sorted(tree - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - tree) == [], "docs/architecture.md lists modules that do not exist"
