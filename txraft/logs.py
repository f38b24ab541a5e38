"""
Log output for machines: :func:`json_observer` writes every log event as one
line of JSON, with its structured fields.  Give it to twistd::

    twistd -n --pidfile= --logger txraft.logs.json_observer raft --listen ...

Each line is an object holding the event's fields (``member``, ``leader``,
``term``, ``peer``, ``peer_name``, ``reason``... as the event has them),
``log_format`` (the text template), ``log_level``, ``log_namespace`` and
``log_time`` (seconds since the epoch), as Twisted's
:func:`twisted.logger.jsonFileLogObserver` writes them;
:func:`twisted.logger.eventFromJSON` reads a line back and
:func:`twisted.logger.formatEvent` gives its text.  ``docs/deployment.md``
lists the events an operator looks for.
"""

from __future__ import annotations

import sys

from twisted.logger import jsonFileLogObserver

__all__ = ["json_observer"]


def json_observer(out=None):
    """
    :param out: a text file to write to; by default the standard output the
        process started with (twistd redirects ``sys.stdout`` into the log
        once logging begins, after it called this factory).
    :returns: an :class:`~twisted.logger.ILogObserver` writing one JSON object
        per line (no RFC 7464 record separator, so that line-oriented tools,
        journald and ``docker logs`` take it as it is).
    """
    return jsonFileLogObserver(out if out is not None else sys.stdout, recordSeparator="")
