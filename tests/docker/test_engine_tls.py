"""The engine in a real VM speaks only mutual TLS, and only to dockvisor's client."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from dockvisor.domain.model import DockerEndpoint
from dockvisor.engines.pki import EnginePKI
from dockvisor.guest.config_drive import read_config_drive
from tests.docker.conftest import DockerStack
from tests.docker_cli import docker_cli

pytestmark = pytest.mark.vm

PING = b"GET /_ping HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n"


def _endpoint(stack: DockerStack) -> DockerEndpoint:
    return stack.cp.hosts.driver(1).docker_endpoint(stack.vm_name)


def _ping(endpoint: DockerEndpoint, context: ssl.SSLContext, name: str | None = None) -> bytes:
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as raw:
        # An engine that hangs up without a TLS close is a failure, not an empty answer.
        with context.wrap_socket(raw, server_hostname=name or endpoint.server_name,
                                 suppress_ragged_eofs=False) as tls:  # fmt: skip
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


def test_the_engine_certificate_names_only_its_vm(stack: DockerStack) -> None:
    endpoint = _endpoint(stack)
    assert endpoint.server_name and endpoint.server_name.endswith(".vm.dockvisor")
    for name in ("127.0.0.1", "localhost"):  # names every VM would share
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            _ping(endpoint, stack.cp.engines.pki.client_context(), name)


def test_the_stock_cli_straight_at_the_host_port_checks_nothing_so_it_is_not_offered(
    stack: DockerStack,
) -> None:
    endpoint = _endpoint(stack)
    env = {
        **os.environ,
        "DOCKER_HOST": f"tcp://127.0.0.1:{endpoint.port}",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(stack.cp.engines.pki.client.directory),
    }
    env.pop("DOCKER_CONTEXT", None)
    out = subprocess.run([docker_cli(), "version", "--format", "{{.Server.Version}}"],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    # The CLI checks the address it dials, which no engine certificate names.
    assert out.returncode != 0 and "x509" in out.stderr, out.stderr
    # `vm endpoint` on the host says what to do instead.
    dockvisor = str(Path(sys.executable).with_name("dockvisor"))
    local = {k: v for k, v in os.environ.items() if not k.startswith("DOCKVISOR_")}
    out = subprocess.run([dockvisor, "vm", "endpoint", stack.vm_name],
                         env={**local, "DOCKVISOR_DATA_DIR": stack.data_dir},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert "engine gateway" in out.stderr and "dockvisor serve" in out.stderr, out.stderr
