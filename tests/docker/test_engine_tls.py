"""The engine in a real VM speaks only mutual TLS, and only to dockvisor's client."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from dockvisor.domain.model import DockerEndpoint
from dockvisor.engines.pki import EnginePKI
from dockvisor.guest.config_drive import read_config_drive
from tests.docker.conftest import DockerStack

pytestmark = pytest.mark.vm

PING = b"GET /_ping HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n"


def _endpoint(stack: DockerStack) -> DockerEndpoint:
    return stack.cp.hosts.driver(1).docker_endpoint(stack.vm_name)


def _ping(endpoint: DockerEndpoint, context: ssl.SSLContext, name: str | None = None) -> bytes:
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name or endpoint.server_name) as tls:
            tls.sendall(PING)
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
            return answer


def _client_context(pki: EnginePKI, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.client.ca)
    context.load_cert_chain(cert, key)
    return context


def test_dockvisors_client_is_answered(stack: DockerStack) -> None:
    endpoint = _endpoint(stack)
    assert endpoint.tls and endpoint.host == "127.0.0.1"
    answer = _ping(endpoint, stack.cp.engines.pki.client_context())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"OK")


def test_a_client_without_a_certificate_is_refused(stack: DockerStack) -> None:
    endpoint = _endpoint(stack)
    bare = ssl.create_default_context(cafile=stack.cp.engines.pki.client.ca)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _ping(endpoint, bare)


def test_a_client_of_another_ca_is_refused(stack: DockerStack, tmp_path: Path) -> None:
    other = EnginePKI(tmp_path / "other")
    other.ensure()
    context = _client_context(stack.cp.engines.pki, other.client.cert, other.client.key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _ping(_endpoint(stack), context)


def test_another_vms_server_certificate_is_no_client_certificate(
    stack: DockerStack, tmp_path: Path
) -> None:
    # What a VM's owner can read in their VM: their engine's own certificate and key.
    pki = stack.cp.engines.pki
    server = pki.issue_server()
    (tmp_path / "cert.pem").write_bytes(server.cert_pem)
    (tmp_path / "key.pem").write_bytes(server.key_pem)
    context = _client_context(pki, tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _ping(_endpoint(stack), context)


def test_dockvisor_refuses_an_engine_with_another_vms_name(stack: DockerStack) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _ping(_endpoint(stack), stack.cp.engines.pki.client_context(), "other.vm.dockvisor")


def test_plain_http_gets_no_docker_answer(stack: DockerStack) -> None:
    endpoint = _endpoint(stack)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as raw:
        raw.sendall(PING)
        answer = raw.recv(4096)
    assert b"Api-Version" not in answer and b"OK" not in answer.split(b"\r\n")[-1]


def test_the_vm_got_its_identity_on_a_config_drive(stack: DockerStack) -> None:
    driver = stack.cp.hosts.driver(1)
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        xml = conn.lookupByName(stack.vm_name).XMLDesc(0)
    assert "cidata.iso" in xml and "<readonly/>" in xml
    drive = next(
        line.split("'")[1] for line in xml.splitlines() if "cidata.iso" in line and "source" in line
    )
    files = read_config_drive(Path(drive).read_bytes())
    assert files["dockvisor/engine/server-name"].decode().strip() == _endpoint(stack).server_name
    assert "dockvisor/engine/key.pem" in files
    # dockvisor's own client key never goes to a VM.
    client_key = stack.cp.engines.pki.client.key.read_bytes()
    assert all(client_key not in data for data in files.values())
