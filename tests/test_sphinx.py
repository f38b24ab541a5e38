"""
The documentation site: ``docs/`` builds with Sphinx with warnings as errors
(a broken link between pages, a bad reST field, an autodoc import failure
fail), and every public name the API reference shows has a docstring.
"""

import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The modules docs/api.rst documents, and the classes it shows members of.
DOCUMENTED = ["txraft", "txraft.messages", "txraft.errors", "txraft.interfaces", "txraft.testing",
              "txraft.testing.processes"]
CLASSES = ["txraft.Raft", "txraft.RaftClient", "txraft.RaftConfig", "txraft.service.RaftService"]


def test_the_site_builds_without_a_warning(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("txraft.Raft.append", "txraft.errors.NotLeader", "txraft.interfaces.IStorage",
                 "txraft.testing.SimulatedCluster", "txraft.service.RaftService"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    assert (tmp_path / "html" / "http-api.html").exists()


def test_a_broken_cross_reference_fails_the_build(tmp_path):
    """The site is nitpicky: a reference to a txraft name that does not exist is an error."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("_build"))
    with open(docs / "api.rst", "a") as f:
        f.write("\nSee :class:`txraft.NoSuchThing`.\n")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(docs), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "txraft.NoSuchThing" in done.stderr


def public_objects():
    for module_name in DOCUMENTED:
        module = importlib.import_module(module_name)
        yield module_name, module
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            value = getattr(module, name)
            if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith("txraft"):
                yield f"{module_name}.{name}", value
                if inspect.isclass(value):
                    yield from members(f"{module_name}.{name}", value)
    for path in CLASSES:
        module_name, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        yield from members(path, cls)


def members(path, cls):
    for name, value in vars(cls).items():
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
            yield f"{path}.{name}", value


def test_every_documented_public_name_has_a_docstring():
    missing = sorted({name for name, value in public_objects() if not (value.__doc__ or "").strip()})
    assert missing == []
