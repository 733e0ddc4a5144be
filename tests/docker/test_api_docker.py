"""Containers and images in a real VM through the REST API: what each call does to the
engine, what bad input gets, and that every write lands in the audit log."""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from dockvisor.domain.sizes import MiB
from dockvisor.engines.docker import ContainerSpec
from tests.docker.conftest import DockerStack, wait_until

pytestmark = pytest.mark.vm


@pytest.fixture
def dev(stack: DockerStack) -> Iterator[httpx.Client]:
    with stack.client("dev") as client:
        yield client


@pytest.fixture
def container(stack: DockerStack, dev: httpx.Client) -> Iterator[str]:
    """A running container that prints a line every 0.2 s; removed afterwards."""
    name = f"c-{secrets.token_hex(3)}"
    r = dev.post(
        f"{stack.docker()}/containers",
        json={
            "image": "busybox:latest",
            "name": name,
            "command": [
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            ],
        },
    )
    assert r.status_code == 201, r.text
    yield name
    dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True})


def names(stack: DockerStack, client: httpx.Client) -> dict[str, str]:
    r = client.get(f"{stack.docker()}/containers")
    assert r.status_code == 200, r.text
    return {c["name"]: c["state"] for c in r.json()}


def test_run_with_env_ports_limits_and_restart_policy(
    stack: DockerStack, dev: httpx.Client
) -> None:
    name = f"web-{secrets.token_hex(3)}"
    r = dev.post(
        f"{stack.docker()}/containers",
        json={
            "image": "busybox:latest",
            "name": name,
            "command": ["httpd", "-f", "-p", "80"],
            "env": {"GREETING": "hello"},
            "ports": [{"host_port": 8080, "container_port": 80}],
            "restart": "on-failure:3",
            "cpus": 0.5,
            "memory": 64 * MiB,
            "labels": {"team": "a"},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and r.json()["state"] == "running"
    try:
        info = dev.get(f"{stack.docker()}/containers/{name}").json()
        host = info["HostConfig"]
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 * MiB
        assert host["PortBindings"]["80/tcp"][0]["HostPort"] == "8080"
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
        assert "GREETING=hello" in info["Config"]["Env"]
        assert info["Config"]["Labels"]["team"] == "a"
        # The server in it answers (and the engine could program the VM's port 8080 for
        # it: without the guest's iptables modules the start itself fails).
        r = dev.post(
            f"{stack.docker()}/containers/{name}/exec",
            json={"command": ["wget", "-qO-", "http://127.0.0.1:80/"]},
        )
        assert "404" in r.json()["stderr"] + r.json()["stdout"]  # httpd answered (no index)
        listed = wait_until(lambda: names(stack, dev).get(name), what="the list shows it")
        assert listed == "running"
        row = next(c for c in dev.get(f"{stack.docker()}/containers").json() if c["name"] == name)
        assert any(p["host_port"] == 8080 and p["container_port"] == 80 for p in row["ports"])
    finally:
        assert (
            dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True}).status_code
            == 204
        )
    assert wait_until(lambda: name not in names(stack, dev), what="the list forgets it")


def test_power_actions_change_the_state(
    stack: DockerStack, dev: httpx.Client, container: str
) -> None:
    base = f"{stack.docker()}/containers/{container}"
    steps = [("pause", "paused"), ("unpause", "running"), ("stop", "exited"),
             ("start", "running"), ("restart", "running"), ("kill", "exited")]  # fmt: skip
    for action, state in steps:
        r = dev.post(f"{base}/{action}")
        assert r.status_code == 200, (action, r.text)
        assert r.json()["state"] == state, action
        assert dev.get(base).json()["State"]["Status"] == state
    r = dev.post(f"{base}/unpause")
    assert r.status_code == 409 and "not paused" in r.json()["detail"]


def test_logs_and_following_them(stack: DockerStack, dev: httpx.Client, container: str) -> None:
    base = f"{stack.docker()}/containers/{container}"
    wait_until(lambda: "tick 2" in dev.get(f"{base}/logs").text, what="three ticks")
    assert dev.get(f"{base}/logs", params={"tail": 1}).text.count("tick") == 1
    start = time.monotonic()
    seen = b""
    with dev.stream("GET", f"{base}/logs", params={"follow": True, "tail": 0}) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            seen += chunk
            if seen.count(b"tick") >= 3:
                break
    # New lines arrive as the container prints them (every 0.2 s), long before it ends.
    assert seen.count(b"tick") >= 3 and time.monotonic() - start < 20


