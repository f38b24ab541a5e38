"""
``twistd raft`` refuses configurations that cannot work or are unsafe
(issue 9, finding 7): keys others may read, a certificate the CA did not
sign or without a name, special files; ``txraft certs --out`` makes a
private directory; unbound identities are warned about at start.
"""

import datetime
import os
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from txraft import certs
from txraft.tap import makeService
from tests.test_tap import APP, parse, pki, refused, tls_args  # noqa: F401 (pki is a fixture)


@pytest.fixture
def own_key(tmp_path, pki):  # noqa: F811
    """member1's key copied where a test may change its mode."""
    path = str(tmp_path / "member1.key")
    shutil.copy(pki["member1"]["key"], path)
    os.chmod(path, 0o600)
    return path


def args_with_key(pki, key, tmp_path):  # noqa: F811
    args = tls_args(pki)
    args[3] = key
    return args + ["--app", APP, "--logdir", str(tmp_path / "d")]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_may_read_is_refused_unless_allowed(tmp_path, pki, own_key, mode):  # noqa: F811
    os.chmod(own_key, mode)
    message = refused(*args_with_key(pki, own_key, tmp_path))
    assert f"--key {own_key}: other users may read it (mode {mode:04o})" in message
    assert "chmod 600" in message and "--allow-readable-key" in message
    options = parse(*args_with_key(pki, own_key, tmp_path), "--allow-readable-key")
    [warning] = makeService(options).warnings  # logged when the service starts
    assert "other users may read it" in warning


@pytest.mark.parametrize("mode", [0o622, 0o666])
def test_a_key_others_may_change_is_always_refused(tmp_path, pki, own_key, mode):  # noqa: F811
    os.chmod(own_key, mode)
    message = refused(*args_with_key(pki, own_key, tmp_path), "--allow-readable-key")
    assert "other users may change it" in message and "--allow-readable-key" not in message


def test_a_certificate_the_ca_did_not_sign_is_refused(tmp_path, pki):  # noqa: F811
    other = certs.write_cluster_certs(str(tmp_path / "other"), ["member1"])
    args = tls_args(pki)
    args[1], args[3] = other["member1"]
    message = refused(*args, "--app", APP, "--logdir", str(tmp_path / "d"))
    assert "the CA (ca) did not sign" in message and "every peer would refuse" in message


def test_a_certificate_without_a_name_is_refused(tmp_path, pki):  # noqa: F811
    ca = certs.load_certificate(pki["ca"]["cert"])
    ca_key = certs.load_private_key(pki["ca"]["key"])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    certs.save_certificate(str(tmp_path / "nameless.pem"), cert)
    certs.save_private_key(str(tmp_path / "nameless.key"), key)
    args = tls_args(pki)
    args[1], args[3] = str(tmp_path / "nameless.pem"), str(tmp_path / "nameless.key")
    assert "carries no name" in refused(*args, "--app", APP, "--logdir", str(tmp_path / "d"))


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "/tmp"])
def test_special_files_are_refused_with_a_clear_line(tmp_path, pki, special):  # noqa: F811
    args = tls_args(pki)
    args[5] = special
    assert refused(*args, "--app", APP, "--logdir", str(tmp_path / "d")) == f"--ca {special}: not a regular file"


def test_txraft_certs_out_makes_a_private_directory(tmp_path):
    old = os.umask(0o022)
    try:
        certs.write_cluster_certs(str(tmp_path / "pki"), ["member1"])
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "pki").st_mode & 0o777 == 0o700
