"""
Sphinx configuration: the guides in ``docs/*.md`` (read by MyST) and the API
reference generated from the docstrings (``api.rst``).  Build it with::

    python -m sphinx -W -b html docs docs/_build/html

``tests/test_sphinx.py`` builds it with warnings as errors.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "txraft"
author = "the txraft authors"
copyright = "the txraft authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "deploy", "examples"]
# Headings get anchors, so the pages' links to sections (page.md#section) resolve.
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Every cross-reference must resolve (a broken one fails the -W build), except
# into libraries, and txraft modules, that the reference does not document.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(twisted|zope|enum|typing|collections|io|random|subprocess|prometheus_client)\..*"),
    # Type variables of generic signatures (LocalCluster.wait_for).
    (r"py:class", r"txraft\..*\._T"),
    (r"py:.*", r"txraft\.(storage|transport|metrics|http|http_client|kv|certs|core)\..*"),
    (r"py:.*", r"'?(Tuple|Dict|List|Optional)\[.*"),
    # Instance attributes described with :ivar: fields are not link targets.
    (r"py:attr", r"[a-z_]+"),
]
html_theme = "alabaster"
html_static_path = []


# -- zope.interface ----------------------------------------------------------------
# autodoc does not see zope Interfaces (they are not classes), so
# ``.. zope-interfaces:: MODULE`` writes each Interface of MODULE, in source
# order, as a class with its attributes and methods, from their docstrings.

import importlib  # noqa: E402
import inspect  # noqa: E402
import textwrap  # noqa: E402

from sphinx.util.docutils import SphinxDirective  # noqa: E402


def _indent(text, level=1):
    return textwrap.indent(inspect.cleandoc(text or ""), "   " * level)


class ZopeInterfaces(SphinxDirective):
    required_arguments = 1

    def run(self):
        from zope.interface.interface import InterfaceClass, Method

        module = importlib.import_module(self.arguments[0])
        lines = [f".. py:currentmodule:: {module.__name__}", ""]
        for name, iface in vars(module).items():
            if not isinstance(iface, InterfaceClass) or iface.__module__ != module.__name__:
                continue
            lines += [f".. py:class:: {name}", "", _indent(iface.__doc__), ""]
            for member, description in iface.namesAndDescriptions(all=False):
                if isinstance(description, Method):
                    lines.append(f"   .. py:method:: {member}{description.getSignatureString()}")
                else:
                    lines.append(f"   .. py:attribute:: {member}")
                lines += ["", _indent(description.getDoc(), 2), ""]
        return self.parse_text_to_nodes("\n".join(lines))


def _name_interfaces(*modules):
    """
    Signatures name zope Interfaces, which autodoc prints by their repr
    (``<InterfaceClass ...>``) for want of a ``__qualname__``: give each
    Interface of ``modules`` one, so that signatures show
    ``txraft.interfaces.IStorage`` and link to it.
    """
    from zope.interface.interface import InterfaceClass

    for name in modules:
        for iface in vars(importlib.import_module(name)).values():
            if isinstance(iface, InterfaceClass):
                iface.__qualname__ = iface.__name__


def setup(app):
    _name_interfaces("txraft.interfaces", "twisted.internet.interfaces", "twisted.web.resource")
    app.add_directive("zope-interfaces", ZopeInterfaces)
    return {"parallel_read_safe": True}
