"""The stock docker CLI, pointed at a delegated VM through dockvisor's engine gateway with
the environment `dockvisor vm endpoint --server` prints: each docker command is allowed
with a token holding its privilege and refused, clearly, with one that lacks it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.conftest import DockerStack
from tests.docker_cli import docker_cli

pytestmark = pytest.mark.vm

DOCKER = docker_cli()  # AssertionError if setup has not installed one
DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))


class Cli:
    """The docker CLI as one user, set up by `dockvisor vm endpoint`."""

    def __init__(self, stack: DockerStack, user: str, home: Path, vm: str | None = None) -> None:
        env = {
            **os.environ,
            "DOCKVISOR_SERVER": stack.url,
            "DOCKVISOR_TOKEN": stack.tokens[user],
            "XDG_CONFIG_HOME": str(home / user),
        }
        out = subprocess.run(
            [DOCKVISOR, "--json", "vm", "endpoint", vm or stack.vm_id],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        self.env = {k: v for k, v in os.environ.items() if k not in data["unset"]}
        self.env.update(data["env"])

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=120,
            input=stdin,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str | None = None) -> str:
        out = self.run(*args, stdin=stdin)
        assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"
        return out.stdout

    def refused(self, *args: str, privilege: str) -> str:
        out = self.run(*args)
        assert out.returncode != 0, f"docker {' '.join(args)} was allowed"
        assert f"lacks {privilege}" in out.stderr, out.stderr
        return out.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


def by_hand(stack: DockerStack, user: str, home: Path) -> dict[str, str]:
    """The docker CLI's environment for `user`, written by hand (for those who may not
    even ask dockvisor for it)."""
    config = home / f"{user}-by-hand"
    config.mkdir(exist_ok=True)
    (config / "config.json").write_text(
        json.dumps({"HttpHeaders": {"Authorization": f"Bearer {stack.tokens[user]}"}})
    )
    return {**os.environ, "DOCKER_CONFIG": str(config),
            "DOCKER_HOST": f"{stack.gateway}/vms/{stack.vm_id}"}  # fmt: skip


@pytest.fixture(scope="module")
def clis(stack: DockerStack, home: Path) -> dict[str, Cli]:
    made = {user: Cli(stack, user, home) for user in ("dev", "operator", "viewer")}
    # VM.View without Docker.View: `vm endpoint` refuses them (see below), so by hand.
    made["vmonly"] = Cli.__new__(Cli)
    made["vmonly"].env = by_hand(stack, "vmonly", home)
    return made


def test_endpoint_needs_docker_view(stack: DockerStack, home: Path) -> None:
    env = {**os.environ, "DOCKVISOR_SERVER": stack.url, "XDG_CONFIG_HOME": str(home / "vo"),
           "DOCKVISOR_TOKEN": stack.tokens["vmonly"]}  # fmt: skip
    out = subprocess.run([DOCKVISOR, "vm", "endpoint", stack.vm_id], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "lacks Docker.View" in out.stderr


@pytest.fixture
def box(clis: dict[str, Cli]) -> Iterator[str]:
    """A running container made through the gateway by the developer."""
    name = f"cli-{secrets.token_hex(3)}"
    clis["dev"].ok("run", "-d", "--name", name, "busybox:latest",
                   "sh", "-c", "while true; do echo tick; sleep 0.2; done")  # fmt: skip
    yield name
    clis["dev"].run("rm", "-f", name)


def test_the_environment_points_at_the_gateway_with_a_token(
    stack: DockerStack, clis: dict[str, Cli]
) -> None:
    env = clis["dev"].env
    assert env["DOCKER_HOST"] == f"{stack.gateway}/vms/{stack.vm_id}"
    config = json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())
    assert config["HttpHeaders"]["Authorization"] == f"Bearer {stack.tokens['dev']}"
    assert oct(Path(env["DOCKER_CONFIG"], "config.json").stat().st_mode)[-3:] == "600"
    assert "DOCKER_TLS_VERIFY" not in env and "DOCKER_CERT_PATH" not in env


def test_run_ps_logs_exec_stop_rm_for_those_who_may(clis: dict[str, Cli]) -> None:
    dev, operator, viewer = clis["dev"], clis["operator"], clis["viewer"]
    name = f"cli-{secrets.token_hex(3)}"
    cid = dev.ok("run", "-d", "--name", name, "-e", "WHO=dev", "busybox:latest",
                 "sh", "-c", "echo hello-$WHO; sleep 300").strip()  # fmt: skip
    assert len(cid) == 64
    try:
        assert name in viewer.ok("ps")
        assert name in dev.ok("ps", "--filter", f"name={name}", "--format", "{{.Names}}")
        deadline = time.monotonic() + 20
        while "hello-dev" not in viewer.ok("logs", name) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "hello-dev" in viewer.ok("logs", name)
        assert dev.ok("exec", name, "sh", "-c", "echo in-$WHO").strip() == "in-dev"
        assert dev.run("exec", name, "sh", "-c", "exit 7").returncode == 7
        assert operator.ok("stop", "-t", "1", name).strip() == name
        assert "Exited" in viewer.ok("ps", "-a", "--filter", f"name={name}")
        assert dev.ok("rm", name).strip() == name
        assert name not in viewer.ok("ps", "-a")
    finally:
        dev.run("rm", "-f", name)


def test_each_command_is_refused_to_a_token_without_its_privilege(
    clis: dict[str, Cli], box: str
) -> None:
    viewer, operator, vmonly = clis["viewer"], clis["operator"], clis["vmonly"]
    viewer.refused("run", "-d", "busybox:latest", "true", privilege="Docker.Manage")
    vmonly.refused("ps", privilege="Docker.View")
    vmonly.refused("logs", box, privilege="Docker.View")
    operator.refused("exec", box, "true", privilege="Docker.Exec")
    viewer.refused("stop", box, privilege="Docker.Operate")
    operator.refused("rm", "-f", box, privilege="Docker.Manage")
    viewer.refused("pull", "busybox:latest", privilege="Docker.Manage")
    # Nothing of it happened: the container still runs, as it was.
    assert box in clis["dev"].ok("ps", "--filter", f"name={box}", "--format", "{{.Names}}")


def test_a_vm_not_delegated_is_not_there(stack: DockerStack, home: Path) -> None:
    # The outsider cannot even get the environment for the VM...
    env = {**os.environ, "DOCKVISOR_SERVER": stack.url, "XDG_CONFIG_HOME": str(home / "o"),
           "DOCKVISOR_TOKEN": stack.tokens["outsider"]}  # fmt: skip
    out = subprocess.run([DOCKVISOR, "vm", "endpoint", stack.vm_id], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "no VM" in out.stderr
    # ...and pointing the docker CLI at it by hand with their token gets the same answer
    # as a VM that does not exist.
    env = by_hand(stack, "outsider", home)
    for vm in (stack.vm_id, "00000000-0000-0000-0000-000000000000"):
        env["DOCKER_HOST"] = f"{stack.gateway}/vms/{vm}"
        out = subprocess.run([DOCKER, "ps"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode != 0 and f"no VM {vm}" in out.stderr


def test_a_missing_or_wrong_token_is_refused(stack: DockerStack, home: Path) -> None:
    for headers, words in (({}, "no dockvisor token"),
                           ({"Authorization": "Bearer nope"}, "token")):  # fmt: skip
        config = home / f"bad-{secrets.token_hex(2)}"
        config.mkdir()
        (config / "config.json").write_text(json.dumps({"HttpHeaders": headers}))
        out = subprocess.run(
            [DOCKER, "ps"],
            env={**os.environ, "DOCKER_CONFIG": str(config),
                 "DOCKER_HOST": f"{stack.gateway}/vms/{stack.vm_id}"},  # fmt: skip
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode != 0 and words in out.stderr.lower(), out.stderr


def test_streaming_commands_work_through_the_gateway(clis: dict[str, Cli], box: str) -> None:
    dev = clis["dev"]
    # logs -f: lines keep coming while the container runs.
    follow = subprocess.Popen([DOCKER, "logs", "-f", "--tail", "0", box], env=dev.env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follow.stdout is not None
        lines = [follow.stdout.readline() for _ in range(3)]
        assert all(line.strip() == "tick" for line in lines)
    finally:
        follow.kill()
        follow.wait()
    # exec -i: stdin goes in, the shell sees its end, output and status come back.
    out = dev.run("exec", "-i", box, "sh", stdin="echo from-stdin\nexit 4\n")
    assert out.returncode == 4 and out.stdout.strip() == "from-stdin"
    out = dev.run("exec", "-i", box, "cat", stdin="all of it\n")
    assert out.returncode == 0 and out.stdout == "all of it\n"
    # run without -d: attach, start, wait, remove.
    out = dev.run("run", "--rm", "busybox:latest", "sh", "-c", "echo attached; exit 3")
    assert out.returncode == 3 and out.stdout.strip() == "attached"
    # events: what happened to the container, in the engine's own stream.
    since = str(int(time.time()) - 1)
    dev.ok("restart", "-t", "1", box)
    # (--until in the future makes `events` wait for it; 3 s of slack for a guest clock
    # a little ahead of the host's)
    events = dev.ok("events", "--since", since, "--until", str(int(time.time()) + 3),
                    "--filter", f"container={box}", "--format", "{{.Action}}")  # fmt: skip
    assert "restart" in events.split()


def test_gateway_writes_are_audited(stack: DockerStack, clis: dict[str, Cli], box: str) -> None:
    clis["operator"].ok("pause", box)
    clis["operator"].ok("unpause", box)
    clis["viewer"].run("kill", box)
    entries = stack.audit("docker.container.pause")
    assert entries[0]["actor"] == "operator" and entries[0]["result"] == "accepted"
    refused = stack.audit("docker.container.kill")
    assert refused[0]["actor"] == "viewer" and refused[0]["result"].startswith("refused")
