"""`dockvisor docker VM ...`: containers and images in a VM, with the docker CLI's words.

Straight to the VM's engine on the hypervisor host, or through a server with --server
(the server checks Docker.View/Operate/Manage/Exec and audits). For the stock docker CLI
itself, `dockvisor vm endpoint VM` prints the environment that points it at the VM.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from dockvisor.cli import render
from dockvisor.cli.docker_backends import DockerBackend
from dockvisor.domain.sizes import format_size, parse_size
from dockvisor.engines.docker import ContainerSpec, PortBinding
from dockvisor.errors import InvalidInput

__all__ = ["docker"]


def _root(ctx: click.Context) -> Any:
    return ctx.find_root().obj


def _backend(ctx: click.Context) -> DockerBackend:
    backend: DockerBackend = _root(ctx).backend.docker(ctx.obj)
    return backend


def _emit(ctx: click.Context, value: Any, human: Any) -> None:
    _root(ctx).emit(value, human)


@click.group()
@click.argument("vm")
@click.pass_context
def docker(ctx: click.Context, vm: str) -> None:
    """Containers and images in VM (its Docker engine, over mutual TLS)."""
    ctx.obj = vm


# -- reading ---------------------------------------------------------------------------


def _age(created: int) -> str:
    seconds = max(0, int(datetime.now(UTC).timestamp()) - int(created))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"


def _ports(ports: Sequence[dict[str, Any]]) -> str:
    shown = []
    for p in ports:
        if p.get("host_port"):
            shown.append(f"{p['host_port']}->{p['container_port']}/{p['protocol']}")
        else:
            shown.append(f"{p['container_port']}/{p['protocol']}")
    return ", ".join(sorted(set(shown)))


@docker.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped containers too.")
@click.pass_context
def ps(ctx: click.Context, show_all: bool) -> None:
    """List containers (running ones unless -a)."""
    containers = _backend(ctx).ps(all=show_all)
    rows = [
        [c["id"][:12], c["image"], c["command"][:30], c["status"], _ports(c["ports"]), c["name"]]
        for c in containers
    ]
    _emit(ctx, containers, lambda: render.table(
        ["CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "PORTS", "NAMES"], rows))  # fmt: skip


@docker.command("inspect")
@click.argument("container")
@click.pass_context
def inspect(ctx: click.Context, container: str) -> None:
    """The engine's inspect document of CONTAINER (JSON)."""
    info = _backend(ctx).inspect(container)
    click.echo(render.as_json(info))


