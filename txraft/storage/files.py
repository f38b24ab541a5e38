"""
The files of a log directory: their names, and how they are made durable.

A log continues the history after the entry ``(index, term)`` and is named
``<term>.<index>.log``; the snapshot covering entries up to that entry is
``<term>.<index>.snap``.  Term and index are zero-padded to 20 digits, so
names sort in log order.  Use it like this::

    lock = prepare_directory(directory, fsync=True)   # create, lock, probe
    install_file(directory, log_name(0, 0), data, fsync=True)
    logs, snapshots, temporaries = list_files(directory)
    # logs and snapshots map (index, term) to a path

A file is installed under a temporary name, fsynced, renamed into place and
the directory fsynced, so it never exists half-made.  Files of other names
are never touched.  A directory txraft creates is private (0700) and so is
every file it writes (0600): they hold every command ever replicated.
"""

from __future__ import annotations

import fcntl
import os
import re

from txraft.errors import ConfigurationError, StorageError

__all__ = [
    "stem",
    "log_name",
    "snapshot_name",
    "write_all",
    "fsync_directory",
    "install_file",
    "list_files",
    "prepare_directory",
    "FILE_MODE",
    "DIRECTORY_MODE",
    "exposed",
]

#: Logs and snapshots are the member's alone: they hold every command.
FILE_MODE = 0o600
#: A log directory made by txraft (its parents are left as they are).
DIRECTORY_MODE = 0o700

_NAME = re.compile(r"^(\d{20})\.(\d{20})\.(log|snap)$")
_TEMPORARY = re.compile(r"^\d{20}\.\d{20}\.(log|snap)\..*\.tmp$")


def stem(term, index):
    """:returns: the name shared by the log and the snapshot of ``(index, term)``, without suffix."""
    return f"{term:020d}.{index:020d}"


def log_name(term, index):
    """:returns: the file name of the log that continues after ``(index, term)``."""
    return stem(term, index) + ".log"


def snapshot_name(term, index):
    """:returns: the file name of the snapshot covering entries up to ``(index, term)``."""
    return stem(term, index) + ".snap"


def write_all(fd, data, offset):
    """Write all of ``data`` to ``fd`` at ``offset`` (``pwrite`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsync_directory(path):
    """Make the names in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_file(directory, name, data, fsync):
    """Write ``data`` to ``directory/name`` atomically (temporary name, fsync, rename, fsync directory)."""
    final = os.path.join(directory, name)
    temporary = final + ".new.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        write_all(fd, data, 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    if fsync:
        fsync_directory(directory)
    return final


def list_files(directory):
    """:returns: ``(logs, snapshots, temporaries)``; logs and snapshots map ``(index, term)`` to a path."""
    logs, snapshots, temporaries = {}, {}, []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            key = (int(match.group(2)), int(match.group(1)))
            (logs if match.group(3) == "log" else snapshots)[key] = os.path.join(directory, name)
        elif _TEMPORARY.match(name):
            temporaries.append(os.path.join(directory, name))
    return logs, snapshots, temporaries


def exposed(directory):
    """
    :returns: ``(path, mode)`` of the directory and of each log, snapshot or
        temporary file in it that other users may read or write (group or
        other permission bits), for a warning at start.
    """
    found = []
    paths = [directory] + [os.path.join(directory, name) for name in sorted(os.listdir(directory))
                           if _NAME.match(name) or _TEMPORARY.match(name)]
    for path in paths:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            found.append((path, mode))
    return found


def prepare_directory(directory, fsync):
    """
    Create ``directory`` if needed, check that it can be written and lock it
    against a second member.

    :returns: the descriptor holding the lock (released when closed, or when
        the process dies).
    :raises ConfigurationError: if ``directory`` exists and is not a directory.
    :raises StorageError: if it cannot be created or written, or is locked.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigurationError(f"log_dir {directory!r} exists and is not a directory")
    try:
        if not os.path.exists(directory):
            os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            if fsync:
                # Make the new directory's own name durable.
                fsync_directory(os.path.dirname(os.path.abspath(directory)))
    except OSError as e:
        raise StorageError(f"cannot create log_dir {directory!r}: {e.strerror or e}") from e
    lock = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        raise StorageError(f"log_dir {directory!r} is in use by another storage (it is locked)") from None
    try:
        _check_writable_directory(directory)
    except BaseException:
        os.close(lock)
        raise
    return lock


def _check_writable_directory(directory):
    probe = os.path.join(directory, stem(0, 0) + ".log.probe.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise StorageError(f"log_dir {directory!r} is not writable: {e.strerror or e}") from e
