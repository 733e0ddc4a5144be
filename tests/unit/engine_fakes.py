"""A fake TLS engine, a fake policy and a small blocking HTTP client, for the engine
gateway's tests (only 127.0.0.1 traffic).

The fake engine is a threaded HTTP/1.1 server on blocking TLS sockets with mutual TLS,
as dockerd is, with certificates made by engines/pki.py as production makes them: it
half-closes the way Go does (recv() gives b"" on the peer's close_notify, and sending
still works).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h11
import pytest

from dockvisor import errors
from dockvisor.api.engine_gateway import EngineGateway, EngineRoute
from dockvisor.engines.pki import EnginePKI

TOKEN = "dv_s3cret-token"


# ---------------------------------------------------------------------------------------
# Certificates as production makes them (engines/pki.py): an engine certificate that names
# only its VM-unique name, signed by the servers CA; dockvisor's client certificate signed
# by the clients CA, the only one the engine accepts.


@dataclass(frozen=True)
class Pki:
    server: ssl.SSLContext  # the engine's: requires a client certificate of the clients CA
    client: ssl.SSLContext  # dockvisor's: verifies the engine by its name
    name: str  # the engine's VM-unique name
    authority: EnginePKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    authority = EnginePKI(where / "pki")
    issued = authority.issue_server()
    (where / "cert.pem").write_bytes(issued.cert_pem)
    (where / "key.pem").write_bytes(issued.key_pem)
    (where / "clients-ca.pem").write_bytes(issued.client_ca_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(where / "cert.pem", where / "key.pem")
    server.load_verify_locations(where / "clients-ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED  # as dockerd --tlsverify
    return Pki(server, authority.client_context(), issued.server_name, authority)


# ---------------------------------------------------------------------------------------
# The fake engine.


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    connection: int


def frame(data: bytes, stream: int = 1) -> bytes:
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
            sock.sendall(frame(b"hello from run\n") + frame(b"to stderr\n", stream=2))
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
        sock.sendall(frame(b"ready\n"))
        while data := sock.recv(65536):  # until the client's half-close
            stdin += data
        self.stdin_ended.set()
        sock.sendall(frame(b"echo: " + bytes(stdin)))
        time.sleep(0.05)  # output that comes well after stdin ended still flows
        sock.sendall(frame(b"after-eof\n"))
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
    policy: FakePolicy | None = None

    def finished(self, status: int) -> None:
        self.statuses.append(status)

    async def still_admitted(self) -> bool:
        """Yes until the policy is told `revoked`; each question counted."""
        if self.policy is None:
            return True
        self.policy.rechecks += 1
        return not self.policy.revoked


@dataclass
class FakePolicy:
    route: EngineRoute
    calls: list[Call] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    refuse: dict[str, errors.DockvisorError] = field(default_factory=dict)
    revoked: bool = False  # every admission, made or to come, no longer holds
    rechecks: int = 0  # how often an admission was asked whether it still holds

    def admit(
        self, *, authorization: str | None, vm: str, method: str, path: str, query: str
    ) -> Admitted:
        self.calls.append(Call(authorization, vm, method, path, query))
        for needle, refusal in self.refuse.items():
            if needle in f"{vm} {method} {path}":
                raise refusal
        return Admitted(self.route, self.finished, self)


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
    return FakePolicy(EngineRoute("127.0.0.1", engine.port, pki.client, pki.name))


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
