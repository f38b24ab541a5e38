"""txraft.certs: cluster CA, member certificates, PEM files, write_cluster_certs; txraft.transport.addresses."""

import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from txraft import certs
from txraft.errors import ConfigurationError
from txraft.transport.addresses import parse_peers
from txraft.transport.tls import AccessPolicy, certificate_names, public_key_der


def test_member_certificates_carry_their_names_and_serve_both_ends():
    ca, ca_key = certs.create_ca()
    cert, key = certs.create_certificate(ca, ca_key, ["member1", "spiffe://cluster/member1"])
    assert certificate_names(cert) == {"member1", "spiffe://cluster/member1"}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_a_second_certificate_can_reuse_a_members_key():
    ca, ca_key = certs.create_ca()
    cert, key = certs.create_certificate(ca, ca_key, ["member1"])
    twin, same = certs.create_certificate(ca, ca_key, ["other-name"], key=key)
    assert same is key and public_key_der(twin) == public_key_der(cert)


def test_bad_names_are_refused():
    ca, ca_key = certs.create_ca()
    for names in ([], [""], ["two words"]):
        with pytest.raises(ValueError):
            certs.create_certificate(ca, ca_key, names)
    with pytest.raises(TypeError):
        certs.create_certificate(ca, ca_key, "member1")


def test_write_cluster_certs_writes_a_ca_and_one_pair_per_name(tmp_path):
    paths = certs.write_cluster_certs(str(tmp_path), ["member1", "member2"], client="admin")
    assert set(paths) == {"ca", "member1", "member2", "admin"}
    ca = certs.load_certificate(paths["ca"][0])
    for name in ("member1", "member2", "admin"):
        cert = certs.load_certificate(paths[name][0])
        assert name in certificate_names(cert) and cert.issuer == ca.subject
        key = certs.load_private_key(paths[name][1])
        assert public_key_der(cert) == public_key_der_of_key(key)
        assert stat.S_IMODE(os.stat(paths[name][1]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths["ca"][1]).st_mode) == 0o600


def public_key_der_of_key(key):
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_write_cluster_certs_reuses_the_ca_and_never_overwrites(tmp_path):
    first = certs.write_cluster_certs(str(tmp_path), ["member1"])
    before = {p: open(p, "rb").read() for pair in first.values() for p in pair}
    second = certs.write_cluster_certs(str(tmp_path), ["member1", "member4"])
    for path, data in before.items():
        assert open(path, "rb").read() == data
    ca = certs.load_certificate(second["ca"][0])
    assert certs.load_certificate(second["member4"][0]).issuer == ca.subject


def test_write_cluster_certs_needs_the_ca_key_to_sign(tmp_path):
    paths = certs.write_cluster_certs(str(tmp_path), ["member1"])
    os.remove(paths["ca"][1])
    certs.write_cluster_certs(str(tmp_path), ["member1"])  # nothing to sign: fine
    with pytest.raises(ConfigurationError):
        certs.write_cluster_certs(str(tmp_path), ["member2"])


def test_unreadable_files_name_themselves(tmp_path):
    with pytest.raises(ConfigurationError, match="missing.pem"):
        certs.load_certificate(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.key").write_bytes(b"junk")
    with pytest.raises(ConfigurationError, match="junk.key"):
        certs.load_private_key(str(tmp_path / "junk.key"))


def test_access_policy_admits_acl_names_and_the_own_key_only():
    ca, ca_key = certs.create_ca()
    own, own_key = certs.create_certificate(ca, ca_key, ["member1"])
    policy = AccessPolicy.build(["member2"], own)
    assert policy.admit(certs.create_certificate(ca, ca_key, ["member2"])[0]).allowed
    assert not policy.admit(certs.create_certificate(ca, ca_key, ["member3"])[0]).allowed
    assert policy.admit(certs.create_certificate(ca, ca_key, ["anything"], key=own_key)[0]).allowed
    assert not policy.admit(None).allowed


def test_parse_peers_gives_ids_and_certificate_names():
    peers = parse_peers("member1@127.0.0.11:7001, 127.0.0.12:7002,member3@[::1]:7003")
    assert peers.ids == ("127.0.0.11:7001", "127.0.0.12:7002", "[::1]:7003")
    assert peers.names == {"127.0.0.11:7001": "member1", "[::1]:7003": "member3"}
    for bad in ("@127.0.0.1:1", "127.0.0.1", "127.0.0.1:0", "a@1.2.3.4:1,b@1.2.3.4:1"):
        with pytest.raises(ConfigurationError):
            parse_peers(bad)
