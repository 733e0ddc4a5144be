"""Nothing a container writes is lost, on every path that streams it: output without a
final newline, all 256 byte values, and several MiB, through `dockvisor docker` (on
the host and through a server), the REST API (logs with and without follow, exec, the
exec websocket) and the stock docker CLI through the engine gateway.

The cause of the loss the review saw: dockerd 20.10 writes an unterminated last line
when the container's output ends, as it stops, and a `logs?follow` reader stops without
it (engines/streams.py: LogFollow). And its default json-file log driver replaces bytes
that are not UTF-8 (domain/container_spec.py: LOG_DRIVER).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from dockvisor.engines.streams import FrameReader
from tests.docker.conftest import DockerStack, wait_until
from tests.docker_cli import docker_cli

pytestmark = pytest.mark.vm

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))

ALL_BYTES = bytes(range(256))
# busybox printf: every byte value as an octal escape, the last one (0xff) included.
PRINT_ALL_BYTES = ["printf", "".join(f"\\{b:03o}" for b in range(256))]
LARGE_SIZE = 5 * 1024 * 1024 + 7  # 5 MiB of 1001-byte lines, the last one cut short
LARGE = ((b"0" * 1000 + b"\n") * (LARGE_SIZE // 1001 + 1))[:LARGE_SIZE]
PRINT_LARGE = ["sh", "-c", f"yes $(printf %01000d 0) | head -c {LARGE_SIZE}"]
# What the review ran: an unterminated line, printed as the container stops.
PRINT_NO_NEWLINE = ["sh", "-c", "printf abc; sleep 0.3"]

OUTPUTS = [
    pytest.param(PRINT_NO_NEWLINE, b"abc", id="no-final-newline"),
    pytest.param(PRINT_ALL_BYTES, ALL_BYTES, id="all-byte-values"),
    pytest.param(PRINT_LARGE, LARGE, id="several-MiB"),
]


def dockvisor(
    stack: DockerStack, *args: str, server: bool, user: str = "dev"
) -> subprocess.CompletedProcess[bytes]:
    """`dockvisor ARGS` through the server (as `user`) or on the host (its data dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKVISOR_")}
    if server:
        env |= {"DOCKVISOR_SERVER": stack.url, "DOCKVISOR_TOKEN": stack.tokens[user]}
    else:
        env |= {"DOCKVISOR_DATA_DIR": stack.data_dir}
    return subprocess.run([DOCKVISOR, *args], env=env, capture_output=True, timeout=300)


@pytest.fixture
def dev(stack: DockerStack) -> Iterator[httpx.Client]:
    with stack.client("dev", timeout=120) as client:
        yield client


@contextmanager
def exited(stack: DockerStack, dev: httpx.Client, command: list[str]) -> Iterator[str]:
    """A container made through the API that ran `command` and has exited."""
    name = f"dvt-out-{secrets.token_hex(3)}"
    r = dev.post(f"{stack.docker()}/containers",
                 json={"image": "busybox:latest", "name": name, "command": command})  # fmt: skip
    assert r.status_code == 201, r.text
    try:
        wait_until(
            lambda: (
                dev.get(f"{stack.docker()}/containers/{name}").json()["State"]["Status"] == "exited"
            ),
            timeout=120,
            what="the container exits",
        )
        yield name
    finally:
        dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True})


# -- dockvisor docker VM run (attached) -------------------------------------------------


@pytest.mark.parametrize("server", [True, False], ids=["through-server", "on-host"])
@pytest.mark.parametrize(("command", "expected"), OUTPUTS)
def test_run_attached_prints_everything(
    stack: DockerStack, server: bool, command: list[str], expected: bytes
) -> None:
    tries = 3 if expected == b"abc" else 1  # the review lost it 4 times in 5
    for _ in range(tries):
        out = dockvisor(stack, "docker", stack.vm_name, "run", "--rm", "busybox:latest",
                        *command, server=server)  # fmt: skip
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == expected, (len(out.stdout), out.stdout[-40:])


# -- logs: CLI and REST, with and without follow -----------------------------------------


@pytest.mark.parametrize(("command", "expected"), OUTPUTS)
def test_logs_keep_everything(
    stack: DockerStack, dev: httpx.Client, command: list[str], expected: bytes
) -> None:
    with exited(stack, dev, command) as name:
        base = f"{stack.docker()}/containers/{name}/logs"
        assert dev.get(base).content == expected
        assert dev.get(base, params={"follow": True}).content == expected
        for follow in ((), ("-f",)):
            out = dockvisor(stack, "docker", stack.vm_name, "logs", *follow, name, server=True)
            assert out.returncode == 0 and out.stdout == expected, out.stderr.decode()


