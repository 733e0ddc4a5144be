"""Streams through the engine gateway never outlive what admitted them: with the stock
docker CLI against a real dockerd, a `docker logs -f` on a quiet container and an idle
`docker exec -i CONTAINER sh` both exit, and their engine connections are gone, within
ENDS_WITHIN seconds of the token being revoked by its owner or expiring, of the caller's
ACL entry on the VM being revoked by an admin, of the user being deleted, or of the
server stopping (`cp.begin_stopping()`, or the gateway itself stopping). Short requests
are never watched."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dockvisor.api.docker_routes import ServerGatewayPolicy
from dockvisor.api.engine_gateway import EngineGateway
from dockvisor.engines.docker import ContainerSpec, DockerEngine
from dockvisor.services import identity
from dockvisor.services.identity import digest
from dockvisor.store.models import TokenRow
from tests.docker.conftest import TEST_LABEL, DockerStack, wait_until
from tests.docker_cli import docker_cli

pytestmark = pytest.mark.vm

ENDS_WITHIN = 3.0  # seconds from the change to the docker CLI having exited
STARTS_WITHIN = 60.0  # seconds a stream may take to open under emulation


def engine_connections(stack: DockerStack) -> set[str]:
    """Established TCP connections from this host to the VM's engine (its forwarded
    port), by their local address."""
    port = stack.cp.hosts.driver(1).docker_endpoint(stack.vm_name).port
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, remote, state = line.split()[1:4]
                if int(remote.rsplit(":", 1)[1], 16) == port and state == "01":
                    found.add(local)
    return found


class Output:
    """What a process writes on stdout, gathered by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.data = bytearray()
        self._fd = proc.stdout.fileno()
        threading.Thread(target=self._gather, daemon=True).start()

    def _gather(self) -> None:
        with contextlib.suppress(OSError):  # the pipe closed under it at the end
            while chunk := os.read(self._fd, 65536):
                self.data += chunk

    def wait_for(self, needle: bytes, what: str) -> None:
        wait_until(lambda: needle in self.data, STARTS_WITHIN, what)


