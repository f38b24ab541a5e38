"""Packaging for txraft.

The ``twisted.plugins`` package is listed by hand: twistd discovers the
``raft`` plugin by scanning ``twisted/plugins/`` directories on ``sys.path``,
and that directory must not contain an ``__init__.py``.
"""

from setuptools import find_packages, setup

setup(
    name="txraft",
    version="0.1.0",
    description="Raft consensus for Twisted: a replicated log, a twistd service and a key-value store",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*", "docs", "bench"]) + ["twisted.plugins"],
    # py.typed: type checkers read txraft's annotations (PEP 561).
    package_data={"txraft": ["py.typed", "ui/static/*"]},
    install_requires=[
        "twisted>=23.10",
        "pyopenssl>=23.2",
        "service-identity>=23.1",
        "cryptography>=41",
        "treq>=23.11",
        "attrs>=23.1",
        "zope.interface>=6.0",
        "msgpack>=1.0",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.80",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "sphinx>=7.4",
            "myst-parser>=3.0",
        ],
        # bench/compare.py and bench/http_load.py: the cluster txraft is
        # measured against, and the asyncio HTTP client of the load script.
        "bench": [
            "pysyncobj>=0.3.12",
            "aiohttp>=3.9",
        ],
    },
    entry_points={"console_scripts": ["txraft = txraft.cli:main"]},
)
