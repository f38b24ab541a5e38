"""
Certificates for a txraft cluster, made with ``cryptography``.

Members authenticate each other with mutual TLS: every member and every client
holds a certificate signed by the cluster's own certificate authority, and a
member admits a peer when a name in the peer's certificate is in its ACL (see
:mod:`txraft.transport.tls` and ``docs/security.md``).  This module makes those
certificates::

    from txraft import certs

    ca_cert, ca_key = certs.create_ca()
    cert, key = certs.create_certificate(ca_cert, ca_key, ["member1"])
    certs.save_certificate("member1.pem", cert)
    certs.save_private_key("member1.key", key)

or, for a whole cluster at once (this is what ``txraft certs`` runs)::

    certs.write_cluster_certs("certs/", ["member1", "member2", "member3"], client="admin")

Keys are ECDSA P-256: small, fast to make and supported by every TLS 1.2+
peer.  Each name becomes a subjectAltName (DNS, or URI for names containing
``://``, or IP address for IP literals); the first name is also the subject's
common name.  Certificates are valid for both TLS server and client
authentication, because a member is both.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txraft.errors import ConfigurationError

__all__ = [
    "generate_key",
    "create_ca",
    "create_certificate",
    "save_certificate",
    "save_private_key",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "certificate_pem",
    "private_key_pem",
    "write_cluster_certs",
]

#: Validity of a new cluster CA, in days.
CA_DAYS = 3650
#: Validity of a new member or client certificate, in days.
CERT_DAYS = 825

# Backdate validity a little so that peers whose clocks lag still accept it.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def generate_key():
    """:returns: a new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _general_name(name: str) -> x509.GeneralName:
    if "://" in name:
        return x509.UniformResourceIdentifier(name)
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _check_names(names) -> List[str]:
    if isinstance(names, str):
        raise TypeError("names must be a sequence of strings, not a single str")
    names = list(names)
    if not names:
        raise ValueError("a certificate needs at least one name")
    for name in names:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"certificate names must be non-empty strings without spaces, got {name!r}")
    return names


def create_ca(name: str = "txraft cluster CA", *, key=None, days: int = CA_DAYS):
    """
    Create a self-signed certificate authority for one cluster.

    :param name: the CA's subject common name.
    :param key: the CA's private key; a new one when ``None``.
    :param days: validity in days.
    :returns: ``(certificate, private_key)`` as ``cryptography`` objects.
    """
    key = key or generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def create_certificate(ca_cert, ca_key, names: Sequence[str], *, key=None, days: int = CERT_DAYS):
    """
    Create a member or client certificate signed by the cluster CA.

    :param ca_cert: the CA certificate (``cryptography.x509.Certificate``).
    :param ca_key: the CA's private key.
    :param names: the certificate's names; ``names[0]`` is the subject common
        name, and every name becomes a subjectAltName.  These are the names an
        ACL lists.
    :param key: the new certificate's private key; a new one when ``None``.
        Pass a member's existing key to make a second certificate for the
        same identity (a member always admits its own public key).
    :param days: validity in days (never beyond the CA's own expiry).
    :returns: ``(certificate, private_key)``.
    :raises ValueError: when ``names`` is empty or a name is malformed.
    """
    names = _check_names(names)
    key = key or generate_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), _not_after(ca_cert))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _not_after(cert):
    try:
        return cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


# -- PEM ---------------------------------------------------------------------


def certificate_pem(cert) -> bytes:
    """:returns: ``cert`` in PEM form."""
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key) -> bytes:
    """:returns: ``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path, data: bytes, mode: int):
    """Write a file that must not exist yet (never overwrite a key or a certificate)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_certificate(path, cert):
    """
    Write ``cert`` as PEM to a new file.

    :raises FileExistsError: when ``path`` exists.
    """
    _write_new(path, certificate_pem(cert), 0o644)


def save_private_key(path, key):
    """
    Write ``key`` as unencrypted PEM to a new file readable only by its owner.

    :raises FileExistsError: when ``path`` exists.
    """
    _write_new(path, private_key_pem(key), 0o600)


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigurationError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def load_certificates(path) -> List[x509.Certificate]:
    """
    :returns: every certificate in the PEM file ``path`` (a CA bundle may hold several).
    :raises ConfigurationError: naming the file when it is unreadable or holds none.
    """
    data = _read(path, "certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigurationError(f"{path} holds no valid PEM certificate: {e}") from None
    return certs


def load_certificate(path) -> x509.Certificate:
    """:returns: the first certificate in the PEM file ``path``.  :raises ConfigurationError:"""
    return load_certificates(path)[0]


def load_private_key(path):
    """
    :returns: the unencrypted PEM private key in ``path``.
    :raises ConfigurationError: naming the file when it is unreadable or not a key.
    """
    data = _read(path, "private key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(f"{path} holds no unencrypted PEM private key: {e}") from None


# -- a whole cluster -----------------------------------------------------------


def write_cluster_certs(out_dir, names: Iterable[str], client: Optional[str] = None) -> Dict[str, Tuple[str, str]]:
    """
    Write the certificates of a cluster into ``out_dir``::

        ca.pem  ca.key                 the cluster CA (reused when present)
        <name>.pem  <name>.key         one pair per member name (and the client)

    Existing files are never overwritten: an existing CA signs the new
    certificates, and a name whose ``.pem`` or ``.key`` exists is left as it
    is.  Private keys are created readable only by their owner.

    :param out_dir: the directory; created when missing.
    :param names: member certificate names (one certificate each).
    :param client: optional name of a client certificate (for the HTTP API or
        ``txraft`` commands), written like a member's.
    :returns: ``{"ca": (ca.pem, ca.key), name: (name.pem, name.key), ...}``,
        the paths of every pair, new or kept.
    :raises ConfigurationError: when ``ca.pem`` exists without ``ca.key`` (or
        the reverse) and a certificate must be signed, or a file is unreadable.
    :raises ValueError: for a malformed or duplicate name.
    """
    names = _check_names(names) if not isinstance(names, str) else _check_names([names])
    wanted = names + ([client] if client is not None else [])
    _check_names(wanted)
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"duplicate certificate names in {wanted}")
    for name in wanted:
        if name == "ca" or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot be used as a file name in {out_dir}")
    # The directory holds the CA key: private, whatever the umask.
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    ca_pem = os.path.join(out_dir, "ca.pem")
    ca_keyfile = os.path.join(out_dir, "ca.key")
    result = {"ca": (ca_pem, ca_keyfile)}
    missing = []
    for name in wanted:
        pem, keyfile = os.path.join(out_dir, name + ".pem"), os.path.join(out_dir, name + ".key")
        result[name] = (pem, keyfile)
        if not (os.path.exists(pem) or os.path.exists(keyfile)):
            missing.append(name)

    have_cert, have_key = os.path.exists(ca_pem), os.path.exists(ca_keyfile)
    if have_cert and have_key:
        ca_cert, ca_key = load_certificate(ca_pem), load_private_key(ca_keyfile)
    elif have_cert or have_key:
        if not missing:
            return result
        raise ConfigurationError(
            f"{out_dir} holds only one of ca.pem and ca.key; both are needed to sign new certificates"
        )
    else:
        ca_cert, ca_key = create_ca()
        save_private_key(ca_keyfile, ca_key)
        save_certificate(ca_pem, ca_cert)

    for name in missing:
        pem, keyfile = result[name]
        cert, key = create_certificate(ca_cert, ca_key, [name])
        save_private_key(keyfile, key)
        save_certificate(pem, cert)
    return result