class Streams:
    """A `docker logs -f` and an idle `docker exec -i CONTAINER sh`, through a gateway
    with one token, both open and quiet once made."""

    def __init__(self, stack: DockerStack, gateway: str, token: str, container: str,
                 home: Path) -> None:  # fmt: skip
        config = home / f"cli-{secrets.token_hex(3)}"
        config.mkdir()
        (config / "config.json").write_text(
            json.dumps({"HttpHeaders": {"Authorization": f"Bearer {token}"}})
        )
        env = {**os.environ, "DOCKER_CONFIG": str(config),
               "DOCKER_HOST": f"{gateway}/vms/{stack.vm_id}"}  # fmt: skip
        for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
            env.pop(name, None)
        cli = docker_cli()
        self.logs = subprocess.Popen([cli, "logs", "-f", container], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.exec = subprocess.Popen([cli, "exec", "-i", container, "sh"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)  # fmt: skip
        self.procs = (self.logs, self.exec)
        try:
            logs, shell = Output(self.logs), Output(self.exec)
            logs.wait_for(b"hello", "`docker logs -f` printing the container's first line")
            assert self.exec.stdin is not None
            self.exec.stdin.write(b"echo ready\n")
            self.exec.stdin.flush()  # and then nothing more: the shell waits, stdin open
            shell.wait_for(b"ready", "`docker exec -i` answering")
            # The streams' engine connections are among these (new, or idle pooled ones
            # they took over), with the server's own.
            self.connections = engine_connections(stack)
            for proc in self.procs:
                assert proc.poll() is None, proc.args
        except BaseException:
            self.close()
            raise

    def seconds_to_exit(self) -> float:
        """Seconds until both docker CLIs have exited (ENDS_WITHIN * 3 at most)."""
        started = time.monotonic()
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() - started > ENDS_WITHIN * 3:
                break
            time.sleep(0.02)
        return time.monotonic() - started

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def ended(self, stack: DockerStack, seconds: float) -> None:
        """Both exited within ENDS_WITHIN seconds, their engine connections gone too."""
        stderr = [p.stderr.read() if p.stderr and p.poll() is not None else b"" for p in self.procs]
        assert seconds < ENDS_WITHIN, f"the docker CLIs still ran {seconds:.2f} s after ({stderr})"
        print(f"both docker CLIs exited {seconds:.2f} s after")  # shown with pytest -rP
        # Both streams' connections closed (pooled idle ones stay, new ones may come).
        wait_until(lambda: len(self.connections - engine_connections(stack)) >= 2, 2.0,
                   "the streams' engine connections closed")  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-streams")


@pytest.fixture
def quiet(engine: DockerEngine) -> str:
    """A running container that prints one line, then nothing (removed after the test)."""
    name = f"dvt-gwquiet-{secrets.token_hex(3)}"
    engine.run(ContainerSpec(image="busybox:latest", name=name, labels={TEST_LABEL: "1"},
                             command=["sh", "-c", "echo hello; exec sleep 900"]))  # fmt: skip
    return name


@pytest.fixture
def own_gateway(stack: DockerStack) -> Iterator[EngineGateway]:
    """A second gateway of the test server, this test's own (it may be stopped)."""
    gateway = EngineGateway(ServerGatewayPolicy(stack.cp), port=0)
    gateway.start()
    yield gateway
    gateway.stop()


def _ended_audited(stack: DockerStack, actor: str, result: str) -> None:
    """The forced ends are in the audit log, for the follow and the exec."""

    def recorded() -> bool:
        with stack.client("admin") as admin:
            entries = admin.get("/audit", params={"limit": 200}).json()
        rows = entries if isinstance(entries, list) else entries["entries"]
        actions = {e["action"] for e in rows if e["actor"] == actor and e["result"] == result}
        return {"docker.container.logs", "docker.exec.start"} <= actions

    wait_until(recorded, 5.0, f"{result} audited for {actor}")


def test_revoking_the_token_ends_streams(stack: DockerStack, quiet: str, home: Path) -> None:
    with stack.client("dev") as dev:
        made = dev.post("/tokens", json={"name": f"gw-{secrets.token_hex(3)}"})
        assert made.status_code == 201, made.text
        streams = Streams(stack, stack.gateway, made.json()["token"], quiet, home)
        try:
            assert dev.delete(f"/tokens/{made.json()['id']}").status_code == 204
            streams.ended(stack, streams.seconds_to_exit())
        finally:
            streams.close()
    _ended_audited(stack, "dev", "ended:credential")


def _developer(stack: DockerStack) -> tuple[str, str, int]:
    """A new user with a token, made Developer on the VM by the admin: (name, token, the
    ACL entry's id)."""
    name = f"gwuser{secrets.token_hex(3)}"
    with stack.cp.db.session() as session:
        user = identity.create_user(session, name, f"{name}-password-1")
        _, token = identity.create_token(session, user, "tests")
    with stack.client("admin") as admin:
        entry = admin.post("/acl", json={"subject": f"user:{name}", "role": "Developer",
                                         "path": f"/vms/{stack.vm_id}"})  # fmt: skip
    assert entry.status_code == 201, entry.text
    return name, token, int(entry.json()["id"])


def test_revoking_the_acl_entry_ends_streams(stack: DockerStack, quiet: str, home: Path) -> None:
    name, token, entry = _developer(stack)
    streams = Streams(stack, stack.gateway, token, quiet, home)
    try:
        with stack.client("admin") as admin:
            assert admin.delete(f"/acl/{entry}").status_code == 204
        streams.ended(stack, streams.seconds_to_exit())
    finally:
        streams.close()
    _ended_audited(stack, name, "ended:privilege")


def test_deleting_the_user_ends_streams(stack: DockerStack, quiet: str, home: Path) -> None:
    name, token, _ = _developer(stack)
    streams = Streams(stack, stack.gateway, token, quiet, home)
    try:
        with stack.client("admin") as admin:
            assert admin.delete(f"/users/{name}").status_code == 204
        streams.ended(stack, streams.seconds_to_exit())
    finally:
        streams.close()
    _ended_audited(stack, name, "ended:credential")


def test_the_token_expiring_ends_streams(stack: DockerStack, quiet: str, home: Path) -> None:
    name, token, _ = _developer(stack)
    streams = Streams(stack, stack.gateway, token, quiet, home)
    try:
        # As if the token had been made to expire in a second: nobody tells the server.
        expiry = datetime.now(UTC) + timedelta(seconds=1)
        with stack.cp.db.session() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.digest == digest(token)))
            assert row is not None
            row.expires = expiry
        streams.ended(stack, streams.seconds_to_exit() - 1.0)
    finally:
        streams.close()
    _ended_audited(stack, name, "ended:credential")


def test_the_server_stopping_ends_streams(stack: DockerStack, quiet: str, home: Path) -> None:
    streams = Streams(stack, stack.gateway, stack.tokens["dev"], quiet, home)
    try:
        stack.cp.begin_stopping()  # what `dockvisor serve` does on SIGTERM, first
        streams.ended(stack, streams.seconds_to_exit())
    finally:
        stack.cp.stopping.clear()  # the test server goes on for the other tests
        streams.close()


def test_the_gateway_stopping_ends_streams(
    stack: DockerStack, own_gateway: EngineGateway, quiet: str, home: Path
) -> None:
    gateway = f"tcp://127.0.0.1:{own_gateway.port}"
    streams = Streams(stack, gateway, stack.tokens["dev"], quiet, home)
    try:
        time.sleep(1.5)  # long enough to be watched: still admitted, so still open
        assert own_gateway.exchanges_watched >= 2
        assert all(p.poll() is None for p in streams.procs)
        own_gateway.stop()
        streams.ended(stack, streams.seconds_to_exit())
    finally:
        streams.close()


def test_short_requests_are_not_watched(stack: DockerStack, own_gateway: EngineGateway) -> None:
    base = f"http://127.0.0.1:{own_gateway.port}/vms/{stack.vm_id}"
    headers = {"Authorization": f"Bearer {stack.tokens['viewer']}"}
    took = []
    with httpx.Client(base_url=base, headers=headers, timeout=30, trust_env=False) as client:
        for _ in range(50):
            started = time.monotonic()
            assert client.get("/v1.41/containers/json").status_code == 200
            took.append(time.monotonic() - started)
    time.sleep(1.3)  # a watch left behind would have begun by now
    took.sort()
    timing = f"median {took[25] * 1000:.1f} ms, slowest {took[-1] * 1000:.1f} ms"
    assert own_gateway.exchanges_watched == 0, timing
    print(f"50 GET /containers/json through the gateway: {timing}, none watched")
