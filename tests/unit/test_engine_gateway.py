"""The engine gateway between the docker CLI and a VM's engine, against a fake TLS engine.

The fake engine is a threaded HTTP/1.1 server on blocking TLS sockets with mutual TLS,
as dockerd is: it half-closes the way Go does (recv() gives b"" on the peer's
close_notify, and sending still works). Only 127.0.0.1 traffic.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dockvisor import errors
from dockvisor.api import engine_gateway
from dockvisor.api.engine_gateway import EngineGateway, EngineRoute

pytestmark = pytest.mark.timeout(30)

DOCKER = "/usr/local/bin/docker"
TOKEN = "dv_s3cret-token"

# ---------------------------------------------------------------------------------------
# A throwaway CA, an engine certificate and a client certificate.


@dataclass(frozen=True)
class Pki:
    server: ssl.SSLContext  # the engine's: requires a client certificate
    client: ssl.SSLContext  # dockvisor's: verifies the engine as "engine"


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, ca=True)
    ca_name = ca.subject

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (where / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (where / f"{stem}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    write("ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("engine"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    write("server", _cert("engine", server_key, ca_name, ca_key, names=names), server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", _cert("dockvisor", client_key, ca_name, ca_key), client_key)

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(where / "server.pem", where / "server-key.pem")
    server.load_verify_locations(where / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(where / "ca.pem"))
    client.load_cert_chain(where / "client.pem", where / "client-key.pem")
    return Pki(server=server, client=client)


# ---------------------------------------------------------------------------------------
# The fake engine.


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    connection: int


def _frame(data: bytes, stream: int = 1) -> bytes:
    """One frame of Docker's multiplexed (non-TTY) attach stream."""
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


