"""
Type information: mypy runs clean over the package with ``mypy.ini`` (the
public API, the member API and all of txraft/core as strictly as ``--strict``), and
``py.typed`` ships so that applications' type checkers use it.
"""

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRICT_FLAGS = {"disallow_untyped_defs", "disallow_incomplete_defs", "disallow_untyped_calls",
                "check_untyped_defs", "disallow_any_generics", "warn_return_any", "disallow_subclassing_any"}
PUBLIC_API = {"txraft", "txraft.errors", "txraft.messages", "txraft.config", "txraft.client",
              "txraft.interfaces", "txraft.member", "txraft.kv", "txraft.testing.cluster", "txraft.service",
              "txraft.testing", "txraft.testing.processes", "txraft.metrics",
              "txraft.http"}


def core_modules():
    """Every module of txraft/core, the package included."""
    return {"txraft.core"} | {f"txraft.core.{path.stem}" for path in (ROOT / "txraft" / "core").glob("*.py")
                              if path.stem != "__init__"}


def strict_modules(path=ROOT / "mypy.ini"):
    """
    The modules mypy checks with every strict flag.  As in mypy, a later
    section naming a module replaces, not extends, what an earlier one set
    for it: a ``[mypy-txraft.x]`` section below the strict list takes
    txraft.x out of it.
    """
    config = configparser.ConfigParser()
    config.read(path)
    flags = {}
    for section in config.sections():
        if section.startswith("mypy-"):
            for name in section[len("mypy-"):].split(","):
                flags[name.strip()] = {k for k, v in config[section].items() if v == "True"}
    return {name for name, chosen in flags.items() if STRICT_FLAGS <= chosen}


def test_mypy_finds_no_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"),
                           "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("Success: no issues found")


def test_the_public_api_is_checked_strictly():
    assert PUBLIC_API <= strict_modules()


def test_every_core_module_is_checked_strictly():
    """A module added to txraft/core must join the strict section of mypy.ini."""
    assert sorted(core_modules() - strict_modules()) == []


def test_a_later_section_for_a_module_takes_it_out_of_the_strict_list(tmp_path):
    (tmp_path / "mypy.ini").write_text("[mypy-txraft.a,txraft.b]\n" + "".join(f"{flag} = True\n" for flag in STRICT_FLAGS)
                                       + "[mypy-txraft.b]\ndisable_error_code = assignment\n")
    assert strict_modules(tmp_path / "mypy.ini") == {"txraft.a"}


def test_the_strict_check_bites(tmp_path):
    """The per-module strict flags reject an unannotated function."""
    package = tmp_path / "txraft"
    package.mkdir()
    (package / "__init__.py").write_text("def untyped(x):\n    return x\n")
    config = (ROOT / "mypy.ini").read_text().replace("files = txraft", f"files = {package}")
    (tmp_path / "mypy.ini").write_text(config)
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                           "--cache-dir", str(tmp_path / "cache"), "--no-warn-unused-configs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "Function is missing a type annotation" in done.stdout


def test_py_typed_ships_with_the_package(tmp_path):
    assert (ROOT / "txraft" / "py.typed").is_file()
    done = subprocess.run([sys.executable, "setup.py", "--quiet", "egg_info", "--egg-base", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sources = (tmp_path / "txraft.egg-info" / "SOURCES.txt").read_text().split()
    assert "txraft/py.typed" in sources
