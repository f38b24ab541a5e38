"""
The few bytes txraft writes at the start of every snapshot, before the
application's own data: the session table (so deduplication survives
compaction) and the member list.  The encoding is :mod:`txraft.codec`'s
(:func:`~txraft.codec.encode_snapshot_header`); this module only converts
the core's session table to and from it.
"""

from typing import BinaryIO, List, Sequence, Tuple

from txraft import codec
from txraft.core.sessions import SessionTable


def write_header(fileobj: BinaryIO, sessions: SessionTable, members: Sequence[str]) -> None:
    """
    Write the header for ``sessions`` (a :class:`SessionTable`) and the member
    ids ``members`` to the binary file ``fileobj``.
    """
    fileobj.write(codec.encode_snapshot_header(sessions.to_wire(), members))


def read_header(fileobj: BinaryIO) -> Tuple[SessionTable, List[str]]:
    """
    Read the header and leave ``fileobj`` at the application's first byte.

    :returns: ``(SessionTable, members)``.
    :raises ValueError: when the snapshot does not start with a txraft header.
    """
    sessions, members = codec.decode_snapshot_header(fileobj)  # type: ignore[no-untyped-call]
    return SessionTable.from_wire(sessions), members
