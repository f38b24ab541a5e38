"""
Mutual TLS between members, and the certificate-name ACL.

Every member holds a certificate and key signed by the cluster CA
(:mod:`txraft.certs` makes them).  Both ends of a member connection verify the
other's certificate against the CA with TLS 1.2 or later, then apply the ACL,
following the seed design's ``Authorize``: the peer is admitted when

- a name in its certificate (subject common name, DNS or URI subjectAltName)
  is in the configured ``acl``, or
- it presents this member's own public key (a member is always allowed to talk
  to another instance of itself).

Everyone else is refused as soon as the handshake completes: the connection is
aborted before a single byte of theirs reaches AMP, and the refusing side logs
the names it saw and why.

Admission is about the connection; claims are about messages.  When the member
list gives certificate names (``NAME@HOST:PORT``, see
:mod:`txraft.transport.addresses`), a request whose ``candidate`` or ``leader``
field claims to come from such a member is refused with
:class:`txraft.errors.Unauthorized` unless the connection's certificate carries
that member's name (:meth:`AccessPolicy.check_claim`): an admitted peer cannot
speak for another.

The check runs in :meth:`IHandshakeListener.handshakeCompleted`, which
``TLSMemoryBIOProtocol`` calls before it delivers any application data;
``getPeerCertificate()`` is still ``None`` in ``connectionMade``.

This module is the one place that decides how a member listens and whom it
admits, for member connections and the HTTPS API alike:

- :meth:`TLSCredentials.load` reads the certificate files; the service loads
  them once at start and hands the same :class:`TLSCredentials` to the member
  transport and to the HTTPS site.
- :func:`server_endpoint` makes the listening endpoint: TLS with those
  credentials, or plain TCP when there are none (insecure mode).
- :class:`ACLCheckedProtocolMixin` is the certificate-name check after the
  handshake, applying an :class:`AccessPolicy`; the member protocol and the
  HTTPS channel both mix it in::

    credentials = TLSCredentials.load("member1.pem", "member1.key", "ca.pem")
    endpoint = server_endpoint(reactor, "10.0.0.1", 8001, credentials)
    policy = AccessPolicy.build(["admin"], unlisted="no name is in --client-acl")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Mapping, Optional, Tuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNSPattern
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from txraft import certs
from txraft.errors import ConfigurationError, Unauthorized
from txraft.transport.limits import ConnectionGuard, GuardedFactory, mark_admitted

__all__ = [
    "TLSCredentials",
    "AccessPolicy",
    "Admission",
    "certificate_names",
    "public_key_der",
    "ACLCheckedProtocolMixin",
    "server_endpoint",
]


def public_key_der(cert) -> bytes:
    """:returns: the DER SubjectPublicKeyInfo of ``cert``, for comparing keys."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_names(cert) -> FrozenSet[str]:
    """
    The names an ACL may match in ``cert``: the subject common names, and the
    DNS and URI subjectAltNames.

    DNS names come from ``service_identity``'s
    :func:`~service_identity.cryptography.extract_patterns`; URIs are taken
    whole from the subjectAltName (``service_identity`` splits them up).
    """
    names = set()
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.add(attribute.value)
    for pattern in extract_patterns(cert):
        if isinstance(pattern, DNSPattern):
            names.add(pattern.pattern.decode("ascii", "replace"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names.update(san.get_values_for_type(x509.UniformResourceIdentifier))
    return frozenset(names)


def _load(value, loader, what):
    if value is None:
        raise ConfigurationError(f"TLS needs the {what}: set it, or run insecure (plain TCP, never in production)")
    if isinstance(value, (str, bytes, os.PathLike)):
        return loader(value)
    return value


@dataclass(frozen=True)
class TLSCredentials:
    """
    A member's certificate and key, and the CA certificates peers must chain to.

    :ivar certificate: ``cryptography.x509.Certificate`` of this member.
    :ivar private_key: its private key.
    :ivar authorities: the trusted CA certificates (non-empty).
    """

    certificate: x509.Certificate
    private_key: object
    authorities: Tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, cert, key, ca) -> "TLSCredentials":
        """
        Build credentials from paths of PEM files or ``cryptography`` objects
        (a CA may also be a list of certificates).

        :raises ConfigurationError: naming a missing or unreadable file.
        """
        certificate = _load(cert, certs.load_certificate, "certificate (cert)")
        private_key = _load(key, certs.load_private_key, "private key (key)")
        if isinstance(ca, (list, tuple)):
            authorities = tuple(ca)
        elif isinstance(ca, x509.Certificate):
            authorities = (ca,)
        else:
            authorities = tuple(_load(ca, certs.load_certificates, "CA certificate (ca)"))
        if public_key_der(certificate) != private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigurationError("the private key (key) does not belong to the certificate (cert)")
        return cls(certificate, private_key, authorities)

    def check_own_certificate(self):
        """
        Check that this member's certificate can work: it carries a name
        (which peers' ACLs admit) and one of :attr:`authorities` signed it
        (or peers, verifying it against the same CA, refuse every connection).

        :raises ConfigurationError: naming what is wrong and the files to fix.
        """
        if not certificate_names(self.certificate):
            raise ConfigurationError(
                "the certificate (cert) carries no name (common name, DNS or URI subjectAltName): "
                "no ACL can admit it; make it with `txraft certs`")
        for authority in self.authorities:
            try:
                self.certificate.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return
        raise ConfigurationError(
            f"the certificate (cert) was issued by {self.certificate.issuer.rfc4514_string()!r}, which the CA "
            f"(ca) did not sign: every peer would refuse this member; use the cluster's ca.pem, or certificates "
            "it signed")

    def options(self) -> ssl.CertificateOptions:
        """
        :returns: TLS options for either end of a member connection: present
            this member's certificate, require the peer's, verify it against
            the CA, TLS 1.2 at least.  (Names are checked by the ACL after the
            handshake, not by hostname: member ids are addresses, certificate
            names are names.)
        """
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(certs.certificate_pem(c)) for c in self.authorities]
        )
        return ssl.CertificateOptions(
            privateKey=self.private_key,
            certificate=self.certificate,
            trustRoot=trust,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )


