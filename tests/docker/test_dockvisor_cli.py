"""`dockvisor docker VM ...` through a server (--server): the same work as the docker CLI,
with the server's privileges and clear one-line errors."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.docker.conftest import DockerStack

pytestmark = pytest.mark.vm

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))


def dv(stack: DockerStack, user: str, *args: str, stdin: bytes | None = None
       ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    env = {**os.environ, "DOCKVISOR_SERVER": stack.url, "DOCKVISOR_TOKEN": stack.tokens[user]}
    return subprocess.run([DOCKVISOR, *args], env=env, capture_output=True, timeout=180,
                          input=stdin)  # fmt: skip


def ok(stack: DockerStack, user: str, *args: str, stdin: bytes | None = None) -> str:
    out = dv(stack, user, *args, stdin=stdin)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_containers_from_start_to_end(stack: DockerStack) -> None:
    vm, name = stack.vm_name, f"dv-{secrets.token_hex(3)}"
    cid = ok(stack, "dev", "docker", vm, "run", "-d", "--name", name, "-e", "N=1",
             "--memory", "64MiB", "--cpus", "0.5", "-p", "8181:80", "busybox:latest",
             "sh", "-c", "echo hello-$N; sleep 300").strip()  # fmt: skip
    assert len(cid) == 64
    try:
        table = ok(stack, "viewer", "docker", vm, "ps")
        assert name in table and "8181->80/tcp" in table
        assert "hello-1" in ok(stack, "viewer", "docker", vm, "logs", name)
        out = dv(stack, "dev", "docker", vm, "exec", name, "sh", "-c", "echo x-$N; exit 6")
        assert out.returncode == 6 and out.stdout.decode().strip() == "x-1"
        # -i: over the server's websocket, stdin in, output and status back.
        out = dv(stack, "dev", "docker", vm, "exec", "-i", name, "sh",
                 stdin=b"echo via-websocket\nexit 5\n")  # fmt: skip
        assert out.returncode == 5 and b"via-websocket" in out.stdout
        ok(stack, "operator", "docker", vm, "stop", name)
        assert "Exited" in ok(stack, "viewer", "docker", vm, "ps", "-a")
        ok(stack, "dev", "docker", vm, "rm", name)
        assert name not in ok(stack, "viewer", "docker", vm, "ps", "-a")
    finally:
        dv(stack, "dev", "docker", vm, "rm", "-f", name)


def test_run_in_the_foreground_prints_and_exits_with_the_status(stack: DockerStack) -> None:
    out = dv(stack, "dev", "docker", stack.vm_name, "run", "--rm", "busybox:latest",
             "sh", "-c", "echo fg; exit 9")  # fmt: skip
    assert out.returncode == 9 and out.stdout.decode().strip() == "fg"


def test_load_and_remove_an_image(stack: DockerStack, tmp_path: Path) -> None:
    engine = stack.cp.docker.engine_of(stack.vm_id)
    tag = f"dvt/cli:{secrets.token_hex(3)}"
    engine.tag_image("busybox:latest", *tag.split(":"))
    with engine.save_image(tag) as stream:
        (tmp_path / "image.tar").write_bytes(b"".join(stream))
    engine.remove_image(tag)
    out = ok(stack, "dev", "docker", stack.vm_name, "load", "-i", str(tmp_path / "image.tar"))
    assert f"Loaded image: {tag}" in out
    assert tag in ok(stack, "viewer", "docker", stack.vm_name, "images")
    ok(stack, "dev", "docker", stack.vm_name, "rmi", tag)
    assert tag not in ok(stack, "viewer", "docker", stack.vm_name, "images")


def test_refusals_and_bad_input_are_one_clear_line(stack: DockerStack) -> None:
    vm = stack.vm_name
    cases = [
        (("viewer", "docker", vm, "run", "-d", "busybox:latest"), "lacks Docker.Manage"),
        (("operator", "docker", vm, "exec", "x1", "true"), "lacks Docker.Exec"),
        (("dev", "docker", vm, "run", "-d", "-p", "80", "busybox:latest"), "bad port '80'"),
        (("dev", "docker", vm, "run", "-d", "-m", "lots", "busybox:latest"), "lots"),
        (("dev", "docker", vm, "run", "-d", "nosuchimage:1"), "nosuchimage"),
        (("dev", "docker", vm, "logs", "nosuchcontainer"), "No such container"),
        (("outsider", "docker", vm, "ps"), "no VM named"),
    ]
    for (user, *args), words in cases:
        out = dv(stack, user, *args)
        err = out.stderr.decode()
        assert out.returncode != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dockvisor: error: "), err
        assert words in err, (args, err)


def test_load_refuses_a_terminal_and_junk(stack: DockerStack, tmp_path: Path) -> None:
    junk = io.BytesIO()
    with tarfile.open(fileobj=junk, mode="w") as tar:
        info = tarfile.TarInfo("not-an-image")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "junk.tar").write_bytes(junk.getvalue())
    out = dv(stack, "dev", "docker", stack.vm_name, "load", "-i", str(tmp_path / "junk.tar"))
    assert out.returncode != 0 and out.stderr.decode().startswith("dockvisor: error: ")
