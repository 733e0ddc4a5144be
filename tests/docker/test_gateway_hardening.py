"""The engine gateway against a real dockerd 20.10, with the stock docker CLI and raw
HTTP: an Operate or View call never changes what a container is, reading a container's
or an image's files needs Docker.Exec or Docker.Manage, a registry search needs
Docker.Manage, and a request with two framings never reaches the engine."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockvisor.domain.docker_api import TABLE
from dockvisor.domain.privileges import Privilege
from dockvisor.engines.docker import ContainerSpec, DockerEngine
from tests.docker.conftest import TEST_LABEL, DockerStack
from tests.docker_cli import docker_cli
from tests.raw_http import answers

pytestmark = pytest.mark.vm

HOST_CONFIG = {"Binds": ["/:/host"], "Privileged": True, "PidMode": "host", "NetworkMode": "host"}


def _gateway(stack: DockerStack) -> tuple[str, int]:
    host, port = stack.gateway.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def send(
    stack: DockerStack, user: str, method: str, target: str, *, head: bytes = b"", body: bytes = b""
) -> tuple[int, bytes]:
    """One raw request through the gateway as `user`; (status, body) of the answer."""
    request = (
        (
            f"{method} /vms/{stack.vm_id}{target} HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {stack.tokens[user]}\r\nConnection: close\r\n"
        ).encode()
        + head
        + b"\r\n"
        + body
    )
    [(status, answer)] = answers(_gateway(stack), request, [method], timeout=60)
    return status, answer


def json_body(data: object) -> tuple[bytes, bytes]:
    raw = json.dumps(data).encode()
    return b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(raw), raw


class Cli:
    """The stock docker CLI through the gateway as one user (config by hand)."""

    def __init__(self, stack: DockerStack, user: str, home: Path) -> None:
        config = home / user
        config.mkdir(exist_ok=True)
        (config / "config.json").write_text(
            json.dumps({"HttpHeaders": {"Authorization": f"Bearer {stack.tokens[user]}"}})
        )
        self.env = {**os.environ, "DOCKER_CONFIG": str(config),
                    "DOCKER_HOST": f"{stack.gateway}/vms/{stack.vm_id}"}  # fmt: skip
        for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
            self.env.pop(name, None)

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([docker_cli(), *args], env=self.env, capture_output=True,
                              timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docker-config")


@pytest.fixture
def created(engine: DockerEngine) -> Iterator[str]:
    """A created, not started container (removed after the test)."""
    name = f"dvt-gw-{secrets.token_hex(3)}"
    engine.create_container(
        ContainerSpec(
            image="busybox:latest", command=["sleep", "600"], name=name, labels={TEST_LABEL: "1"}
        )  # fmt: skip
    )
    yield name


def _unchanged(engine: DockerEngine, name: str) -> None:
    info = engine.inspect(name)
    host = info["HostConfig"]
    assert not host["Privileged"] and not host.get("Binds")
    assert host["PidMode"] in ("", "private") and host["NetworkMode"] in ("default", "bridge")


# -- item 1: Operate and View calls never change what a container is ------------------


def test_operate_cannot_start_a_container_privileged(
    stack: DockerStack, engine: DockerEngine, created: str, home: Path
) -> None:
    head, body = json_body(HOST_CONFIG)
    # The review's request: API 1.23, where dockerd applies a HostConfig sent on start.
    # API 1.23 is refused as such (it could reinterpret other calls too), body or not.
    for extra in ({"head": head, "body": body}, {}):
        status, said = send(stack, "operator", "POST", f"/v1.23/containers/{created}/start",
                            **extra)  # type: ignore[arg-type]  # fmt: skip
        assert status == 400 and b"API version 1.23 is not available" in said, said
    # With a current version, the body is refused: start takes none.
    chunked = b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    for extra_head, extra_body in (
        (head, body),
        (chunked, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
    ):
        status, said = send(stack, "operator", "POST", f"/v1.41/containers/{created}/start",
                            head=extra_head, body=extra_body)  # fmt: skip
        assert status == 400 and b"carries a request body" in said, said
    assert engine.inspect(created)["State"]["Status"] == "created"
    _unchanged(engine, created)
    # The stock docker CLI negotiates a version the gateway passes: start works.
    out = Cli(stack, "operator", home).run("start", created)
    assert out.returncode == 0, out.stderr.decode()
    assert engine.inspect(created)["State"]["Running"]
    _unchanged(engine, created)
    # ...and so does a checkpoint restore, refused as a parameter start does not take.
    status, said = send(stack, "operator", "POST",
                        f"/v1.41/containers/{created}/start?checkpoint-dir=/tmp")  # fmt: skip
    assert status >= 400 and b"does not take the parameter" in said


def _view_and_operate_routes(container: str) -> list[tuple[str, str]]:
    names = {"{id}": container, "{name*}": "busybox:latest"}
    return [
        (method, "/v1.41/" + "/".join(names.get(p, p) for p in route.pattern))
        for route in TABLE
        if set(route.needs) <= {Privilege.DOCKER_VIEW, Privilege.DOCKER_OPERATE}
        for method in route.methods
    ]


def test_no_view_or_operate_route_takes_a_body(
    stack: DockerStack, engine: DockerEngine, created: str
) -> None:
    head, body = json_body(HOST_CONFIG)
    routes = _view_and_operate_routes(created)
    assert len(routes) > 20
    for method, target in routes:
        status, said = send(stack, "dev", method, target, head=head, body=body)
        assert status == 400, (method, target, status, said[:200])
        assert method == "HEAD" or b"carries a request body" in said
    assert engine.inspect(created)["State"]["Status"] == "created"  # nothing happened
    _unchanged(engine, created)


def test_a_request_with_two_framings_never_reaches_the_engine(
    stack: DockerStack, engine: DockerEngine
) -> None:
    name = f"dvt-smuggle-{secrets.token_hex(3)}"
    create = json.dumps({"Image": "busybox:latest", "Labels": {TEST_LABEL: "1"}}).encode()
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(create), create)
    status, said = send(
        stack, "dev", "POST", f"/v1.41/containers/create?name={name}",
        head=b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: %d\r\n" % len(framed), body=framed,
    )  # fmt: skip
    assert status == 400 and b"Transfer-Encoding and Content-Length" in said
    assert name not in {c["Names"][0].lstrip("/") for c in engine.containers(all=True)}


# -- item 6: files need Docker.Exec or Docker.Manage; registries need Docker.Manage ---


@pytest.fixture
def running(engine: DockerEngine) -> Iterator[str]:
    name = f"dvt-files-{secrets.token_hex(3)}"
    engine.run(ContainerSpec(image="busybox:latest", command=["sleep", "600"], name=name,
                             labels={TEST_LABEL: "1"}))  # fmt: skip
    yield name


def test_reading_files_needs_exec_or_manage(stack: DockerStack, running: str, home: Path) -> None:
    viewer, operator = Cli(stack, "viewer", home), Cli(stack, "operator", home)
    for cli in (viewer, operator):
        for args in (("cp", f"{running}:/etc/passwd", "-"), ("export", running),
                     ("save", "busybox:latest")):  # fmt: skip
            out = cli.run(*args)
            assert out.returncode != 0, args
            assert b"lacks Docker.Exec or Docker.Manage" in out.stderr, out.stderr
    for target in (
        f"/v1.41/containers/{running}/archive?path=/etc/shadow",
        f"/v1.41/containers/{running}/export",
        "/v1.41/images/get?names=busybox",
    ):
        assert send(stack, "viewer", "GET", target)[0] == 403
    assert send(stack, "viewer", "HEAD", f"/v1.41/containers/{running}/archive?path=/")[0] == 403
    # Either privilege suffices.
    for user in ("execonly", "manageonly", "dev"):
        out = Cli(stack, user, home).run("cp", f"{running}:/etc/passwd", "-")
        assert out.returncode == 0 and b"root:x:0:0" in out.stdout, (user, out.stderr)
    out = Cli(stack, "execonly", home).run("export", running)
    assert out.returncode == 0 and len(out.stdout) > 100_000


def test_a_registry_search_needs_manage(stack: DockerStack, home: Path) -> None:
    for user in ("viewer", "operator", "execonly"):
        out = Cli(stack, user, home).run("search", "127.0.0.1:1/nothing")
        assert out.returncode != 0 and b"lacks Docker.Manage" in out.stderr, out.stderr
    status, _ = send(stack, "viewer", "GET", "/v1.41/images/search?term=127.0.0.1:1/x")
    assert status == 403