@implementer(IStreamServerEndpoint)
class _GuardedEndpoint:
    """TCP with a :class:`~txraft.transport.limits.ConnectionGuard` outermost, then TLS (if any), then the application."""

    def __init__(self, tcp, options, guard):
        self.tcp = tcp
        self.options = options
        self.guard = guard

    def listen(self, factory):
        if self.options is not None:
            factory = TLSMemoryBIOFactory(self.options, False, factory)
        if self.guard is not None:
            factory = GuardedFactory(self.guard, factory)
        return self.tcp.listen(factory)


def server_endpoint(reactor: Any, host: str, port: int, credentials: Optional[TLSCredentials] = None,
                    guard: Optional[ConnectionGuard] = None) -> IStreamServerEndpoint:
    """
    The endpoint a member or its HTTP API listens on.

    :param reactor: the reactor to listen with.
    :param str host: the address to bind (an IPv6 address contains ``:``).
    :param int port: the port (0: the system picks one).
    :param credentials: the :class:`TLSCredentials` to require of clients, or
        ``None`` for plain TCP (insecure mode).
    :param guard: a :class:`~txraft.transport.limits.ConnectionGuard` whose
        limits every accepted connection is held to, before TLS; ``None``
        for none.
    :returns: an ``IStreamServerEndpoint``: TLS that requires a client
        certificate from the cluster CA, or plain TCP.
    """
    factory = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
    options = credentials.options() if credentials is not None else None
    return _GuardedEndpoint(factory(reactor, port, interface=host), options, guard)


