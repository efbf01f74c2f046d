"""`regl deploy`'s TLS material and node keys, checked the way Flower's clients and SuperLink read them."""

import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from regl.errors import ReglError
from regl.fl.tls import given_credentials, key_fingerprint, node_key_pair, trial_credentials


def test_the_trial_server_certificate_verifies_against_its_ca_for_127_0_0_1(tmp_path):
    credentials = trial_credentials(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(credentials.certificate, credentials.key)  # what uvicorn does with them
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what Flower's SuperNode and CLI do
    client.load_verify_locations(cadata=credentials.ca.read_text())
    certificate = x509.load_pem_x509_certificate(credentials.certificate.read_bytes())
    ca = x509.load_pem_x509_certificate(credentials.ca.read_bytes())
    certificate.verify_directly_issued_by(ca)
    assert stat.S_IMODE(credentials.key.stat().st_mode) == 0o600
    assert given_credentials(str(credentials.ca), str(credentials.certificate), str(credentials.key)).ca.is_absolute()


def test_a_given_certificate_without_127_0_0_1_or_a_missing_file_is_refused(tmp_path):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    credentials = trial_credentials(tmp_path)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "link.example.org")])
    elsewhere = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(x509.load_pem_x509_certificate(credentials.ca.read_bytes()).not_valid_before_utc)
        .not_valid_after(x509.load_pem_x509_certificate(credentials.ca.read_bytes()).not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("link.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "elsewhere.pem").write_bytes(elsewhere.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ReglError, match="does not name 127.0.0.1"):
        given_credentials(str(credentials.ca), str(tmp_path / "elsewhere.pem"), str(credentials.key))
    with pytest.raises(ReglError, match="--ssl-keyfile .*: no such file"):
        given_credentials(str(credentials.ca), str(credentials.certificate), str(tmp_path / "nope.key"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ReglError, match="not a PEM certificate"):
        given_credentials(str(tmp_path / "junk.pem"), str(credentials.certificate), str(credentials.key))


def test_node_keys_are_openssh_ec_keys_on_a_nist_curve(tmp_path):
    private, public = node_key_pair(tmp_path, "supernode-0")
    key = load_ssh_private_key(private.read_bytes(), password=None)  # as flower-supernode loads it
    registered = load_ssh_public_key(public.read_bytes())  # as `flwr supernode register` loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(registered.curve, ec.SECP384R1)
    assert key.public_key().public_numbers() == registered.public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_fingerprint(public).startswith("SHA256:") and len(key_fingerprint(public)) == 50
    other = node_key_pair(tmp_path, "supernode-1")[1]
    assert key_fingerprint(other) != key_fingerprint(public)