@docker.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the container writes.")
@click.option("-n", "--tail", type=click.IntRange(0), help="Only the last N lines.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.argument("container")
@click.pass_context
def logs(ctx: click.Context, follow: bool, tail: int | None, timestamps: bool,
         container: str) -> None:  # fmt: skip
    """What CONTAINER printed (stdout and stderr), byte for byte."""
    backend = _backend(ctx)
    out = sys.stdout.buffer
    if not follow:
        out.write(backend.logs(container, tail=tail, timestamps=timestamps))
        out.flush()
        return
    for chunk in backend.follow_logs(container, tail=tail, timestamps=timestamps):
        out.write(chunk)
        out.flush()


@docker.command("images")
@click.pass_context
def images(ctx: click.Context) -> None:
    """List images."""
    found = _backend(ctx).images()
    rows = [
        [tag, i["id"].removeprefix("sha256:")[:12], _age(i["created"]), format_size(i["size"])]
        for i in found
        for tag in (i["tags"] or ["<none>"])
    ]
    _emit(ctx, found, lambda: render.table(["IMAGE", "ID", "CREATED", "SIZE"], rows))


# -- changing --------------------------------------------------------------------------


def _port(text: str) -> PortBinding:
    """[IP:]HOST:CONTAINER[/PROTO], as docker run -p takes it."""
    spec, _, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    try:
        if len(parts) == 3:
            return PortBinding(int(parts[1]), int(parts[2]), proto or "tcp", parts[0])
        if len(parts) == 2:
            return PortBinding(int(parts[0]), int(parts[1]), proto or "tcp")
    except ValueError:
        pass
    raise InvalidInput(f"bad port {text!r}: use [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]")


def _env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key or not sep:
            raise InvalidInput(f"bad environment variable {pair!r}: use KEY=VALUE")
        env[key] = value
    return env


# Options end at IMAGE (run) or CONTAINER (exec): what follows is the command's own.
_COMMAND_LINE = {"allow_interspersed_args": False}


@docker.command("run", context_settings=_COMMAND_LINE)
@click.option("-d", "--detach", is_flag=True, help="Start it and print its id.")
@click.option("--rm", "remove", is_flag=True, help="Remove it when it exits (not with -d).")
@click.option("--name", help="Its name.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("-p", "--publish", "ports", multiple=True,
              help="[IP:]HOST_PORT:CONTAINER_PORT[/udp]: a VM port (repeatable).")  # fmt: skip
@click.option("-v", "--volume", "volumes", multiple=True, help="SRC:DST[:ro] (repeatable).")
@click.option("--restart", default="no", show_default=True,
              help="no, always, unless-stopped or on-failure[:N].")  # fmt: skip
@click.option("--cpus", type=float, help="CPU limit, in vCPUs (0.5 is half of one).")
@click.option("-m", "--memory", help="Memory limit, e.g. 256MiB.")
@click.option("-t", "--tty", is_flag=True, help="Give it a terminal.")
@click.argument("image")
@click.argument("command", nargs=-1)
@click.pass_context
def run(ctx: click.Context, detach: bool, remove: bool, name: str | None, env: tuple[str, ...],
        ports: tuple[str, ...], volumes: tuple[str, ...], restart: str, cpus: float | None,
        memory: str | None, tty: bool, image: str, command: tuple[str, ...]) -> None:  # fmt: skip
    """Create and start a container from IMAGE (which must be in the VM: `images`, `load`).

    Without -d, print its output until it exits, and exit with its status.
    """
    if detach and remove:
        raise InvalidInput("--rm and -d do not go together here: remove it with `rm` later")
    spec = ContainerSpec(
        image=image,
        command=list(command) or None,
        name=name,
        env=_env(env),
        ports=[_port(p) for p in ports],
        volumes=list(volumes),
        restart_policy=restart,
        cpus=cpus,
        memory=parse_size(memory, what="memory limit") if memory else None,
        tty=tty,
    )
    backend = _backend(ctx)
    brief = backend.run(spec, start=True)
    if detach:
        _emit(ctx, brief, brief["id"])
        return
    try:
        out = sys.stdout.buffer
        for chunk in backend.follow_logs(brief["id"], tail=None, timestamps=False):
            out.write(chunk)
            out.flush()
        code = backend.inspect(brief["id"]).get("State", {}).get("ExitCode", 1)
    finally:
        if remove:
            backend.remove(brief["id"], force=True)
    ctx.exit(int(code))


def _each(ctx: click.Context, containers: Sequence[str], action: str) -> None:
    backend = _backend(ctx)
    done = [backend.act(c, action) for c in containers]
    _emit(ctx, done, "\n".join(c for c in containers))


for _action, _help in (
    ("start", "Start stopped containers."),
    ("stop", "Stop containers (SIGTERM, then SIGKILL after 10 s)."),
    ("restart", "Restart containers."),
    ("pause", "Freeze containers."),
    ("unpause", "Thaw paused containers."),
    ("kill", "Kill containers (SIGKILL)."),
):

    def _command(ctx: click.Context, containers: tuple[str, ...], _a: str = _action) -> None:
        _each(ctx, containers, _a)

    docker.command(_action, help=_help)(
        click.argument("containers", nargs=-1, required=True)(click.pass_context(_command))
    )


@docker.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill it first if it runs.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove containers."""
    backend = _backend(ctx)
    for c in containers:
        backend.remove(c, force=force)
    _emit(ctx, list(containers), "\n".join(containers))


@docker.command("exec", context_settings=_COMMAND_LINE)
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin on.")
@click.option("-t", "--tty", is_flag=True, help="Give it a terminal.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def exec_(ctx: click.Context, interactive: bool, tty: bool, container: str,
          command: tuple[str, ...]) -> None:  # fmt: skip
    """Run COMMAND in a running container; exit with its status."""
    backend = _backend(ctx)
    if interactive or tty:
        ctx.exit(backend.exec_interactive(container, list(command), tty=tty))
    result = backend.exec_run(container, list(command))
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.buffer.flush()
    ctx.exit(result.exit_code)


@docker.command("load")
@click.option("-i", "--input", "source", type=click.File("rb"), default="-",
              help="A `docker save` tarball [stdin].")  # fmt: skip
@click.pass_context
def load(ctx: click.Context, source: Any) -> None:
    """Load images from a `docker save` tarball."""
    if source.isatty():
        raise InvalidInput("give the tarball with -i FILE or on stdin, not a terminal")
    loaded = _backend(ctx).load(source)
    _emit(ctx, loaded, "\n".join(f"Loaded image: {name}" for name in loaded))


@docker.command("rmi")
@click.option("-f", "--force", is_flag=True, help="Even if containers use it.")
@click.argument("images_", metavar="IMAGES", nargs=-1, required=True)
@click.pass_context
def rmi(ctx: click.Context, force: bool, images_: tuple[str, ...]) -> None:
    """Remove images."""
    backend = _backend(ctx)
    for image in images_:
        backend.remove_image(image, force=force)
    _emit(ctx, list(images_), "\n".join(f"Untagged: {i}" for i in images_))