@dataclass(frozen=True)
class Admission:
    """The outcome of checking one peer certificate."""

    allowed: bool
    names: FrozenSet[str]
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    """
    Who may talk to this member (over member connections, or to its HTTPS API).

    :ivar acl: certificate names admitted.
    :ivar own_key: DER public key of this member; a peer presenting it is
        admitted.  ``None``: no such exception (the HTTPS API admits clients
        by name only).
    :ivar peer_names: member id -> the certificate name that member must carry.
    :ivar unlisted: the reason logged when no certificate name is in ``acl``
        (it names the setting an operator would change).
    """

    acl: FrozenSet[str]
    own_key: Optional[bytes]
    peer_names: Mapping[str, str] = field(default_factory=dict)
    unlisted: str = "no certificate name is in the ACL"

    @classmethod
    def build(cls, acl, own_certificate=None, peer_names=None, unlisted=None) -> "AccessPolicy":
        """
        :param acl: the certificate names admitted (a sequence, not a str).
        :param own_certificate: this member's certificate, whose key is
            always admitted; ``None`` for a policy by name only.
        :param peer_names: member id -> certificate name, see :meth:`check_claim`.
        :param unlisted: the refusal reason when no name is in ``acl``.
        :returns: the policy.
        :raises TypeError: when ``acl`` is a str.
        """
        if isinstance(acl, str):
            raise TypeError("acl must be a sequence of names, not a str")
        own_key = public_key_der(own_certificate) if own_certificate is not None else None
        extra = {} if unlisted is None else {"unlisted": unlisted}
        return cls(frozenset(acl or ()), own_key, dict(peer_names or {}), **extra)

    def admit(self, cert, expected_name: Optional[str] = None) -> Admission:
        """
        Decide on a peer that completed the TLS handshake.

        :param cert: the peer's ``cryptography`` certificate (already verified
            against the CA), or ``None`` when it sent none.
        :param expected_name: on outgoing connections, the certificate name the
            member list gives for the member dialled, if any; the peer must
            carry it.
        """
        if cert is None:
            return Admission(False, frozenset(), "no client certificate")
        names = certificate_names(cert)
        if expected_name is not None and expected_name not in names:
            return Admission(False, names, f"expected the certificate of {expected_name!r}")
        matched = sorted(names & self.acl)
        if matched:
            return Admission(True, names, f"name {matched[0]!r} is in the ACL")
        if self.own_key is not None and public_key_der(cert) == self.own_key:
            return Admission(True, names, "it presents this member's own public key")
        return Admission(False, names, self.unlisted)

    def check_claim(self, claimed: str, names: FrozenSet[str]):
        """
        Refuse a request claiming to come from member ``claimed`` over a
        connection whose certificate names are ``names``, when the member list
        names that member's certificate and ``names`` lacks it.

        :raises Unauthorized: naming the claim and the certificate.
        """
        required = self.peer_names.get(claimed)
        if required is not None and required not in names:
            raise Unauthorized(
                f"a peer with certificate names {sorted(names)} claims to be member {claimed}, "
                f"whose certificate name is {required!r}"
            )


class ACLCheckedProtocolMixin:
    """
    The certificate-name check after the TLS handshake, for any protocol on
    a TLS connection (declare ``@implementer(IHandshakeListener)`` on the
    class): member connections and HTTPS API connections both use it.

    ``TLSMemoryBIOProtocol`` calls :meth:`handshakeCompleted` before it
    delivers any application byte; a refused peer is logged (who, with which
    certificate names, and why) and its connection aborted, so nothing of it
    ever reaches the application.

    The protocol class mixing this in provides ``policy`` (an
    :class:`AccessPolicy`, or ``None`` to admit everyone),
    ``expected_peer_name`` (``None`` on accepted connections), ``side`` (who
    checks, for the log: ``"server"``, ``"client"``, ``"HTTP API"``) and may
    override :attr:`peer_role` and the two hooks :meth:`peer_admitted` and
    :meth:`peer_refused`.  After admission ``peer_certificate_names`` holds
    the peer's names.
    """

    _acl_log = Logger()
    peer_certificate_names: FrozenSet[str] = frozenset()
    #: What the other end is called in the log ("peer", "client").
    peer_role = "peer"
    expected_peer_name: Optional[str] = None

    def handshakeCompleted(self):
        """:class:`~twisted.internet.interfaces.IHandshakeListener`: apply the policy."""
        if self.policy is None:
            return
        peer = self.transport.getPeer()
        x509_cert = self.transport.getPeerCertificate()
        cert = x509_cert.to_cryptography() if x509_cert is not None else None
        decision = self.policy.admit(cert, self.expected_peer_name)
        address = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if not decision.allowed:
            self._acl_log.warn(
                "{side}: refused {role} {peer} with certificate names {names}: {reason}",
                side=self.side,
                role=self.peer_role,
                peer=address,
                names=sorted(decision.names),
                reason=decision.reason,
            )
            self.transport.abortConnection()
            self.peer_refused(Unauthorized(f"peer {address} {sorted(decision.names)} refused: {decision.reason}"))
            return
        self.peer_certificate_names = decision.names
        mark_admitted(self.transport)
        self._acl_log.debug(
            "{side}: admitted {role} {peer} {names}: {reason}",
            side=self.side,
            role=self.peer_role,
            peer=address,
            names=sorted(decision.names),
            reason=decision.reason,
        )
        self.peer_admitted()

    def peer_admitted(self):
        """The peer passed the ACL; application data may flow."""

    def peer_refused(self, reason):
        """The peer failed the ACL; the connection is being aborted."""
