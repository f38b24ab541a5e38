"""
The few bytes txraft writes at the start of every snapshot, before the
application's own data: the session table (so deduplication survives
compaction) and the membership configuration the snapshot ends in.  The
encoding is :mod:`txraft.codec`'s (:func:`~txraft.codec.encode_snapshot_header`);
this module only converts the core's values to and from it.
"""

from typing import BinaryIO, Optional, Sequence, Tuple

from txraft import codec
from txraft.core.membership import Configuration
from txraft.core.sessions import SessionTable


def write_header(fileobj: BinaryIO, sessions: SessionTable, members: Sequence[str],
                 configuration: Optional[Configuration] = None) -> None:
    """
    Write the header for ``sessions`` (a :class:`SessionTable`), the member
    ids ``members`` and, when given, the :class:`Configuration` to the binary
    file ``fileobj``.
    """
    wire = None if configuration is None else configuration.to_wire()
    fileobj.write(codec.encode_snapshot_header(sessions.to_wire(), members, wire))


def read_header(fileobj: BinaryIO) -> Tuple[SessionTable, Configuration]:
    """
    Read the header and leave ``fileobj`` at the application's first byte.

    :returns: ``(SessionTable, Configuration)``; a header written before
        configurations were recorded gives its member list, all voters.
    :raises ValueError: when the snapshot does not start with a txraft header.
    """
    sessions, members, configuration = codec.decode_snapshot_header(fileobj)
    if configuration is None:
        configuration = Configuration.bootstrap(members)
    else:
        configuration = Configuration.from_wire(configuration, "the snapshot header's configuration")
    return SessionTable.from_wire(sessions), configuration
