"""The Docker engine client without a VM: an engine that does not answer, specs refused
before any request, and TLS against a small local engine whose certificate engines/pki.py
made, as production's are (the VM-unique name only)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dockvisor import errors
from dockvisor.domain.model import DockerEndpoint
from dockvisor.domain.sizes import MiB
from dockvisor.engines.docker import (
    ContainerSpec,
    DockerEngine,
    EngineCertificateError,
    EngineError,
    EngineUnavailable,
)
from dockvisor.engines.pki import EnginePKI
from dockvisor.errors import InvalidInput


def spec(command: list[str] | None = None, **changes: Any) -> ContainerSpec:
    image = changes.pop("image", "busybox:latest")
    return ContainerSpec(image=image, command=command, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ports": [(0, 80)]}, "invalid host port 0: ports are 1 to 65535"),
        ({"ports": [(8080, 65536)]}, "invalid container port 65536"),
        ({"ports": [(8080, 80, "sctp")]}, "invalid protocol 'sctp': use tcp or udp"),
        ({"ports": [(8080,)]}, "give \\(host_port, container_port"),
        ({"cpus": 0}, "cpus must be more than 0, not 0"),
        ({"cpus": -1.5}, "cpus must be more than 0"),
        ({"memory": 4 * MiB}, "a memory limit must be at least 6 MiB"),
        ({"restart_policy": "sometimes"}, "invalid restart policy 'sometimes'"),
        ({"restart_policy": "on-failure:x"}, "invalid restart policy"),
        ({"name": "-web"}, "invalid container name '-web'"),
        ({"name": "a"}, "invalid container name 'a'"),
        ({"name": "web server"}, "invalid container name"),
        ({"volumes": ["/src:relative"]}, "the target must be an absolute path"),
        ({"volumes": ["/src:/dst:rx"]}, "the mode is ro or rw"),
        ({"volumes": ["bad name:/dst"]}, "the source is an absolute path or a volume name"),
        ({"command": "sleep 10"}, "give the command as a list"),
        ({"env": {"A=B": "c"}}, "invalid environment variable name 'A=B'"),
        ({"image": ""}, "a container needs an image"),
    ],
)
def test_unusable_specs_are_refused_before_any_request(
    changes: dict[str, Any], message: str, unreachable: DockerEngine
) -> None:
    # The engine does not answer: any request would be EngineUnavailable, not InvalidInput.
    unusable = spec(**{"command": ["true"], **changes})
    with pytest.raises(InvalidInput, match=message):
        unreachable.run(unusable)
    with pytest.raises(InvalidInput, match=message):
        unreachable.create_container(unusable)


# -- the engine does not answer ------------------------------------------------------


@pytest.fixture
def unreachable() -> Iterator[DockerEngine]:
    """An engine nobody listens for."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with DockerEngine(DockerEndpoint("127.0.0.1", port), timeout=5) as engine:
        yield engine


def test_an_engine_that_does_not_answer(unreachable: DockerEngine) -> None:
    assert not unreachable.ping()
    with pytest.raises(EngineUnavailable, match=r"does not answer") as refused:
        unreachable.containers()
    assert isinstance(refused.value, errors.EngineUnavailable)  # 503 in the API
    assert isinstance(refused.value, EngineError)
    with pytest.raises(EngineUnavailable, match=r"does not answer"):
        unreachable.exec_socket("web", ["sh"])
    with pytest.raises(EngineUnavailable, match=r"does not answer"):
        unreachable.events()


# -- TLS: the engine must carry the expected name ------------------------------------


@dataclass
class TLSFiles:
    """An engine identity made by engines/pki.py, as production makes it."""

    pki: EnginePKI
    server_name: str
    server_context: ssl.SSLContext

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        if with_certificate:
            return self.pki.client_context()
        return ssl.create_default_context(cafile=self.pki.client.ca)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """dockvisor's PKI and one engine certificate (its VM-unique name only)."""
    tmp = tmp_path_factory.mktemp("tls")
    pki = EnginePKI(tmp / "pki")
    issued = pki.issue_server()
    (tmp / "cert.pem").write_bytes(issued.cert_pem)
    (tmp / "key.pem").write_bytes(issued.key_pem)
    (tmp / "clients-ca.pem").write_bytes(issued.client_ca_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp / "clients-ca.pem")
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as dockerd --tlsverify
    return TLSFiles(pki, issued.server_name, context)


