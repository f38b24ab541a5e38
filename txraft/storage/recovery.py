"""
Recovery: what :class:`~txraft.storage.disk.DiskStorage` finds in its
directory at open, and the rules that decide what it may keep.

:func:`recover` runs on the storage's worker thread.  It locks the directory,
removes what a crash left half-made (temporary files, a snapshot without its
log), picks the newest generation whose snapshot reads back intact, replays
that log and every newer one, cuts a torn tail off the newest log, and removes
stale generations.  Damage anywhere else raises
:class:`~txraft.errors.CorruptLog` and changes no file.  Use it like this::

    state = recover_or_explain(directory, fsync=True)    # a Recovered
    state.index         # LogIndex of the entries on disk
    state.active        # the Segment later writes go to, writable at state.end
    state.hard_state, state.snapshot, state.lock, state.warnings

``docs/on-disk-format.md`` states the rules in prose ("Recovery").
"""

from __future__ import annotations

import os

from txraft.codec import OutOfRange
from txraft.errors import CorruptLog, StorageError
from txraft.messages import HardState, SnapshotMeta
from txraft.storage.files import exposed, install_file, list_files, log_name, prepare_directory
from txraft.storage.records import (
    LOG_MAGIC,
    MAX_RECORD,
    RECORD,
    new_log_bytes,
    next_good_record,
    peek,
    record_ok,
)
from txraft.storage.segments import LogIndex, Segment
from txraft.storage.snapshots import read_snapshot_header

__all__ = ["Recovered", "replay", "recover", "recover_or_explain"]


class Recovered:
    """What :func:`recover` found on disk, handed from the worker to the reactor."""

    def __init__(self):
        self.index = None
        self.hard_state = HardState()
        self.active = None
        self.end = 0
        self.snapshot = None  # (meta, path) or None
        self.lock = None  # descriptor of the locked directory
        self.warnings = []  # (format, fields) to log on the reactor thread


# Bytes of a log read with one pread during replay.
_REPLAY_WINDOW = 4 << 20


def replay(path, key, state, is_last):
    """
    Replay one log file into ``state`` (a :class:`Recovered`).

    A damaged tail of the last log is cut off; any other damage raises
    :class:`CorruptLog`.
    """
    segment = Segment(path, key)
    fd = os.open(path, os.O_RDONLY)
    segment.rfd = fd
    size = os.fstat(fd).st_size
    if os.pread(fd, len(LOG_MAGIC), 0) != LOG_MAGIC:
        segment.close()
        raise CorruptLog(f"{path}: offset 0: not a txraft log (bad magic)")
    offset = len(LOG_MAGIC)
    # The file is read in windows of _REPLAY_WINDOW bytes (or one record, if larger).
    window, window_start = b"", offset
    first = True
    try:
        while offset < size:
            damage = None
            at = offset - window_start
            if at + RECORD.size > len(window):
                window, window_start, at = os.pread(fd, _REPLAY_WINDOW, offset), offset, 0
            if at + RECORD.size > len(window):
                damage = "short record header"
            else:
                length, crc = RECORD.unpack_from(window, at)
                if not 0 < length <= min(MAX_RECORD, size - offset - RECORD.size):
                    damage = f"record length {length} runs past the end of the file"
                else:
                    end = at + RECORD.size + length
                    if end > len(window):
                        window = os.pread(fd, max(_REPLAY_WINDOW, RECORD.size + length), offset)
                        window_start, at, end = offset, 0, RECORD.size + length
                    payload = window[at + RECORD.size : end]
                    if not record_ok(window[at : at + 4], crc, payload):
                        damage = "record checksum mismatch"
            if damage is not None:
                follows = next_good_record(fd, offset + 1, size)
                if follows is not None or not is_last:
                    raise CorruptLog(
                        f"{path}: offset {offset}: {damage}"
                        + (f", yet an intact record follows at offset {follows}" if follows is not None else "")
                        + "; entries after it may be committed, refusing to continue"
                    )
                state.warnings.append(
                    (
                        "Truncating torn tail of {file} at offset {offset} ({damage}); "
                        "{lost} bytes discarded",
                        dict(file=path, offset=offset, damage=damage, lost=size - offset),
                    )
                )
                os.truncate(path, offset)
                wfd = os.open(path, os.O_WRONLY)
                try:
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
                size = offset
                break
            try:
                value = peek(payload)
            except OutOfRange as e:
                raise CorruptLog(
                    f"{path}: offset {offset}: {e}, beyond what a member can use (an earlier txraft "
                    "let a peer push a term that far).  Repair: if a majority of members still start, "
                    "stop this one, move its log directory aside and let it rejoin empty "
                    "(docs/operations.md, 'A member's disk is lost'); otherwise restore the cluster "
                    "from a backup (docs/operations.md, 'Restoring the whole cluster from a backup')"
                ) from None
            except ValueError as e:
                raise CorruptLog(f"{path}: offset {offset}: undecodable record: {e}")
            if type(value) is tuple:
                # An entry: only its index and term are needed now.
                entry_index, entry_term = value
                index = state.index
                if first or not index.first_index <= entry_index <= index.last_index + 1:
                    raise CorruptLog(
                        f"{path}: offset {offset}: entry {entry_index} does not follow "
                        f"the log ({index.first_index if index else '?'}..{index.last_index if index else '?'})"
                    )
                if entry_index <= index.last_index:
                    index.truncate_from(entry_index)
                index.add(entry_index, entry_term, segment, offset, RECORD.size + length)
            elif first:
                if not isinstance(value, SnapshotMeta):
                    raise CorruptLog(f"{path}: offset {offset}: a log must begin with its base record")
                first = False
                if state.index is None:
                    state.index = LogIndex(value.index, value.term)
                else:
                    index = state.index
                    if not (
                        index.base_index <= value.index <= index.last_index
                        and index.term_at(value.index) == value.term
                    ):
                        raise CorruptLog(
                            f"{path}: offset {offset}: log continues after entry "
                            f"{value.index} (term {value.term}), which the older logs do not hold"
                        )
                    index.truncate_from(value.index + 1)
            elif isinstance(value, HardState):
                state.hard_state = value
            else:
                raise CorruptLog(f"{path}: offset {offset}: unexpected {type(value).__name__} record")
            offset += RECORD.size + length
    except BaseException:
        segment.close()
        raise
    if first:
        segment.close()
        raise CorruptLog(f"{path}: offset {len(LOG_MAGIC)}: the log has no base record")
    return segment, size


