"""
The storage and transport a :class:`txraft.Raft` builds when it is given none.

``Raft(config, client)`` uses the disk store in ``config.log_dir`` (memory when
that is ``None``) and AMP over mutual TLS built from ``config``.  This module
is the one place that picks those implementations, so the member API depends
only on the interfaces.  The imports are inside the functions so that
``import txraft`` does not load OpenSSL or the disk store for applications and
tests that pass their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from txraft.config import RaftConfig
    from txraft.interfaces import IStorage
    from txraft.metrics import CountingTransport
    from txraft.transport.tls import TLSCredentials


def default_storage(config: RaftConfig, reactor: Any) -> IStorage:
    """
    :param config: a :class:`txraft.RaftConfig`.
    :param reactor: provides ``IReactorTime``; the disk store's fsync worker
        reports on it.
    :returns: an unopened :class:`~txraft.interfaces.IStorage`: a
        :class:`~txraft.storage.disk.DiskStorage` in ``config.log_dir``, or a
        :class:`~txraft.storage.memory.MemoryStorage` when that is ``None``.
    """
    if config.log_dir is None:
        from txraft.storage.memory import MemoryStorage

        return MemoryStorage()
    from txraft.storage.disk import DiskStorage

    return DiskStorage(config.log_dir, fsync=config.fsync, reactor=reactor, retain=config.trailing_entries)


def default_transport(config: RaftConfig, reactor: Any, credentials: Optional[TLSCredentials] = None) -> CountingTransport:
    """
    :param config: a :class:`txraft.RaftConfig` (listen address, TLS files).
    :param reactor: the reactor to listen and connect with.
    :param credentials: loaded :class:`~txraft.tls.TLSCredentials`, or
        ``None`` to load them from ``config``.
    :returns: an :class:`~txraft.interfaces.ITransport`: AMP over mutual TLS,
        behind a :class:`~txraft.metrics.CountingTransport` so that
        :class:`~txraft.metrics.MemberMetrics` can report bytes per peer.
    """
    from txraft.metrics import CountingTransport
    from txraft.transport.amp import AMPTransport

    return CountingTransport(AMPTransport.from_config(config, reactor, credentials=credentials))