class _FakeEngine(BaseHTTPRequestHandler):
    """Just enough of the Engine API: ping, version, an exec that says hi."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1.41/_ping":
            self._answer(200, b"OK")
        elif self.path == "/v1.41/version":
            self._answer(200, {"Version": "fake"})
        else:
            self._answer(404, {"message": "page not found"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1.41/containers/web/exec":
            self._answer(201, {"Id": "e1"})
        elif self.path == "/v1.41/exec/e1/start" and self.headers.get("Upgrade") == "tcp":
            self.wfile.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n")
            self.wfile.write(b"\r\nhi from exec\n")
            self.close_connection = True
        elif self.path == "/v1.41/containers/cat/exec":
            self._answer(201, {"Id": "e2"})
        elif self.path == "/v1.41/exec/e2/start" and self.headers.get("Upgrade") == "tcp":
            # like dockerd: echo stdin until the client's close_notify, then answer more
            self.wfile.write(
                b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            )
            while data := self.rfile.read1(65536):
                self.wfile.write(data)
            self.wfile.write(b"[stdin ended]")
            self.close_connection = True
        else:
            self._answer(404, {"message": "page not found"})


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles) -> Iterator[int]:
    """A local TLS engine with the certificate of tls_files.server_name; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEngine)
    server.daemon_threads = True
    server.socket = tls_files.server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _tls_engine(port: int, server_name: str | None, context: ssl.SSLContext) -> DockerEngine:
    endpoint = DockerEndpoint("127.0.0.1", port, tls=True, server_name=server_name)
    return DockerEngine(endpoint, ssl_context=context, timeout=5)


def test_tls_accepts_the_engine_named_in_its_certificate(
    tls_server: int, tls_files: TLSFiles
) -> None:
    with _tls_engine(tls_server, tls_files.server_name, tls_files.client_context()) as engine:
        assert engine.ping()
        assert engine.version() == {"Version": "fake"}
        assert engine.wait_until_ready(5) < 1
        with engine.exec_socket("web", ["sh"]) as session:
            assert isinstance(session.sock, socket.socket)  # TLS runs in memory on top
            assert not isinstance(session.sock, ssl.SSLSocket)
            assert session.exec_id == "e1"
            assert session.read_all() == b"hi from exec\n"


def test_tls_exec_half_close_ends_stdin_and_the_output_still_comes(
    tls_server: int, tls_files: TLSFiles
) -> None:
    data = bytes(range(256)) * 800  # 200 KB: more than any buffer on the way holds
    with _tls_engine(tls_server, tls_files.server_name, tls_files.client_context()) as engine:
        with engine.exec_socket("cat", ["cat"], tty=False) as session:
            session.sock.settimeout(10)

            def feed() -> None:  # stdin from another thread while this one reads
                for start in range(0, len(data), 7000):
                    session.sendall(data[start : start + 7000])
                session.close_write()
                session.close_write()  # again: nothing more happens

            writer = threading.Thread(target=feed)
            writer.start()
            output = session.read_all()
            writer.join()
            assert output == data + b"[stdin ended]"
            with pytest.raises(BrokenPipeError):
                session.sendall(b"too late")


@pytest.mark.parametrize("server_name", ["y.vm.dockvisor", None], ids=["other-name", "address"])
def test_tls_refuses_an_engine_with_another_name(
    tls_server: int, tls_files: TLSFiles, server_name: str | None
) -> None:
    expected = server_name or "127.0.0.1"
    with _tls_engine(tls_server, server_name, tls_files.client_context()) as engine:
        assert not engine.ping()
        with pytest.raises(EngineCertificateError, match=f"is not the engine '{expected}'"):
            engine.version()
        started = time.monotonic()
        with pytest.raises(EngineCertificateError):  # at once, not after the timeout
            engine.wait_until_ready(30)
        assert time.monotonic() - started < 5
        with pytest.raises(EngineCertificateError):
            engine.events()
        # the hijacked exec connection checks the name the same way
        with pytest.raises(EngineCertificateError, match="Hostname mismatch|IP address mismatch"):
            engine._connect("attaching")


def test_tls_without_a_client_certificate_is_refused_by_the_engine(
    tls_server: int, tls_files: TLSFiles
) -> None:
    context = tls_files.client_context(with_certificate=False)
    with _tls_engine(tls_server, tls_files.server_name, context) as engine:
        with pytest.raises(EngineUnavailable) as refused:
            engine.version()
    assert not isinstance(refused.value, EngineCertificateError)


def test_tls_needs_a_context_that_checks_names(tls_files: TLSFiles) -> None:
    endpoint = DockerEndpoint("127.0.0.1", 1, tls=True, server_name=tls_files.server_name)
    with pytest.raises(ValueError, match="an ssl_context is needed"):
        DockerEngine(endpoint)
    lax = tls_files.client_context()
    lax.check_hostname = False
    with pytest.raises(ValueError, match="must verify certificates and their names"):
        DockerEngine(endpoint, ssl_context=lax)
