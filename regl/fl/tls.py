"""`regl deploy`'s locks: TLS for every connection to the SuperLink, and a key pair per SuperNode.

Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs over one HTTPS port and
checks the certificate's host name, so the server certificate must name 127.0.0.1 (the
SuperLink's own executor connects there, on a real machine too). A SuperNode proves who it
is with an elliptic-curve key in OpenSSH form whose public half was registered with
`flwr supernode register`; a node whose key was not is refused. For a trial on loopback
`trial_credentials` makes a throwaway CA, a server certificate and the node keys;
`given_credentials` takes an operator's own certificate files and checks them first.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from regl.errors import ReglError

LOOPBACK = ipaddress.ip_address("127.0.0.1")
TRIAL_DAYS = 7


@dataclass(frozen=True)
class Credentials:
    ca: Path  # the CA certificate clients verify the SuperLink's against
    certificate: Path  # the SuperLink's certificate (PEM; a chain after it is allowed)
    key: Path  # its private key (PEM, unencrypted)
    trial: bool  # made here for a loopback trial, not given by the operator


def _write_private(path: Path, content: bytes) -> None:
    """A private key, readable by its owner only from the moment it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(content)


def trial_credentials(folder: Path) -> Credentials:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, valid TRIAL_DAYS days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())

    def certificate(subject: str, public_key, issuer: x509.Name) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=TRIAL_DAYS))
        )

    ca = (
        certificate("regl trial CA", ca_key.public_key(), name("regl trial CA"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # certificate and CRL signing only
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        certificate("127.0.0.1", server_key.public_key(), ca.subject)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK), x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    credentials = Credentials(folder / "ca.pem", folder / "server.pem", folder / "server.key", trial=True)
    credentials.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    credentials.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(
        credentials.key,
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return credentials


def given_credentials(ca: str, certificate: str, key: str) -> Credentials:
    """The operator's files, checked before anything starts: they exist, parse, and the certificate names
    127.0.0.1 (where the SuperLink's executor and the loopback nodes connect)."""
    from cryptography import x509

    paths = [Path(p) for p in (ca, certificate, key)]
    for flag, path in zip(("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"), paths, strict=True):
        if not path.is_file():
            raise ReglError(f"{flag} {path}: no such file")
    try:
        server = x509.load_pem_x509_certificate(paths[1].read_bytes())
        x509.load_pem_x509_certificate(paths[0].read_bytes())
    except ValueError as exc:
        raise ReglError(f"--ssl-certfile or --ssl-ca-certfile is not a PEM certificate: {exc}") from exc
    try:
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is None or LOOPBACK not in names.get_values_for_type(x509.IPAddress):
        raise ReglError(
            f"--ssl-certfile {paths[1]} does not name 127.0.0.1 among its subject alternative names: the SuperLink's "
            "own executor connects there, and Flower checks the name"
        )
    return Credentials(*(path.resolve() for path in paths), trial=False)


def node_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair in OpenSSH form (`ssh-keygen -t ecdsa -b 384` makes the same): the private key
    it signs its requests with, and the public key the operator registers."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


def key_fingerprint(public: Path) -> str:
    """A public key as `ssh-keygen -l` names it: SHA256 of its blob, base64 without padding."""
    import base64
    import hashlib

    blob = base64.b64decode(public.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
