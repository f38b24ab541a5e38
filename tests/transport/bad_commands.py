"""AMP commands a misbehaving peer might send: shared by the in-memory and the real-socket tests."""

from twisted.protocols import amp

from txraft.transport import commands


def retyped(command, name, argument):
    """:returns: ``command``'s argument list with argument ``name`` replaced by ``argument``."""
    return [(key, argument if key == name else original) for key, original in command.arguments]


class Bogus(amp.Command):
    """A command no member knows."""

    arguments = []
    response = []


class BadlyTypedVote(amp.Command):
    """RequestVote with a text term: AMP on the receiving side cannot parse it."""

    commandName = b"RequestVote"
    arguments = retyped(commands.RequestVote, b"term", amp.Unicode())
    response = commands.RequestVote.response


class RawEntries(amp.Command):
    """AppendToLog whose entries blob is sent as given, well-formed or not."""

    commandName = b"AppendToLog"
    arguments = retyped(commands.AppendToLog, b"entries", amp.String())
    response = []
    errors = commands.ERRORS
