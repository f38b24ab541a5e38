"""
Member addresses: parsing the ``HOST:PORT`` and ``NAME@HOST:PORT`` entries of
a member list, and the member id of an address.

A member id is the address it listens on (``host:port``, as in the seed
design).  ``NAME@`` adds the name its certificate must carry; with it, a peer
can only claim to be that member over a connection whose certificate holds
``NAME`` (see :meth:`txraft.transport.tls.AccessPolicy.check_claim`)::

    >>> parse_peers("member1@127.0.0.11:7001,127.0.0.12:7002")
    Peers(ids=('127.0.0.11:7001', '127.0.0.12:7002'), names={'127.0.0.11:7001': 'member1'})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Tuple, Union

from txraft.config import parse_host_port
from txraft.errors import ConfigurationError

__all__ = ["Peers", "parse_peer", "parse_peers", "member_id"]


def member_id(host: str, port: int) -> str:
    """:returns: the member id of the member listening on ``host`` and ``port``."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_peer(entry: str) -> Tuple[str, str]:
    """
    :returns: ``(member_id, name)`` for one entry; ``name`` is ``""`` when absent.
    :raises ConfigurationError: naming the malformed entry.
    """
    if not isinstance(entry, str):
        raise ConfigurationError(f"a peer must be HOST:PORT or NAME@HOST:PORT, got {entry!r}")
    entry = entry.strip()
    name, at, address = entry.rpartition("@")
    if at and not name:
        raise ConfigurationError(f"peer {entry!r}: the name before '@' is empty")
    host, port = parse_host_port(address, f"peer {entry!r}")
    if port == 0:
        raise ConfigurationError(f"peer {entry!r}: a peer needs a fixed port, not 0")
    return member_id(host, port), name


@dataclass(frozen=True)
class Peers:
    """
    :ivar ids: member ids in the order given, without duplicates.
    :ivar names: member id -> certificate name, for the entries that named one.
    """

    ids: Tuple[str, ...] = ()
    names: Dict[str, str] = field(default_factory=dict)


def parse_peers(value: Union[str, Iterable[str]]) -> Peers:
    """
    Parse a comma-separated string or a sequence of entries.

    :raises ConfigurationError: for a malformed entry, or one member given two names.
    """
    if isinstance(value, str):
        entries = [part for part in value.split(",") if part.strip()]
    else:
        entries = list(value)
    ids, names = [], {}
    for entry in entries:
        mid, name = parse_peer(entry)
        if mid not in ids:
            ids.append(mid)
        if name:
            if names.get(mid, name) != name:
                raise ConfigurationError(f"member {mid} is given two certificate names: {names[mid]!r} and {name!r}")
            names[mid] = name
    return Peers(tuple(ids), names)
