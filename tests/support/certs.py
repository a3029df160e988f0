"""Certificates made by the tests: a CA, a server certificate for localhost
and 127.0.0.1, client certificates (good, from another CA, expired)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass
class Authority:
    """A CA that issues certificates into ``folder``."""

    folder: Path
    name: str

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.folder / f"{self.name}-ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
        expired: bool = False,
    ) -> Issued:
        """A leaf certificate for ``common_name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        if expired:
            start, end = NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=1)
        else:
            start, end = NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=10)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}{'-expired' if expired else ''}"
        issued = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        issued.key.chmod(0o600)
        return issued


@dataclass
class PKI:
    """Everything the TLS tests need."""

    ca: Authority
    other_ca: Authority
    server: Issued
    alice: Issued
    stranger: Issued
    expired: Issued

    def daemon_args(self) -> list[str]:
        """mytimerd options for mutual TLS with this PKI."""
        return [
            "--tls-cert",
            str(self.server.cert),
            "--tls-key",
            str(self.server.key),
            "--tls-client-ca",
            str(self.ca.pem),
        ]


def make_pki(folder: Path, server_ips: tuple[str, ...] = ()) -> PKI:
    """A fresh PKI in ``folder``; the server certificate names localhost,
    the loopback addresses and ``server_ips``."""
    ca = Authority(folder, "main")
    other = Authority(folder, "other")
    ips = ("127.0.0.1", "::1", *server_ips)
    return PKI(
        ca=ca,
        other_ca=other,
        server=ca.issue("localhost", dns=("localhost",), ips=ips, server=True),
        alice=ca.issue("alice", dns=("alice.example",)),
        stranger=other.issue("alice", dns=("alice.example",)),
        expired=ca.issue("old-alice", expired=True),
    )
