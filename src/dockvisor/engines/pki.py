"""dockvisor's certificate authorities for the Docker engines inside its VMs.

Two authorities, kept in one directory of the data dir (keys 0600, directory 0700):

- the *servers* CA signs one certificate per VM engine, for the name
  `<random>.vm.dockvisor` and no other (no localhost, no loopback address: those would
  be names every engine shares, and a client that checks one of them would accept
  whichever VM answers on a reused port); dockvisor trusts only this CA for engines and
  checks that name, so a VM cannot pose as another VM's engine even if it answers on
  its port. The stock docker CLI checks the name of the address it dials, so it cannot
  check this one on a host port: it goes through the engine gateway, which does;
- the *clients* CA signs dockvisor's own client certificate, and is the only CA the
  guests' dockerd (`--tlsverify`) accepts clients from.

The split matters because a VM's owner can read their engine's server key (it is in
their VM): with one CA that key would be a client certificate for every other engine.
Keys are ECDSA P-256: cheap to make (a VM's certificate takes ~1 ms) and to handshake
with under software emulation.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ENGINE_DOMAIN", "EngineCredentials", "EnginePKI", "ServerCertificate"]

ENGINE_DOMAIN = "vm.dockvisor"
_CA_YEARS = 20
_LEAF_YEARS = 10


@dataclass(frozen=True)
class ServerCertificate:
    """What a VM's engine gets: its certificate and key, and the CA of its clients."""

    server_name: str
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes


@dataclass(frozen=True)
class EngineCredentials:
    """File paths in the layout the docker CLI expects in DOCKER_CERT_PATH."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _Authority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dockvisor"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])  # fmt: skip
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * _CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),  # fmt: skip
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> _Authority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        *,
        usage: x509.ObjectIdentifier,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """A leaf certificate and key (PEM) for one purpose: server or client auth."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * _LEAF_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),  # fmt: skip
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


class EnginePKI:
    """The authorities in `directory`, made on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._servers: _Authority | None = None
        self._clients: _Authority | None = None
        self._context: ssl.SSLContext | None = None

    # -- files -----------------------------------------------------------------------

    def _ca_paths(self, which: str) -> tuple[Path, Path]:
        return self.directory / f"{which}-ca.pem", self.directory / f"{which}-ca-key.pem"

    @property
    def client(self) -> EngineCredentials:
        """dockvisor's own client files: ca.pem is the servers CA, as DOCKER_CERT_PATH
        wants it."""
        return EngineCredentials(self.directory / "client")

    def ensure(self) -> None:
        """Create whatever is missing: both CAs and dockvisor's client certificate."""
        with self._lock:
            if self._servers is not None and self._clients is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.directory, 0o700)
            self._servers = self._authority("servers", "dockvisor engine servers CA")
            self._clients = self._authority("clients", "dockvisor engine clients CA")
            client = self.client
            if not (client.cert.exists() and client.key.exists() and client.ca.exists()):
                client.directory.mkdir(exist_ok=True, mode=0o700)
                cert, key = self._clients.issue("dockvisor", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
                _write_private(client.key, key)
                client.cert.write_bytes(cert)
                client.ca.write_bytes(_cert_pem(self._servers.cert))

    def _authority(self, which: str, common_name: str) -> _Authority:
        cert_path, key_path = self._ca_paths(which)
        if cert_path.exists() and key_path.exists():
            return _Authority.load(cert_path, key_path)
        authority = _Authority.create(common_name)
        _write_private(key_path, _key_pem(authority.key))
        cert_path.write_bytes(_cert_pem(authority.cert))
        return authority

    # -- use -------------------------------------------------------------------------

    def issue_server(self) -> ServerCertificate:
        """A fresh identity for one VM's engine, under a name nobody else has, and only
        that name."""
        self.ensure()
        assert self._servers is not None and self._clients is not None
        server_name = f"{secrets.token_hex(8)}.{ENGINE_DOMAIN}"
        cert, key = self._servers.issue(
            server_name, usage=ExtendedKeyUsageOID.SERVER_AUTH, dns=(server_name,)
        )
        return ServerCertificate(server_name, cert, key, _cert_pem(self._clients.cert))

    def client_context(self) -> ssl.SSLContext:
        """The TLS context dockvisor's engine client uses: trusts only the servers CA,
        presents dockvisor's client certificate, checks the server's name."""
        self.ensure()
        with self._lock:
            if self._context is None:
                client = self.client
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=client.ca)
                context.load_cert_chain(client.cert, client.key)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                self._context = context
            return self._context