def test_a_follow_from_the_start_gets_the_last_unterminated_line(
    stack: DockerStack, dev: httpx.Client
) -> None:
    for _ in range(3):
        name = f"dvt-out-{secrets.token_hex(3)}"
        r = dev.post(f"{stack.docker()}/containers",
                     json={"image": "busybox:latest", "name": name,
                           "command": ["sh", "-c", "sleep 1; printf abc; sleep 0.3"]})  # fmt: skip
        assert r.status_code == 201, r.text
        try:
            logs = dev.get(f"{stack.docker()}/containers/{name}/logs", params={"follow": True})
            assert logs.content == b"abc"
        finally:
            dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True})


# -- exec: CLI, REST, websocket ----------------------------------------------------------


@pytest.fixture
def sleeper(stack: DockerStack, dev: httpx.Client) -> Iterator[str]:
    name = f"dvt-out-{secrets.token_hex(3)}"
    r = dev.post(
        f"{stack.docker()}/containers",
        json={"image": "busybox:latest", "name": name, "command": ["sleep", "600"]},
    )
    assert r.status_code == 201, r.text
    yield name
    dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True})


def _websocket_exec(stack: DockerStack, container: str, command: list[str]) -> tuple[bytes, int]:
    url = stack.url.replace("http://", "ws://")
    query = str(httpx.QueryParams([("cmd", c) for c in command] + [("tty", "false")]))
    address = f"{url}/api/v1{stack.docker()}/containers/{container}/exec?{query}"
    frames, out, final = FrameReader(), bytearray(), {}
    with connect(address, additional_headers={"Authorization": f"Bearer {stack.tokens['dev']}"},
                 open_timeout=30, max_size=None) as ws:  # fmt: skip
        ws.send(json.dumps({"eof": True}))
        while True:
            message = ws.recv(timeout=120)
            if isinstance(message, bytes):
                for _kind, payload in frames.feed(message):
                    out += payload
            else:
                final = json.loads(message)
                break
    return bytes(out), int(final["exit_code"])


@pytest.mark.parametrize(("command", "expected"), OUTPUTS)
def test_exec_keeps_everything(
    stack: DockerStack, dev: httpx.Client, sleeper: str, command: list[str], expected: bytes
) -> None:
    for server in (True, False):
        out = dockvisor(stack, "docker", stack.vm_name, "exec", sleeper, *command, server=server)
        assert out.returncode == 0 and out.stdout == expected, out.stderr.decode()
        out = dockvisor(stack, "docker", stack.vm_name, "exec", "-i", sleeper, *command,
                        server=server)  # fmt: skip
        assert out.returncode == 0 and out.stdout == expected, out.stderr.decode()
    assert _websocket_exec(stack, sleeper, command) == (expected, 0)
    r = dev.post(f"{stack.docker()}/containers/{sleeper}/exec", json={"command": command})
    assert base64.b64decode(r.json()["stdout_base64"]) == expected  # the exact bytes
    if expected != ALL_BYTES:  # ... and as text, when they are text
        assert r.json()["stdout"].encode() == expected


# -- the stock docker CLI through the engine gateway -------------------------------------


@pytest.fixture(scope="module")
def docker_env(stack: DockerStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("docker-config")
    (config / "config.json").write_text(
        json.dumps({"HttpHeaders": {"Authorization": f"Bearer {stack.tokens['dev']}"}})
    )
    env = {**os.environ, "DOCKER_CONFIG": str(config),
           "DOCKER_HOST": f"{stack.gateway}/vms/{stack.vm_id}"}  # fmt: skip
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize(("command", "expected"), OUTPUTS)
def test_the_stock_cli_through_the_gateway_keeps_everything(
    stack: DockerStack, docker_env: dict[str, str], sleeper: str, command: list[str],
    expected: bytes,
) -> None:  # fmt: skip
    def docker(*args: str) -> bytes:
        out = subprocess.run([docker_cli(), *args], env=docker_env, capture_output=True,
                             timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout

    name = f"dvt-out-{secrets.token_hex(3)}"
    # No --log-driver: the guest's dockerd logs with `local` whoever creates a container
    # (json-file, dockerd's own default, would replace the bytes that are not UTF-8).
    assert docker("run", "--name", name, "busybox:latest", *command) == expected
    try:
        assert docker("logs", name) == expected
    finally:
        docker("rm", "-f", name)
    assert docker("exec", sleeper, *command) == expected
