"""The engine gateway between the docker CLI and a VM's engine, against a fake TLS engine
(tests/unit/engine_fakes.py; certificates shaped like production's)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import h11
import pytest
from tests.docker_cli import docker_cli
from tests.unit.engine_fakes import (
    TOKEN,
    Admitted,
    Call,
    Client,
    FakeEngine,
    FakePolicy,
    Pki,
    client,
    engine,
    frame,
    gateway,
    pki,
    policy,
    wait_for,
)

from dockvisor import errors
from dockvisor.api import engine_gateway, gateway_relay
from dockvisor.api.engine_gateway import EngineGateway, EngineRoute

pytestmark = pytest.mark.timeout(30)
FIXTURES = (client, engine, gateway, pki, policy)  # used by name below

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
    assert seen.headers["host"] == f"{policy.route.server_hostname}:{engine.port}"
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
    assert stream == frame(b"ready\n")
    sock.sendall(b"input")
    sock.shutdown(socket.SHUT_WR)  # stdin EOF: the engine must see it and keep talking
    assert engine.stdin_ended.wait(3)
    rest = bytearray()
    while data := sock.recv(65536):
        rest += data
    sock.close()
    assert bytes(rest) == frame(b"echo: early input") + frame(b"after-eof\n")
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
    assert stream == frame(b"ready\n") + frame(b"echo: ") + frame(b"after-eof\n")


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
    upload = os.urandom(gateway_relay.REPLAY_LIMIT * 4)  # too big to be resent
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
    policy.route = EngineRoute("127.0.0.1", port, policy.route.ssl_context, "x.vm.dockvisor")
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
    client: Client, engine: FakeEngine, policy: FakePolicy, pki: Pki
) -> None:
    other = pki.authority.issue_server().server_name  # another VM's name
    policy.route = EngineRoute("127.0.0.1", engine.port, policy.route.ssl_context, other)
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
# An admission holds only while it still stands.

ENDS_WITHIN = 2.0  # seconds from an admission's no to the client connection closed


def _closed_after(sock: socket.socket, timeout: float = 5.0) -> tuple[float, bytes]:
    """Read until the gateway closes the connection: (seconds it took, what came)."""
    started, received = time.monotonic(), bytearray()
    sock.settimeout(timeout)
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return time.monotonic() - started, bytes(received)


def test_a_quiet_stream_ends_once_its_admission_no_longer_holds(
    gateway: EngineGateway, client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    client.send("POST", "/vms/dev/v1.41/containers/web/wait?condition=not-running")
    assert client.head().status_code == 200
    wait_for(lambda: policy.rechecks >= 2, timeout=4)  # asked every second; yes: it goes on
    assert not engine.wait_abandoned.is_set() and gateway.exchanges_watched == 1
    policy.revoked = True
    took, _ = _closed_after(client.sock)
    assert took < ENDS_WITHIN, f"closed {took:.2f} s after"
    assert engine.wait_abandoned.wait(1)  # the engine's connection went too
    wait_for(lambda: policy.finished == [200])  # reported once, as before


def test_a_hijacked_stream_ends_once_its_admission_no_longer_holds(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy
) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(
        b"POST /vms/dev/v1.41/exec/abc/start HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n{}"
    )
    received = bytearray()
    while b"ready\n" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 101")
    time.sleep(1.2)
    sock.sendall(b"still here ")  # stdin stays open: an idle `docker exec -i`
    policy.revoked = True
    took, rest = _closed_after(sock)
    sock.close()
    assert took < ENDS_WITHIN, f"closed {took:.2f} s after"
    assert engine.stdin_ended.wait(1)  # the engine saw its connection end
    assert b"echo:" not in rest  # nothing the engine said after the end came through


def test_a_check_that_fails_ends_the_stream(
    client: Client, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    async def broken(self: object) -> bool:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(Admitted, "still_admitted", broken)
    client.send("POST", "/vms/dev/v1.41/containers/web/wait?condition=not-running")
    assert client.head().status_code == 200
    took, _ = _closed_after(client.sock)
    assert took < ENDS_WITHIN  # not confirmed: not kept
    assert engine.wait_abandoned.wait(1)
    assert "still admitted" in caplog.text


def test_an_events_stream_ends_with_its_admission(
    client: Client, engine: FakeEngine, policy: FakePolicy
) -> None:
    policy.revoked = True  # admitted, then at once no longer: the first check says so
    client.send("GET", "/vms/dev/v1.41/events")
    assert client.head().status_code == 200
    took, _ = _closed_after(client.sock)
    assert took < ENDS_WITHIN  # not the 5 s the engine holds it


def test_short_requests_are_never_watched(
    gateway: EngineGateway, client: Client, policy: FakePolicy
) -> None:
    started = time.monotonic()
    for _ in range(50):
        assert client.request("GET", "/vms/dev/v1.41/containers/json").status == 200
    elapsed = time.monotonic() - started
    time.sleep(engine_gateway.RECHECK_EVERY + 0.3)  # a timer left behind would have fired
    assert gateway.exchanges_watched == 0 and policy.rechecks == 0
    assert elapsed < 5, f"50 short requests took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------
# The real docker CLI.


def _docker(
    port: int, home: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
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
        [docker_cli(), *args], input=stdin, env=env, capture_output=True, timeout=15, check=False
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
