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


def default_storage(config, reactor):
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

    return DiskStorage(config.log_dir, fsync=config.fsync, reactor=reactor)


def default_transport(config, reactor):
    """
    :param config: a :class:`txraft.RaftConfig` (listen address, TLS files).
    :param reactor: the reactor to listen and connect with.
    :returns: an :class:`~txraft.interfaces.ITransport`: AMP over mutual TLS.
    """
    from txraft.transport.amp import AMPTransport

    return AMPTransport.from_config(config, reactor)