class FakeEngine:
    UPLOAD_SIGNAL = 1 << 20  # bytes of an upload after which `upload_started` is set

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.seen: list[Seen] = []
        self.connections = 0
        self.release = threading.Event()  # lets the second event of /events out
        self.upload_started = threading.Event()
        self.stdin_ended = threading.Event()
        self.drop_reused = False  # drop the next request that comes on a used connection
        self.wait_abandoned = threading.Event()  # the gateway closed a pending `wait`
        self.close_when_idle = False  # close each connection after one answer, as Go does
        self.ran = threading.Event()  # the `run` container "exited"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(raw, number), daemon=True).start()

    def _serve(self, raw: socket.socket, number: int) -> None:
        raw.settimeout(10)
        try:
            sock = self._context.wrap_socket(raw, server_side=True) if self._context else raw
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                event = self._next(conn, sock)
                if not isinstance(event, h11.Request):
                    return
                seen = Seen(
                    event.method.decode(),
                    event.target.decode(),
                    {k.decode(): v.decode() for k, v in event.headers},
                    number,
                )
                self.seen.append(seen)
                served += 1
                if served > 1 and self.drop_reused:
                    self.drop_reused = False
                    self._body(conn, sock)
                    return
                if not self._handle(conn, sock, seen):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                if self.close_when_idle:  # TLS close_notify, then FIN
                    time.sleep(0.05)
                    if isinstance(sock, ssl.SSLSocket):
                        sock.settimeout(0.05)
                        with contextlib.suppress(OSError, ValueError):
                            sock.unwrap()
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            sock.close()

    @staticmethod
    def _next(conn: h11.Connection, sock: socket.socket) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(sock.recv(65536))

    def _body(self, conn: h11.Connection, sock: socket.socket) -> tuple[int, str]:
        size, digest = 0, hashlib.sha256()
        while True:
            event = self._next(conn, sock)
            if isinstance(event, h11.Data):
                size += len(event.data)
                digest.update(event.data)
                if size >= self.UPLOAD_SIGNAL:
                    self.upload_started.set()
            elif isinstance(event, h11.EndOfMessage):
                return size, digest.hexdigest()
            else:
                raise OSError("request body cut short")

    @staticmethod
    def _send(
        conn: h11.Connection,
        sock: socket.socket,
        status: int,
        payload: object,
        headers: list[tuple[str, str]] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        head = [("Content-Type", "application/json"), ("Api-Version", "1.41")]
        head += [("Content-Length", str(len(body)))] + (headers or [])
        out = conn.send(h11.Response(status_code=status, headers=head)) or b""
        if not head_only:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        sock.sendall(out)

    def _handle(self, conn: h11.Connection, sock: socket.socket, seen: Seen) -> bool:
        size, digest = self._body(conn, sock)
        path = seen.target.partition("?")[0]
        route = (seen.method, path)
        if path == "/_ping":
            ping = [("Content-Type", "text/plain")]
            self._send(conn, sock, 200, b"OK", ping, head_only=seen.method == "HEAD")
        elif route == ("GET", "/v1.41/version"):
            self._send(
                conn,
                sock,
                200,
                {
                    "Version": "20.10.24",
                    "ApiVersion": "1.41",
                    "MinAPIVersion": "1.12",
                    "Os": "linux",
                    "Arch": "amd64",
                    "GitCommit": "fake",
                    "GoVersion": "go1.18",
                    "KernelVersion": "6.1",
                    "BuildTime": "now",
                },
            )
        elif route == ("GET", "/v1.41/containers/json"):
            self._send(conn, sock, 200, [])
        elif route == ("GET", "/v1.41/containers/web/json"):
            self._send(
                conn,
                sock,
                200,
                {
                    "Id": "c0ffee",
                    "Name": "/web",
                    "State": {"Status": "running", "Running": True},
                    "Config": {"Tty": False},
                },
            )
        elif route == ("POST", "/v1.41/containers/web/exec"):
            self._send(conn, sock, 201, {"Id": "abc"})
        elif route == ("GET", "/v1.41/exec/abc/json"):
            self._send(conn, sock, 200, {"ID": "abc", "Running": False, "ExitCode": 0})
        elif route == ("POST", "/v1.41/exec/abc/start"):
            self._hijack(conn, sock)
            return False
        elif route == ("GET", "/v1.41/events"):
            head = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
            sock.sendall(conn.send(h11.Response(status_code=200, headers=head)) or b"")
            sock.sendall(conn.send(h11.Data(data=b'{"status":"start"}\n')) or b"")
            self.release.wait(5)
            sock.sendall(conn.send(h11.Data(data=b'{"status":"die"}\n')) or b"")
            sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        elif route == ("POST", "/v1.41/containers/create"):
            self._send(conn, sock, 201, {"Id": "c0ffee", "Warnings": []})
        elif route == ("POST", "/v1.41/containers/c0ffee/attach"):
            switch = h11.InformationalResponse(
                status_code=101,
                headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")],
                reason=b"UPGRADED",
            )
            sock.sendall(conn.send(switch) or b"")
            time.sleep(0.1)  # the container starts, says hello and exits
            sock.sendall(_frame(b"hello from run\n") + _frame(b"to stderr\n", stream=2))
            self.ran.set()
            return False
        elif route == ("POST", "/v1.41/containers/c0ffee/start"):
            sock.sendall(
                (conn.send(h11.Response(status_code=204, headers=[])) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
        elif route == ("POST", "/v1.41/containers/c0ffee/wait"):
            head = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
            sock.sendall(conn.send(h11.Response(status_code=200, headers=head)) or b"")
            self.ran.wait(5)
            time.sleep(0.05)
            status = json.dumps({"StatusCode": 3}).encode() + b"\n"
            sock.sendall(
                (conn.send(h11.Data(data=status)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            )
        elif route == ("POST", "/v1.41/containers/web/wait"):
            head = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
            sock.sendall(conn.send(h11.Response(status_code=200, headers=head)) or b"")
            if not sock.recv(1):  # as dockerd: the answer comes when the container exits
                self.wait_abandoned.set()
            return False
        elif route == ("POST", "/v1.41/images/load"):
            self._send(conn, sock, 200, {"bytes": size, "sha256": digest})
        elif route == ("POST", "/v1.41/close-after"):
            self._send(conn, sock, 200, {}, [("Connection", "close")])
            return False
        else:
            self._send(conn, sock, 404, {"message": f"page not found: {seen.target}"})
        return True

    def _hijack(self, conn: h11.Connection, sock: socket.socket) -> None:
        """As dockerd does for exec start: 101, then stdin in, output out."""
        switch = h11.InformationalResponse(
            status_code=101,
            headers=[
                ("Content-Type", "application/vnd.docker.raw-stream"),
                ("Connection", "Upgrade"),
                ("Upgrade", "tcp"),
            ],
            reason=b"UPGRADED",
        )
        sock.sendall(conn.send(switch) or b"")
        stdin = bytearray(conn.trailing_data[0])
        sock.sendall(_frame(b"ready\n"))
        while data := sock.recv(65536):  # until the client's half-close
            stdin += data
        self.stdin_ended.set()
        sock.sendall(_frame(b"echo: " + bytes(stdin)))
        time.sleep(0.05)  # output that comes well after stdin ended still flows
        sock.sendall(_frame(b"after-eof\n"))
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()


# ---------------------------------------------------------------------------------------
# A fake policy.


@dataclass
class Call:
    authorization: str | None
    vm: str
    method: str
    path: str
    query: str


@dataclass
class Admitted:
    route: EngineRoute
    statuses: list[int]

    def finished(self, status: int) -> None:
        self.statuses.append(status)


@dataclass
class FakePolicy:
    route: EngineRoute
    calls: list[Call] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    refuse: dict[str, errors.DockvisorError] = field(default_factory=dict)

    def admit(
        self, *, authorization: str | None, vm: str, method: str, path: str, query: str
    ) -> Admitted:
        self.calls.append(Call(authorization, vm, method, path, query))
        for needle, refusal in self.refuse.items():
            if needle in f"{vm} {method} {path}":
                raise refusal
        return Admitted(self.route, self.finished)


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------
# A small blocking HTTP client.


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        head = [("Host", "127.0.0.1"), ("Authorization", f"Bearer {TOKEN}")] + (headers or [])
        if body is not None:
            head.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=head)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out)

    def head(self) -> h11.Response:
        event = self.next()
        assert isinstance(event, h11.Response), event
        return event

    def rest(self, response: h11.Response) -> Reply:
        body = bytearray()
        while not isinstance(event := self.next(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = {k.decode(): v.decode() for k, v in response.headers}
        return Reply(response.status_code, headers, bytes(body))

    def request(self, method: str, target: str, **kwargs: object) -> Reply:
        self.send(method, target, **kwargs)  # type: ignore[arg-type]
        return self.rest(self.head())


# ---------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture
def engine(pki: Pki) -> Iterator[FakeEngine]:
    fake = FakeEngine(pki.server)
    yield fake
    fake.close()


@pytest.fixture
def policy(engine: FakeEngine, pki: Pki) -> FakePolicy:
    return FakePolicy(EngineRoute("127.0.0.1", engine.port, pki.client, "engine"))


@pytest.fixture
def gateway(policy: FakePolicy) -> Iterator[EngineGateway]:
    gw = EngineGateway(policy, port=0)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: EngineGateway) -> Iterator[Client]:
    c = Client(gateway.port)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------
# Forwarding.


def test_a_request_reaches_the_engine_without_prefix_or_credentials(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    reply = client.request(
        "GET",
        "/vms/dev%2D1/v1.41/containers/json?all=1&filters=%7B%7D",
        headers=[("X-Dockvisor-Session", "secret"), ("User-Agent", "Docker-Client/28.2.2")],
    )
    assert (reply.status, reply.json()) == (200, [])
    assert reply.headers["api-version"] == "1.41"
    [seen] = engine.seen
    assert (seen.method, seen.target) == ("GET", "/v1.41/containers/json?all=1&filters=%7B%7D")
    assert "authorization" not in seen.headers  # names are lower-cased by h11
    assert not any(k.startswith("x-dockvisor") for k in seen.headers)
    assert seen.headers["user-agent"] == "Docker-Client/28.2.2"
    assert seen.headers["host"] == f"engine:{engine.port}"
    [call] = policy.calls
    assert call == Call(
        f"Bearer {TOKEN}", "dev-1", "GET", "/v1.41/containers/json", "all=1&filters=%7B%7D"
    )
    wait_for(lambda: policy.finished == [200])


def test_each_request_on_a_kept_alive_connection_is_admitted(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    policy.refuse["other "] = errors.NotFound("no VM 'other'")
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    refused = client.request("GET", "/vms/other/v1.41/containers/json")
    assert (refused.status, refused.json()) == (404, {"message": "no VM 'other'"})
    assert client.request("GET", "/vms/dev/v1.41/version").status == 200
    assert [c.vm for c in policy.calls] == ["dev", "other", "dev"]
    assert [s.target for s in engine.seen] == ["/v1.41/containers/json", "/v1.41/version"]


@pytest.mark.parametrize(
    ("refusal", "status", "header"),
    [
        (errors.Unauthorized("a valid API token is needed"), 401, "www-authenticate"),
        (errors.Forbidden("bob lacks Docker.Exec on VM dev"), 403, None),
        (errors.NotFound("no VM 'dev'"), 404, None),
        (errors.Busy("VM dev is being reverted"), 409, None),
        (errors.Throttled("too many failed logins", retry_after=7), 429, "retry-after"),
        (errors.InvalidInput("bad name"), 400, None),
        (errors.HypervisorUnreachable("host down"), 503, None),
    ],
)
def test_refusals_answer_in_the_engine_error_format(
    client: Client,
    engine: FakeEngine,
    policy: FakePolicy,
    refusal: errors.DockvisorError,
    status: int,
    header: str | None,
) -> None:
    policy.refuse["exec"] = refusal
    reply = client.request("POST", "/vms/dev/v1.41/containers/web/exec", body=b'{"Cmd":["sh"]}')
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"message": str(refusal)}
    if header:
        assert header in reply.headers
    assert engine.seen == [] and policy.finished == []
    # the connection stays usable after a refused request with a body
    assert client.request("GET", "/vms/dev/_ping").status == 200


def test_a_path_without_a_vm_is_explained_not_admitted(client: Client, policy: FakePolicy) -> None:
    reply = client.request("GET", "/v1.41/containers/json")
    assert reply.status == 404
    assert "DOCKER_HOST=tcp://HOST:PORT/vms/<vm>" in str(reply.json())
    assert policy.calls == []


def test_a_policy_crash_is_a_500_without_details(client: Client, policy: FakePolicy) -> None:
    policy.refuse["json"] = RuntimeError(TOKEN)  # type: ignore[assignment]
    reply = client.request("GET", "/vms/dev/v1.41/containers/json")
    assert reply.status == 500 and TOKEN not in reply.body.decode()


# ---------------------------------------------------------------------------------------
# Streaming.


def test_a_chunked_stream_flows_as_it_comes(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    client.send("GET", "/vms/dev/v1.41/events")
    response = client.head()
    assert response.status_code == 200
    first = client.next()
    assert isinstance(first, h11.Data) and first.data == b'{"status":"start"}\n'
    wait_for(lambda: policy.finished == [200])  # reported while the stream goes on
    assert not engine.release.is_set()  # the engine has not finished the stream yet
    engine.release.set()
    rest = client.rest(response)
    assert rest.body == b'{"status":"die"}\n'


@pytest.mark.parametrize("chunked", [False, True])
def test_a_large_request_body_is_streamed(
    client: Client, engine: FakeEngine, chunked: bool
) -> None:
    block = os.urandom(1 << 20)
    blocks = 48
    digest = hashlib.sha256()
    if chunked:
        headers = [("Transfer-Encoding", "chunked")]
    else:
        headers = [("Content-Length", str(blocks * len(block)))]
    out = client.conn.send(
        h11.Request(
            method="POST",
            target="/vms/dev/v1.41/images/load?quiet=1",
            headers=[("Host", "x"), ("Content-Type", "application/x-tar"), *headers],
        )
    )
    client.sock.sendall(out or b"")
    for i in range(blocks):
        client.sock.sendall(client.conn.send(h11.Data(data=block)) or b"")
        digest.update(block)
        if i == 1:  # the engine sees the body before the client has sent most of it
            assert engine.upload_started.wait(3)
    client.sock.sendall(client.conn.send(h11.EndOfMessage()) or b"")
    reply = client.rest(client.head())
    assert reply.json() == {"bytes": blocks * len(block), "sha256": digest.hexdigest()}


def test_an_upgrade_is_spliced_both_ways_with_half_close(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy
) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    body = b'{"Detach":false,"Tty":false}'
    request = (
        b"POST /vms/dev/v1.41/exec/abc/start HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    sock.sendall(request + body + b"early ")  # stdin sent with the request: buffered data
    received = bytearray()
    while b"ready\n" not in received:
        received += sock.recv(65536)
    head, _, stream = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 UPGRADED")
    assert b"Upgrade: tcp" in head
    assert stream == _frame(b"ready\n")
    sock.sendall(b"input")
    sock.shutdown(socket.SHUT_WR)  # stdin EOF: the engine must see it and keep talking
    assert engine.stdin_ended.wait(3)
    rest = bytearray()
    while data := sock.recv(65536):
        rest += data
    sock.close()
    assert bytes(rest) == _frame(b"echo: early input") + _frame(b"after-eof\n")
    [seen] = engine.seen
    assert seen.headers.get("upgrade") == "tcp" and "authorization" not in seen.headers
    wait_for(lambda: policy.finished == [101])


def test_a_client_leaving_a_quiet_stream_frees_the_engine_connection(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    client.send("POST", "/vms/dev/v1.41/containers/web/wait?condition=not-running")
    assert client.head().status_code == 200
    client.close()  # Ctrl-C on `docker wait`
    assert engine.wait_abandoned.wait(3)
    wait_for(lambda: policy.finished == [200])


def test_an_upgrade_from_a_client_with_nothing_to_send(
    gateway: EngineGateway, engine: FakeEngine
) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(
        b"POST /vms/dev/v1.41/exec/abc/start HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n{}"
    )
    sock.shutdown(socket.SHUT_WR)  # stdin from /dev/null, perhaps before the 101
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    sock.close()
    head, _, stream = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert stream == _frame(b"ready\n") + _frame(b"echo: ") + _frame(b"after-eof\n")


def test_a_refused_head_has_no_body(client: Client, policy: FakePolicy) -> None:
    policy.refuse["_ping"] = errors.Unauthorized("the API token has expired")
    reply = client.request("HEAD", "/vms/dev/_ping")
    assert (reply.status, reply.body) == (401, b"")
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200


# ---------------------------------------------------------------------------------------
# Upstream connections.


def test_upstream_connections_are_reused(gateway: EngineGateway, engine: FakeEngine) -> None:
    for _ in range(3):  # separate client connections share the engine connection
        c = Client(gateway.port)
        for _ in range(3):
            assert c.request("GET", "/vms/dev/v1.41/containers/json").status == 200
        c.close()
    assert len(engine.seen) == 9
    assert engine.connections == 1


def test_a_connection_the_engine_closes_is_not_reused(client: Client, engine: FakeEngine) -> None:
    assert client.request("POST", "/vms/dev/v1.41/close-after").status == 200
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    assert [s.connection for s in engine.seen] == [1, 2, 2]


def test_a_pooled_connection_that_died_is_retried_on_a_fresh_one(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    engine.drop_reused = True  # as if the engine restarted while the connection was idle
    reply = client.request("POST", "/vms/dev/v1.41/containers/web/exec", body=b'{"Cmd":["sh"]}')
    assert (reply.status, reply.json()) == (201, {"Id": "abc"})
    assert [(s.target, s.connection) for s in engine.seen] == [
        ("/v1.41/containers/json", 1),
        ("/v1.41/containers/web/exec", 1),  # read, then dropped without an answer
        ("/v1.41/containers/web/exec", 2),
    ]
    assert [c.method for c in policy.calls] == ["GET", "POST"]  # the retry is not admitted again
    wait_for(lambda: policy.finished == [200, 201])


def test_a_connection_the_engine_closed_while_idle_is_not_used(
    client: Client, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=engine_gateway.__name__)
    engine.close_when_idle = True
    assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    time.sleep(0.3)  # the engine has closed its idle connection, with a close_notify
    upload = os.urandom(engine_gateway.REPLAY_LIMIT * 4)  # too big to be resent
    reply = client.request("POST", "/vms/dev/v1.41/images/load", body=upload)
    assert reply.json() == {"bytes": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
    assert [s.connection for s in engine.seen] == [1, 2]
    assert "retrying" not in caplog.text  # seen as closed before use, not found out by trying


def test_headers_named_in_connection_stay_on_the_client_side(
    client: Client, engine: FakeEngine
) -> None:
    reply = client.request(
        "GET",
        "/vms/dev/v1.41/containers/json",
        headers=[("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("X-End", "2")],
    )
    assert reply.status == 200
    [seen] = engine.seen
    assert "x-hop" not in seen.headers and seen.headers["x-end"] == "2"


def test_an_unreachable_engine_is_a_quick_503_naming_the_vm(
    client: Client, policy: FakePolicy
) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    policy.route = EngineRoute("127.0.0.1", port, policy.route.ssl_context, "engine")
    started = time.monotonic()
    reply = client.request("GET", "/vms/dev/v1.41/containers/json")
    assert time.monotonic() - started < 2
    assert reply.status == 503
    message = str(reply.json())
    assert "'dev'" in message and f"127.0.0.1:{port}" in message
    wait_for(lambda: policy.finished == [503])


def test_an_engine_that_never_answers_times_out(
    client: Client, policy: FakePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_gateway, "CONNECT_TIMEOUT", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    policy.route = EngineRoute("127.0.0.1", silent.getsockname()[1], policy.route.ssl_context)
    try:
        started = time.monotonic()
        reply = client.request("GET", "/vms/dev/v1.41/containers/json")
        assert time.monotonic() - started < 2
    finally:
        silent.close()
    assert reply.status == 503 and "no answer" in str(reply.json())


def test_an_engine_with_the_wrong_certificate_is_refused(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    policy.route = EngineRoute("127.0.0.1", engine.port, policy.route.ssl_context, "other-vm")
    reply = client.request("GET", "/vms/dev/v1.41/containers/json")
    assert reply.status == 502 and "TLS" in str(reply.json())
    assert engine.seen == []


def test_start_fails_loudly_on_a_taken_port(policy: FakePolicy) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            EngineGateway(policy, port=taken.getsockname()[1]).start()
    finally:
        taken.close()


def test_stop_ends_open_streams(gateway: EngineGateway, client: Client) -> None:
    client.send("GET", "/vms/dev/v1.41/events")
    assert client.head().status_code == 200
    started = time.monotonic()
    gateway.stop()
    assert time.monotonic() - started < 2
    gateway.stop()  # twice is harmless


# ---------------------------------------------------------------------------------------
# The real docker CLI.


def _docker(
    port: int, home: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    if not os.access(DOCKER, os.X_OK):
        pytest.fail(f"the docker CLI is needed at {DOCKER} for this test (not found)")
    config = home / "docker-config"
    config.mkdir(exist_ok=True)
    (config / "config.json").write_text(
        json.dumps({"HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}})
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(config),
        "DOCKER_HOST": f"tcp://127.0.0.1:{port}/vms/dev",
    }
    return subprocess.run(
        [DOCKER, *args], input=stdin, env=env, capture_output=True, timeout=15, check=False
    )


def test_the_docker_cli_works_through_the_gateway(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy, tmp_path: Path
) -> None:
    done = _docker(gateway.port, tmp_path, "version", "--format", "{{.Server.Version}}")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "20.10.24"
    done = _docker(gateway.port, tmp_path, "ps")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("CONTAINER ID")
    targets = [(s.method, s.target) for s in engine.seen]
    assert ("HEAD", "/_ping") in targets
    assert ("GET", "/v1.41/version") in targets
    assert ("GET", "/v1.41/containers/json") in targets
    assert all("authorization" not in s.headers for s in engine.seen)
    assert {c.authorization for c in policy.calls} == {f"Bearer {TOKEN}"}
    assert {c.vm for c in policy.calls} == {"dev"}


def test_docker_exec_with_stdin_through_the_gateway(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy, tmp_path: Path
) -> None:
    done = _docker(gateway.port, tmp_path, "exec", "-i", "web", "cat", stdin=b"hello\n")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"ready\necho: hello\nafter-eof\n"
    start = [c for c in policy.calls if c.path.endswith("/start")]
    assert start and start[0].authorization == f"Bearer {TOKEN}"  # hijacked requests too


def test_docker_run_through_the_gateway(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy, tmp_path: Path
) -> None:
    done = _docker(gateway.port, tmp_path, "run", "busybox", "sh", "-c", "echo hello; exit 3")
    assert done.stdout == b"hello from run\n" and b"to stderr\n" in done.stderr
    assert done.returncode == 3  # the status `wait` reported
    actions = {(c.method, c.path.partition("?")[0]) for c in policy.calls}
    assert {
        ("POST", "/v1.41/containers/create"),
        ("POST", "/v1.41/containers/c0ffee/attach"),
        ("POST", "/v1.41/containers/c0ffee/wait"),
        ("POST", "/v1.41/containers/c0ffee/start"),
    } <= actions


def test_the_docker_cli_prints_a_refusal(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy, tmp_path: Path
) -> None:
    policy.refuse["/containers/json"] = errors.Forbidden("bob lacks Docker.View on VM dev")
    done = _docker(gateway.port, tmp_path, "ps")
    assert done.returncode != 0
    assert "Error response from daemon: bob lacks Docker.View on VM dev" in done.stderr.decode()
    assert ("GET", "/v1.41/containers/json") not in [(s.method, s.target) for s in engine.seen]
