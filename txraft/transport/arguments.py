"""
The AMP argument of each kind of field in :mod:`txraft.codec`'s schema, and
:func:`wire_arguments`, which makes a command's argument list from the schema.

An argument carries a field's *wire form* (:meth:`txraft.codec.Kind.dump`);
it only converts it to and from AMP's bytes.  Checking the value is left to
:func:`txraft.codec.from_fields`, so it happens in one place for the disk
and the network alike.  A value AMP itself cannot parse (``"two"`` for an
integer, a blob that is neither inline nor a reference, bytes that are not
msgpack) is a protocol violation, not an invalid request.

AMP caps one value at 65,535 bytes.  The fields that can be larger (a batch of
entries, a client command, a snapshot chunk) are :class:`Blob` arguments: a
value that fits travels inline, a larger one is first sent as a sequence of
``Fragment`` commands (:mod:`txraft.transport.fragments`) over the same
connection, and the argument then refers to the reassembled bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from twisted.protocols import amp

from txraft import codec

__all__ = ["BlobRef", "Encoded", "Blob", "Packed", "Integer", "Text", "Flag", "Texts", "wire_arguments"]


# Wire name -> Python name.  Every argument is named after a message field, a
# Python identifier already, so the name is its ASCII decoding; AMP's own
# argument classes work it out again (four calls) for each value sent or read.
_NAMES: dict = {}


def _python_name(name: bytes) -> str:
    try:
        return _NAMES[name]
    except KeyError:
        python = _NAMES[name] = name.decode("ascii")
        if not python.isidentifier():
            raise ValueError(f"argument name {name!r} is not a Python identifier") from None
        return python


class _Named(amp.Argument):
    """
    An AMP argument whose name maps to its Python name through a table:
    ``fromBox`` and ``toBox`` behave as :class:`amp.Argument`'s, with less
    work per value (every request and reply passes here).
    """

    def fromBox(self, name, strings, objects, proto):
        if self.optional:
            string = strings.pop(name, None)
            objects[_python_name(name)] = None if string is None else self.fromStringProto(string, proto)
        else:
            objects[_python_name(name)] = self.fromStringProto(strings.pop(name), proto)

    def toBox(self, name, strings, objects, proto):
        python = _python_name(name)
        value = objects.pop(python, None) if self.optional else objects.pop(python)
        if value is not None or not self.optional:
            strings[name] = self.toStringProto(value, proto)


class Integer(_Named, amp.Integer):
    """:class:`amp.Integer`."""


class Text(_Named, amp.Unicode):
    """:class:`amp.Unicode`."""


class Flag(_Named, amp.Boolean):
    """:class:`amp.Boolean`."""


class Texts(_Named, amp.ListOf):
    """:class:`amp.ListOf` :class:`amp.Unicode`."""

    def __init__(self, optional=False):
        amp.ListOf.__init__(self, amp.Unicode(), optional)


@dataclass(frozen=True)
class BlobRef:
    """A :class:`Blob` value sent earlier as the ``Fragment`` sequence ``blob``."""

    blob: int


@dataclass(frozen=True)
class Encoded:
    """A :class:`Blob` value already encoded by :meth:`Blob.encode` (sent inline)."""

    raw: bytes


def _unpack(raw: bytes):
    # Only a request id travels this way: an array of three, nothing nested deeper.
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, max_array_len=3, max_map_len=0,
                               max_ext_len=0)
    except Exception as error:  # msgpack raises several unrelated types
        raise ValueError(f"not valid msgpack: {error}") from None


class Blob(_Named):
    """
    Bytes of any size.  On the wire: ``b"="`` and the bytes, or ``b"@"`` and
    the decimal id of a ``Fragment`` sequence.

    ``fromString`` neither resolves references nor decodes, so that a bad value
    fails inside the responder with a declared error; it returns the raw
    bytes or a :class:`BlobRef`.

    :param packed: carry a structured wire form as msgpack bytes instead of
        bytes as they are.
    :param unpack: with ``packed``, the function reading those bytes back
        (raising :class:`ValueError`), within limits of its own.
    """

    def __init__(self, packed=False, optional=False, unpack=None):
        amp.Argument.__init__(self, optional)
        self.packed = packed
        self.unpack = unpack

    def encode(self, value) -> bytes:
        """
        :returns: the bytes carried for the wire form ``value``; with
            ``packed``, ``value`` may be its msgpack bytes already
            (:func:`txraft.codec.to_fields` with ``packed``: entries).
        """
        if self.packed:
            return value if isinstance(value, bytes) else codec.pack(value)
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return value

    def decode(self, raw: bytes):
        """Inverse of :meth:`encode`.  :raises ValueError: for bytes that are not msgpack."""
        return self.unpack(raw) if self.packed else raw

    def toString(self, value):
        if isinstance(value, BlobRef):
            return b"@%d" % value.blob
        if isinstance(value, Encoded):
            return b"=" + value.raw
        return b"=" + self.encode(value)

    def fromString(self, string):
        if string[:1] == b"=":
            return string[1:]
        if string[:1] == b"@" and string[1:].isdigit():
            return BlobRef(int(string[1:]))
        raise ValueError("a blob value must start with '=' or '@'")


class Packed(_Named):
    """A small structured wire form (a request id) as msgpack bytes."""

    def toString(self, value):
        return codec.pack(value)

    def fromString(self, string):
        return _unpack(string)


# Kind -> a new AMP argument for it.  Kinds absent here (an entry's kind) occur
# only inside other fields.
_ARGUMENTS = {
    codec.UINT: Integer,
    codec.TEXT: Text,
    codec.FLAG: Flag,
    codec.TEXTS: Texts,
    codec.BYTES: Blob,
    codec.ENTRIES: lambda: Blob(packed=True, unpack=codec.unpack_entries),
    codec.REQUEST_ID: Packed,
}


def wire_arguments(message_type):
    """
    :returns: the AMP ``arguments`` (or ``response``) list carrying the fields
        of ``message_type``, a type of :mod:`txraft.messages`: one argument per
        field, named as the field.
    :raises TypeError: for a type outside the schema, or a field no argument carries.
    """
    arguments = []
    for name, kind in codec.fields(message_type):
        if kind not in _ARGUMENTS:
            raise TypeError(f"{message_type.__name__}.{name}: no AMP argument carries {kind.name} fields")
        arguments.append((name.encode("ascii"), _ARGUMENTS[kind]()))
    return arguments