def recover(directory, fsync):
    """
    Read (or create) the state in ``directory``.  Runs on the worker thread.

    :returns: a :class:`Recovered`.
    """
    lock = prepare_directory(directory, fsync)
    try:
        state = _recover_locked(directory, fsync)
    except BaseException:
        os.close(lock)
        raise
    state.lock = lock
    return state


def _recover_locked(directory, fsync):
    state = Recovered()
    for path, mode in exposed(directory):
        state.warnings.append((
            "{file} may be read by other users (mode {mode}); it holds every command: "
            "chmod 700 the log directory and 600 its files",
            dict(file=path, mode=f"{mode:04o}")))
    logs, snapshots, temporaries = list_files(directory)
    for path in temporaries:
        # Leftovers of a snapshot or log that was never installed.
        os.remove(path)
    for key in sorted(set(snapshots) - set(logs)):
        # The crash came between installing the snapshot and its log: the
        # previous snapshot and log are still complete.
        state.warnings.append(("Discarding incomplete snapshot {file} (it has no log)", dict(file=snapshots[key])))
        os.remove(snapshots.pop(key))

    if not logs:
        data, _ = new_log_bytes(0, 0, HardState(), [])
        logs[(0, 0)] = install_file(directory, log_name(0, 0), data, fsync)

    # Start from the newest log whose snapshot is intact (the first log needs none).
    keys = sorted(logs)
    start = None
    damaged = []
    for position in range(len(keys) - 1, -1, -1):
        key = keys[position]
        if key in snapshots:
            fd = os.open(snapshots[key], os.O_RDONLY)
            try:
                meta, _ = read_snapshot_header(fd, snapshots[key])
            except CorruptLog as e:
                damaged.append(e)
                state.warnings.append(
                    ("Snapshot {file} is damaged ({error}); trying an older one", dict(file=snapshots[key], error=str(e)))
                )
                continue
            finally:
                os.close(fd)
            if (meta.index, meta.term) != key:
                damaged.append(CorruptLog(f"{snapshots[key]}: offset 0: header names entry {meta.index} term {meta.term}"))
                continue
            state.snapshot = (meta, snapshots[key])
            start = position
            break
        if key == (0, 0):
            start = position
            break
    if start is None:
        if damaged:
            raise CorruptLog(f"{damaged[0]} (and no older snapshot to fall back on)")
        raise CorruptLog(f"{logs[keys[-1]]}: offset 0: no snapshot for this log and no log from the beginning")

    segments = []
    try:
        for position in range(start, len(keys)):
            is_last = position == len(keys) - 1
            segment, size = replay(logs[keys[position]], keys[position], state, is_last)
            segments.append(segment)
        if state.snapshot is not None:
            meta = state.snapshot[0]
            if state.index.term_at(meta.index) != meta.term:
                raise CorruptLog(
                    f"{logs[keys[start]]}: offset 0: the log does not hold the snapshot's entry "
                    f"{meta.index} (term {meta.term})"
                )
        state.active = segments[-1]
        state.end = size
        state.active.wfd = os.open(state.active.path, os.O_WRONLY)
    except BaseException:
        for segment in segments:
            segment.close()
        raise
    used = {id(s) for s in state.index.segments} | {id(state.active)}
    for segment in segments:
        if id(segment) not in used:
            segment.close()

    # Generations older than the one before the starting point are stale (seed
    # rule); the one before it is kept as a fallback should this snapshot rot.
    for key in keys[: max(0, start - 1)]:
        for files in (snapshots, logs):
            if key in files:
                os.remove(files[key])
    return state


def recover_or_explain(directory, fsync):
    """
    :func:`recover`, with an ``OSError`` turned into a
    :class:`~txraft.errors.StorageError` naming the file.
    """
    try:
        return recover(directory, fsync)
    except OSError as e:
        raise StorageError(f"{getattr(e, 'filename', None) or directory}: {e.strerror or e}") from e
