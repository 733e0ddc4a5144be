"""dockvisor's engine PKI: two CAs, names checked, keys private; a real TLS handshake on
127.0.0.1 between a server using a VM's certificate and dockvisor's client."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from dockvisor.engines.pki import ENGINE_DOMAIN, EnginePKI, ServerCertificate


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_engine_gets_its_own_name_signed_by_the_servers_ca(tmp_path: Path) -> None:
    pki = EnginePKI(tmp_path / "pki")
    a, b = pki.issue_server(), pki.issue_server()
    assert a.server_name != b.server_name and a.server_name.endswith("." + ENGINE_DOMAIN)
    cert = _cert(a.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Only its own name: no name (localhost, a loopback address) that two engines share.
    assert list(names) == [x509.DNSName(a.server_name)]
    other = _cert(b.cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not set(names) & set(other.value)
    assert _usage(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    servers_ca = _cert((tmp_path / "pki/servers-ca.pem").read_bytes())
    assert cert.issuer == servers_ca.subject
    # The engine trusts the clients CA, a different one.
    assert _cert(a.client_ca_pem).subject != servers_ca.subject


def test_dockvisors_client_certificate_is_for_clients_only(tmp_path: Path) -> None:
    pki = EnginePKI(tmp_path / "pki")
    pki.ensure()
    client = _cert(pki.client.cert.read_bytes())
    assert _usage(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.issuer == _cert((tmp_path / "pki/clients-ca.pem").read_bytes()).subject


def test_keys_are_private_and_the_authorities_are_kept(tmp_path: Path) -> None:
    pki = EnginePKI(tmp_path / "pki")
    pki.ensure()
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    for key in ("servers-ca-key.pem", "clients-ca-key.pem", "client/key.pem"):
        assert stat.S_IMODE((tmp_path / "pki" / key).stat().st_mode) == 0o600, key
    before = (tmp_path / "pki/servers-ca.pem").read_bytes()
    again = EnginePKI(tmp_path / "pki")
    again.issue_server()
    assert (tmp_path / "pki/servers-ca.pem").read_bytes() == before


def _serve_once(server: ServerCertificate, tmp: Path) -> tuple[int, threading.Thread, list[str]]:
    """A TLS server like dockerd --tlsverify, for one connection; its port."""
    (tmp / "cert.pem").write_bytes(server.cert_pem)
    (tmp / "key.pem").write_bytes(server.key_pem)
    (tmp / "ca.pem").write_bytes(server.client_ca_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp / "ca.pem")
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: list[str] = []

    def run() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"OK")
                outcome.append("served")
        except (ssl.SSLError, OSError) as exc:
            outcome.append(f"refused: {exc}")
        finally:
            listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, outcome


def _talk(context: ssl.SSLContext, port: int, name: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.recv(2)


def test_mutual_tls_accepts_dockvisor_and_refuses_others(tmp_path: Path) -> None:
    pki = EnginePKI(tmp_path / "pki")
    server = pki.issue_server()

    port, thread, outcome = _serve_once(server, tmp_path)
    assert _talk(pki.client_context(), port, server.server_name) == b"OK"
    thread.join(5)
    assert outcome == ["served"]

    # Another VM's name: dockvisor refuses the engine.
    port, thread, outcome = _serve_once(server, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _talk(pki.client_context(), port, "someone-else." + ENGINE_DOMAIN)
    thread.join(5)

    # The address dialled, as the stock docker CLI would check it: no engine has it.
    for name in ("127.0.0.1", "localhost", "::1"):
        port, thread, outcome = _serve_once(server, tmp_path)
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            _talk(pki.client_context(), port, name)
        thread.join(5)

    # A client of another dockvisor (another clients CA): the engine refuses it.
    other = EnginePKI(tmp_path / "other")
    other.ensure()
    port, thread, outcome = _serve_once(server, tmp_path)
    stranger = ssl.create_default_context(cafile=pki.client.ca)
    stranger.load_cert_chain(other.client.cert, other.client.key)
    with pytest.raises((ssl.SSLError, OSError)):
        _talk(stranger, port, server.server_name)
    thread.join(5)
    assert outcome[0].startswith("refused")