def test_exec_gives_output_and_exit_code(
    stack: DockerStack, dev: httpx.Client, container: str
) -> None:
    r = dev.post(
        f"{stack.docker()}/containers/{container}/exec",
        json={"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
    )
    assert r.json() == {
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "stdout_base64": "b3V0Cg==",
        "stderr_base64": "ZXJyCg==",
    }


def test_interactive_exec_over_a_websocket(stack: DockerStack, container: str) -> None:
    url = stack.url.replace("http://", "ws://")
    address = f"{url}/api/v1{stack.docker()}/containers/{container}/exec?cmd=sh&tty=true"
    with connect(address, additional_headers={"Authorization": f"Bearer {stack.tokens['dev']}"},
                 open_timeout=30) as ws:  # fmt: skip
        ws.send(json.dumps({"resize": [40, 100]}))
        ws.send(b"stty size; echo hi-$((40+2)); exit 3\n")
        output, final = b"", {}
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                output += message
            else:
                final = json.loads(message)
                break
    assert b"hi-42" in output and b"40 100" in output
    assert final == {"exit_code": 3}


def test_interactive_exec_needs_docker_exec(stack: DockerStack, container: str) -> None:
    url = stack.url.replace("http://", "ws://")
    address = f"{url}/api/v1{stack.docker()}/containers/{container}/exec?cmd=sh"
    with connect(address, additional_headers={"Authorization": f"Bearer {stack.tokens['viewer']}"},
                 open_timeout=30) as ws:  # fmt: skip
        error = json.loads(ws.recv(timeout=30))
    assert error["status"] == 403 and "Docker.Exec" in error["error"]


def test_stats_has_cpu_and_memory(stack: DockerStack, dev: httpx.Client, container: str) -> None:
    stats = dev.get(f"{stack.docker()}/containers/{container}/stats").json()
    assert stats["memory_stats"]["usage"] > 0 and "cpu_usage" in stats["cpu_stats"]


def _rootfs_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = b"made by a dockvisor test\n"
        info = tarfile.TarInfo("etc/dockvisor-test")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_images_import_load_and_remove(stack: DockerStack, dev: httpx.Client) -> None:
    tag = secrets.token_hex(3)
    r = dev.post(
        f"{stack.docker()}/images/import",
        params={"repository": "dvt/rootfs", "tag": tag},
        content=_rootfs_tar(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 200, r.text
    tags = [t for i in dev.get(f"{stack.docker()}/images").json() for t in i["tags"]]
    assert f"dvt/rootfs:{tag}" in tags
    # A `docker save` tarball of it, made by the engine, loads back after a removal.
    engine = stack.cp.docker.engine_of(stack.vm_id)
    with engine.save_image(f"dvt/rootfs:{tag}") as stream:
        saved = b"".join(stream)
    assert dev.delete(f"{stack.docker()}/images/dvt/rootfs:{tag}").status_code == 204
    tags = [t for i in dev.get(f"{stack.docker()}/images").json() for t in i["tags"]]
    assert f"dvt/rootfs:{tag}" not in tags
    r = dev.post(
        f"{stack.docker()}/images/load",
        content=saved,
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 200, r.text
    assert f"dvt/rootfs:{tag}" in r.json()["images"]
    assert dev.delete(f"{stack.docker()}/images/dvt/rootfs:{tag}").status_code == 204


def test_a_bigger_upload_than_the_api_body_limit_streams_through(
    stack: DockerStack, dev: httpx.Client
) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        blob = secrets.token_bytes(3 * 1024 * 1024)  # 3 MiB: over the API's 1 MiB limit
        info = tarfile.TarInfo("blob")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    tag = secrets.token_hex(3)
    r = dev.post(
        f"{stack.docker()}/images/import",
        params={"repository": "dvt/big", "tag": tag},
        content=out.getvalue(),
    )
    assert r.status_code == 200, r.text
    assert dev.delete(f"{stack.docker()}/images/dvt/big:{tag}").status_code == 204


# -- bad input: a clear error, nothing half-made -------------------------------------------


def _count(stack: DockerStack, client: httpx.Client) -> int:
    return len(client.get(f"{stack.docker()}/containers", params={"all": True}).json())


def test_a_missing_image_is_404_and_creates_nothing(stack: DockerStack, dev: httpx.Client) -> None:
    engine = stack.cp.docker.engine_of(stack.vm_id)
    before = len(engine.containers(all=True))
    r = dev.post(f"{stack.docker()}/containers", json={"image": "no-such-image:1", "name": "x1"})
    assert r.status_code == 404 and "no-such-image" in r.json()["detail"]
    assert len(engine.containers(all=True)) == before


def test_a_taken_name_is_409_with_the_engines_reason(
    stack: DockerStack, dev: httpx.Client, container: str
) -> None:
    engine = stack.cp.docker.engine_of(stack.vm_id)
    before = len(engine.containers(all=True))
    r = dev.post(
        f"{stack.docker()}/containers", json={"image": "busybox:latest", "name": container}
    )
    assert r.status_code == 409 and "already in use" in r.json()["detail"]
    assert len(engine.containers(all=True)) == before


def test_a_port_taken_in_the_vm_leaves_no_container(stack: DockerStack, dev: httpx.Client) -> None:
    engine = stack.cp.docker.engine_of(stack.vm_id)
    first = dev.post(f"{stack.docker()}/containers", json={
        "image": "busybox:latest", "name": "porta", "command": ["sleep", "300"],
        "ports": [{"host_port": 9090, "container_port": 80}]})  # fmt: skip
    assert first.status_code == 201, first.text
    try:
        before = len(engine.containers(all=True))
        r = dev.post(f"{stack.docker()}/containers", json={
            "image": "busybox:latest", "name": "portb", "command": ["sleep", "300"],
            "ports": [{"host_port": 9090, "container_port": 80}]})  # fmt: skip
        assert r.status_code >= 400 and "9090" in r.json()["detail"]
        assert len(engine.containers(all=True)) == before  # portb was removed again
    finally:
        dev.delete(f"{stack.docker()}/containers/porta", params={"force": True})


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {"image": "busybox:latest", "ports": [{"host_port": 0, "container_port": 80}]},
            422,
            "host_port",
        ),
        (
            {"image": "busybox:latest", "ports": [{"host_port": 70000, "container_port": 80}]},
            422,
            "host_port",
        ),
        ({"image": "busybox:latest", "memory": 1024}, 400, "6 MiB"),
        ({"image": "busybox:latest", "cpus": 0}, 422, "cpus"),
        ({"image": "busybox:latest", "restart": "sometimes"}, 422, "restart"),
        ({"image": "busybox:latest", "name": "bad name"}, 422, "name"),
        ({"image": "busybox:latest", "memory": "1G"}, 422, "memory"),
        ({"image": ""}, 422, "image"),
    ],
)
def test_bad_container_specs_are_refused_clearly(
    stack: DockerStack, dev: httpx.Client, body: dict[str, Any], status: int, words: str
) -> None:
    before = _count(stack, dev)
    r = dev.post(f"{stack.docker()}/containers", json=body)
    assert r.status_code == status, r.text
    assert words in r.text
    assert _count(stack, dev) == before


def test_an_unknown_container_is_404(stack: DockerStack, dev: httpx.Client) -> None:
    calls = [("GET", "/containers/nope"), ("POST", "/containers/nope/start"),
             ("GET", "/containers/nope/logs"), ("DELETE", "/containers/nope")]  # fmt: skip
    for method, path in calls:
        r = dev.request(method, f"{stack.docker()}{path}")
        assert r.status_code == 404 and "nope" in r.json()["detail"], (method, path, r.text)


def test_a_stopped_vm_says_so_with_503(stack: DockerStack, dev: httpx.Client) -> None:
    r = dev.get(f"{stack.docker(stack.stopped_vm_id)}/containers")
    assert r.status_code == 503
    assert r.json()["code"] == "engine-unavailable" and "start the VM" in r.json()["detail"]


def test_every_write_is_audited(stack: DockerStack, dev: httpx.Client, container: str) -> None:
    dev.post(f"{stack.docker()}/containers/{container}/stop")
    with stack.client("viewer") as viewer:
        assert viewer.post(f"{stack.docker()}/containers/{container}/start").status_code == 403
    starts = stack.audit("docker.container.stop")
    assert starts[0]["actor"] == "dev" and starts[0]["result"] == "accepted"
    assert container in starts[0]["object"]
    refused = stack.audit("docker.container.start")
    assert refused[0]["actor"] == "viewer" and refused[0]["result"] == "refused:forbidden"
    created = [e for e in stack.audit("docker.container.create") if container in e["object"]]
    assert created and created[0]["result"] == "accepted"


# -- who may do what: every Docker route, for each role --------------------------------------

HOLDS = {
    "admin": {"Docker.View", "Docker.Operate", "Docker.Manage", "Docker.Exec"},
    "dev": {"Docker.View", "Docker.Operate", "Docker.Manage", "Docker.Exec"},
    "operator": {"Docker.View", "Docker.Operate"},
    "viewer": {"Docker.View"},
    "vmonly": set(),
    "outsider": None,  # cannot even see the VM
}


def test_every_docker_route_for_each_role(stack: DockerStack, container: str) -> None:
    # Calls whose success changes nothing lasting (missing objects answer 404 once allowed).
    routes = [
        ("GET", "/containers", None, "Docker.View"),
        ("GET", f"/containers/{container}", None, "Docker.View"),
        ("GET", f"/containers/{container}/logs", None, "Docker.View"),
        ("GET", f"/containers/{container}/stats", None, "Docker.View"),
        ("GET", "/images", None, "Docker.View"),
        ("GET", "/environment", None, "Docker.View"),
        ("POST", f"/containers/{container}/restart", None, "Docker.Operate"),
        ("POST", "/containers", {"image": "no-such-image:1"}, "Docker.Manage"),
        ("DELETE", "/containers/no-such-container", None, "Docker.Manage"),
        ("DELETE", "/images/no-such-image:1", None, "Docker.Manage"),
        ("POST", f"/containers/{container}/exec", {"command": ["true"]}, "Docker.Exec"),
    ]
    for user, held in HOLDS.items():
        with stack.client(user) as client:
            for method, path, body, privilege in routes:
                r = client.request(method, f"{stack.docker()}{path}", json=body)
                where = (user, method, path, r.status_code, r.text[:200])
                if held is None:
                    assert r.status_code == 404 and "no VM" in r.json()["detail"], where
                elif privilege in held:
                    assert r.status_code in (200, 201, 204, 404), where
                    if r.status_code == 404:
                        assert "no-such" in r.json()["detail"], where
                else:
                    assert r.status_code == 403 and privilege in r.json()["detail"], where


# -- the container watch -----------------------------------------------------------------------


def _events(
    stack: DockerStack, user: str, seen: list[dict[str, Any]], stop: threading.Event
) -> None:
    with stack.client(user, timeout=httpx.Timeout(10, read=None)) as client:
        with client.stream("GET", "/events") as response:
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))


