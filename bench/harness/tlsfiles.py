"""Test certificates for the TLS scenarios, made at run time in the harness's
private temporary folder with the `cryptography` package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import LOOPBACK


class TLSFiles:
    """Test certificates made at run time: a CA, a server certificate for
    127.0.0.1/localhost and a client certificate, all ECDSA P-256, valid one day."""

    KEY = "ECDSA P-256"

    def __init__(self, d: Path, mutual: bool) -> None:
        self.dir, self.mutual = d, mutual
        self.ca = d / "ca.pem"
        self.server_cert, self.server_key = d / "server.pem", d / "server.key"
        self.client_cert, self.client_key = d / "client.pem", d / "client.key"

    def make(self) -> None:
        """Write the CA, the server's and the client's certificates and keys."""
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir.mkdir(mode=0o700, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        before, after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(k: ec.EllipticCurvePrivateKey, path: Path) -> None:
            path.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("mytimerd bench CA"))
            .issuer_name(name("mytimerd bench CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

        def leaf(cn: str, san: list[x509.GeneralName], usage: Any, cert: Path, key: Path) -> None:
            k = ec.generate_private_key(ec.SECP256R1())
            c = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(ca.subject)
                .public_key(k.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(before)
                .not_valid_after(after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
                .sign(ca_key, hashes.SHA256())
            )
            cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
            write_key(k, key)

        leaf(
            "localhost",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))],
            ExtendedKeyUsageOID.SERVER_AUTH,
            self.server_cert,
            self.server_key,
        )
        leaf(
            "mytimerd-bench-client",
            [x509.DNSName("mytimerd-bench-client")],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            self.client_cert,
            self.client_key,
        )

    def server_args(self) -> list[str]:
        """The daemon's TLS options."""
        a = ["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)]
        return a + (["--tls-client-ca", str(self.ca)] if self.mutual else [])

    def client_args(self) -> list[str]:
        """loadgen's TLS options."""
        a = ["--tls", "--tls-ca", str(self.ca)]
        if self.mutual:
            a += ["--tls-cert", str(self.client_cert), "--tls-key", str(self.client_key)]
        return a
