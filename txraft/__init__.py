"""
txraft: Raft consensus for Twisted.

A replicated log for Twisted applications.  Subclass :class:`RaftClient`,
build a :class:`Raft` member for each replica, and every member applies the
same commands in the same order::

    from txraft import Raft, RaftClient, RaftConfig

See the README and ``docs/`` for the daemon (``twistd raft``), the key-value
store and the deterministic simulator in :mod:`txraft.testing`.
"""

__version__ = "0.1.0"

from typing import Any

from txraft import errors
from txraft.client import RaftClient
from txraft.config import RaftConfig
from txraft.messages import Status
from txraft.member import Raft

__all__ = ["Raft", "RaftClient", "RaftConfig", "RaftService", "Status", "errors", "__version__"]


def __getattr__(name: str) -> Any:
    # RaftService pulls in twisted.web, TLS and the key-value app; import it
    # only when asked for, so that `import txraft` stays light.
    if name == "RaftService":
        from txraft.service import RaftService

        return RaftService
    raise AttributeError(f"module 'txraft' has no attribute {name!r}")