def test_the_list_follows_the_engine_and_events_reach_only_viewers(
    stack: DockerStack, dev: httpx.Client
) -> None:
    names(stack, dev)  # the server follows this VM's engine from here on
    engine = stack.cp.docker.engine_of(stack.vm_id)
    seen: dict[str, list[dict[str, Any]]] = {"dev": [], "outsider": [], "vmonly": []}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_events, args=(stack, user, seen[user], stop), daemon=True)
        for user in seen
    ]
    for t in threads:
        t.start()
    time.sleep(1)
    made = []
    try:
        # Made behind dockvisor's back, straight on the engine: the list shows it anyway.
        made.append(engine.run(ContainerSpec("busybox:latest", ["sleep", "300"],
                                             name=f"behind-{secrets.token_hex(3)}")))  # fmt: skip
        name = engine.inspect(made[0])["Name"].lstrip("/")
        wait_until(lambda: names(stack, dev).get(name) == "running", what="the list shows it")
        wait_until(
            lambda: any(
                e["type"] == "container" and e["data"]["name"] == name for e in seen["dev"]
            ),  # fmt: skip
            what="the developer hears of it",
        )
        # The stream breaks: the watch lists again when it is back.
        watch = stack.cp.docker._watches[stack.vm_id]
        assert watch._stream is not None
        watch._stream.close()
        made.append(engine.run(ContainerSpec("busybox:latest", ["sleep", "300"],
                                             name=f"after-{secrets.token_hex(3)}")))  # fmt: skip
        second = engine.inspect(made[1])["Name"].lstrip("/")
        wait_until(lambda: second in names(stack, dev), timeout=20, what="a re-list")
    finally:
        stop.set()
        for cid in made:
            engine.remove(cid, force=True)
    assert not [e for e in seen["outsider"] if e["type"] == "container"]
    assert not [e for e in seen["vmonly"] if e["type"] == "container"]
