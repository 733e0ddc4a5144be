"""The `dockvisor` command: parse, call one service, print.

Errors print one line on stderr, `dockvisor: error: ...`, and exit non-zero:
2 for input that cannot be used, 1 for everything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from dockvisor import __version__
from dockvisor.cli import catalog_cmds, credentials, docker_cmds, render
from dockvisor.cli import console as console_cli
from dockvisor.cli import metrics as metrics_cli
from dockvisor.cli import server as server_cli
from dockvisor.cli.backends import ApiClient, Backend, LocalBackend, RemoteBackend
from dockvisor.cli.credentials import host_credentials
from dockvisor.cli.progress import ProgressBar
from dockvisor.domain.sizes import format_size, parse_size
from dockvisor.drivers.base import HypervisorDriver, no_progress
from dockvisor.drivers.registry import open_driver
from dockvisor.errors import DockvisorError, InvalidInput, Unauthorized
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.engines import EngineAccess

__all__ = ["main"]

DEFAULT_URI = "qemu:///system"


class Context:
    def __init__(self, uri: str, as_json: bool, server: str | None = None,
                 data: str | None = None, database_url: str | None = None) -> None:  # fmt: skip
        self.uri = uri
        self.as_json = as_json
        self.server = server
        self.data = data
        self.database_url = database_url
        self._driver: HypervisorDriver | None = None
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        """The server's API with --server, else the hypervisor directly."""
        if self._backend is None:
            if self.server:
                token = os.environ.get("DOCKVISOR_TOKEN") or credentials.token_for(self.server)
                if not token:
                    raise Unauthorized(
                        f"no API token for {self.server}: run `dockvisor login --server "
                        f"{self.server}` or set DOCKVISOR_TOKEN"
                    )
                self._backend = RemoteBackend(ApiClient(self.server, token))
            else:
                self._backend = LocalBackend(self.driver, self.engines)
        return self._backend

    @property
    def engines(self) -> EngineAccess:
        """The PKI of the data directory, for reaching VM engines directly."""
        return EngineAccess.at(Path(self.data)) if self.data else EngineAccess.default()

    def local_only(self, what: str) -> None:
        if self.server:
            raise InvalidInput(f"{what} works on the hypervisor host, not through --server")

    @property
    def driver(self) -> HypervisorDriver:
        if self._driver is None:
            self._driver = open_driver(self.uri, host_credentials(self.uri))
        return self._driver

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()

    def emit(self, value: Any, human: str | Callable[[], str]) -> None:
        if self.as_json:
            click.echo(render.as_json(value))
        else:
            click.echo(human() if callable(human) else human)

    @contextmanager
    def progress(self, title: str) -> Iterator[ProgressBar]:
        bar = ProgressBar(title, enabled=False if self.as_json else None)
        try:
            yield bar
        finally:
            bar.close()


pass_ctx = click.make_pass_decorator(Context)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"dockvisor: error: {message}", err=True)
    sys.exit(code)


def _size(text: str | None, what: str) -> int | None:
    return None if text is None else parse_size(text, what=what)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--hypervisor",
    "uri",
    envvar="DOCKVISOR_HYPERVISOR",
    default=DEFAULT_URI,
    show_default=True,
    help="URI of the hypervisor: libvirt (qemu:///system...) or a XAPI pool "
    "(xapi://HOST, user and password from DOCKVISOR_HOST_USER and DOCKVISOR_HOST_PASSWORD) "
    "(env DOCKVISOR_HYPERVISOR).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--server",
    envvar="DOCKVISOR_SERVER",
    help="Drive a dockvisor server's API instead of the hypervisor (env "
    "DOCKVISOR_SERVER; token from DOCKVISOR_TOKEN or `dockvisor login`).",
)
@click.option(
    "--data-dir",
    "data",
    envvar="DOCKVISOR_DATA_DIR",
    help="The server's state directory (env DOCKVISOR_DATA_DIR) [~/.local/share/dockvisor].",
)
@click.option(
    "--database-url",
    envvar="DOCKVISOR_DATABASE_URL",
    help="SQLAlchemy URL of the server's database (env DOCKVISOR_DATABASE_URL) "
    "[SQLite in the data directory].",
)
@click.version_option(__version__, prog_name="dockvisor")
@click.pass_context
def cli(ctx: click.Context, uri: str, as_json: bool, server: str | None, data: str | None,
        database_url: str | None) -> None:  # fmt: skip
    """Docker-ready VMs of an exact size: create, snapshot, roll back, clone, grow live."""
    ctx.obj = Context(uri, as_json, server, data, database_url)
    ctx.call_on_close(ctx.obj.close)


# -- host and image --------------------------------------------------------------------


@cli.group("host", invoke_without_command=True)
@click.pass_context
def host(click_ctx: click.Context) -> None:
    """Show the hypervisor host (size, acceleration, capabilities); with --server, list
    and add the hosts a dockvisor server manages."""
    if click_ctx.invoked_subcommand is None:
        ctx = click_ctx.find_object(Context)
        assert ctx is not None
        ctx.local_only("host")
        info = vm_service.host_info(ctx.driver)
        ctx.emit(info, lambda: render.host_details(info))


def _server_api(ctx: Context, what: str) -> RemoteBackend:
    if not ctx.server:
        raise InvalidInput(f"{what} works through a dockvisor server: give --server URL")
    backend = ctx.backend
    assert isinstance(backend, RemoteBackend)
    return backend


@host.command("list")
@pass_ctx
def host_list(ctx: Context) -> None:
    """The hosts the server manages, with whether they answer."""
    hosts = _server_api(ctx, "host list").api.request("GET", "/hosts")
    ctx.emit(hosts, lambda: render.table(
        ["ID", "NAME", "FAMILY", "URI", "STATE"],
        [[str(h["id"]), h["name"], h["family"], h["uri"], h["state"]] for h in hosts],
    ))  # fmt: skip


@host.command("add")
@click.argument("name")
@click.argument("uri")
@click.option("--user", help="A XAPI pool's user (e.g. root).")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="Read the pool's password from this file ('-': standard input); else "
    "DOCKVISOR_HOST_PASSWORD, else it is asked for.",
)
@click.option(
    "--certificate",
    type=click.File("r"),
    help="The pool's HTTPS certificate (PEM) to trust, when no known authority signed it.",
)
@pass_ctx
def host_add(ctx: Context, name: str, uri: str, user: str | None,
             password_file: TextIO | None, certificate: TextIO | None) -> None:  # fmt: skip
    """Register a hypervisor host with the server: a libvirt URI (qemu:///system,
    qemu+ssh://HOST/system...) or a XAPI pool (xapi://HOST or https://HOST) with
    --user; the password is never a command-line argument."""
    api = _server_api(ctx, "host add").api
    body: dict[str, Any] = {"name": name, "uri": uri}
    if user:
        body["user"] = user
        body["password"] = _pool_password(password_file)
    if certificate is not None:
        body["certificate"] = certificate.read()
    added = api.request("POST", "/hosts", json=body)
    ctx.emit(added, f"host {added['name']} added (id {added['id']}, {added['family']}, "
                    f"{added['state']})")  # fmt: skip


@cli.group()
def task() -> None:
    """The tasks of a dockvisor server (--server): list them, stop one."""


@task.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@pass_ctx
def task_list(ctx: Context, limit: int) -> None:
    """Your tasks, and those on VMs you can view, newest first."""
    tasks = _server_api(ctx, "task list").api.request("GET", "/tasks", params={"limit": limit})
    ctx.emit(tasks, lambda: render.table(
        ["ID", "KIND", "OBJECT", "STATE", "PROGRESS", "BY"],
        [[t["id"], t["kind"], f"{t['object_type']}:{t['object_id']}", t["state"],
          f"{t['progress']:.0%}", t["requester"]] for t in tasks],
    ))  # fmt: skip


@task.command("cancel")
@click.argument("task_id")
@pass_ctx
def task_cancel(ctx: Context, task_id: str) -> None:
    """Ask a running task to stop: it stops at its next progress report, undoes what it
    made (on a XAPI pool, the pool's own task is cancelled) and ends failed, cancelled."""
    api = _server_api(ctx, "task cancel").api
    asked = api.request("POST", f"/tasks/{task_id}/cancel")
    ctx.emit(asked, f"asked task {asked['id']} ({asked['kind']}) to stop")


def _pool_password(source: TextIO | None) -> str:
    if source is not None:
        return source.readline().rstrip("\n")
    if env := os.environ.get("DOCKVISOR_HOST_PASSWORD"):
        return env
    return str(click.prompt("Pool password", hide_input=True))


@cli.group()
def image() -> None:
    """The Docker-ready guest image (built from Debian packages)."""


@image.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this image.")
@click.option("--spares", type=int,
              help="Warm spares of the template to keep [as before; none at first]")  # fmt: skip
@pass_ctx
def image_build(ctx: Context, force: bool, spares: int | None) -> None:
    """Build the guest image and register it as the `docker-ready` template; keep its
    warm spares (a new build gets new ones)."""
    ctx.local_only("image build")
    with ctx.progress("image build") as bar:
        built, template = template_service.build_builtin_template(
            ctx.driver, force=force, progress=bar, spares=spares, engines=ctx.engines
        )
    ctx.emit(
        {"image": {"key": built.key, "directory": str(built.directory)}, "template": template},
        lambda: (
            f"image {built.key} in {built.directory}\ntemplate {template.name}: "
            f"{template.description}"
        ),
    )


# -- templates -------------------------------------------------------------------------


@cli.group()
def template() -> None:
    """Templates VMs are made from."""


@template.command("list")
@click.pass_context
def template_list(click_ctx: click.Context) -> None:
    """List templates (and which have a newer version in their catalog)."""
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    templates = ctx.backend.templates()
    newer = catalog_cmds.newer_versions(click_ctx, templates)
    data = [{**render.to_data(t), "newer_version": newer.get(t.name)} for t in templates]
    note = (
        "\nNEWER: what each catalog offered at its last fetch (`template search` fetches again)"
        if any(t.origin for t in templates)
        else ""
    )
    ctx.emit(data, lambda: render.template_rows(templates, newer) + note)


@template.command("add")
@click.argument("name")
@click.option("--disk", required=True, help="qcow2 or raw disk image on this machine.")
@click.option("--kernel", help="Kernel to boot (else the disk's own bootloader).")
@click.option("--initrd", help="Initrd for --kernel.")
@click.option("--cmdline", help="Kernel command line for --kernel.")
@click.option("--docker-port", type=int, default=2376, show_default=True,
              help="Port the guest's dockerd listens on with --tlsverify, using the "
                   "certificates on its config drive (dockvisor/engine/*.pem).")  # fmt: skip
@click.option("--no-docker", is_flag=True, help="Its guests run no Docker engine.")
@click.option("--description", default="", help="One line shown in template list.")
@pass_ctx
def template_add(ctx: Context, name: str, disk: str, kernel: str | None, initrd: str | None,
                 cmdline: str | None, docker_port: int, no_docker: bool,
                 description: str) -> None:  # fmt: skip
    """Register a template from your own disk image."""
    ctx.local_only("template add")
    with ctx.progress(f"template add {name}") as bar:
        added = template_service.add_template(
            ctx.driver,
            name=name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            docker_port=None if no_docker else docker_port,
            description=description,
            progress=bar,
        )
    ctx.emit(added, f"template {added.name} added ({format_size(added.disk_size)} disk)")


@template.command("rm")
@click.argument("name")
@pass_ctx
def template_rm(ctx: Context, name: str) -> None:
    """Remove a template no VM is based on."""
    ctx.local_only("template rm")
    template_service.remove_template(ctx.driver, name)
    ctx.emit({"removed": name}, f"template {name} removed")


@template.command("warm")
@click.argument("name")
@click.option("--spares", type=int, default=2, show_default=True,
              help="How many saved, booted spares of it the host keeps (0: none).")  # fmt: skip
@click.option("--host", "host_id", type=int, help="With --server: the host [the first].")
@pass_ctx
def template_warm(ctx: Context, name: str, spares: int, host_id: int | None) -> None:
    """Keep warm spares of a template: VMs booted once, each with its own identity,
    and saved with their Docker engine up. `vm create` resumes one in seconds instead
    of booting (unless --cold); a server refills them after each create. Their disk
    space and boot time are the host's."""
    with ctx.progress(f"template warm {name}") as bar:
        kept = ctx.backend.warm_template(name, spares, host=host_id, progress=bar)
    ready = [s for s in kept if s.ready]
    ctx.emit(kept, lambda: f"template {name}: {len(ready)} warm spare(s) ready, "
             f"{format_size(sum(s.stored for s in kept))} on the host's storage")  # fmt: skip


@template.command("spares")
@pass_ctx
def template_spares(ctx: Context) -> None:
    """List the host's warm spares: their template, size, room to grow, storage."""
    kept = ctx.backend.spares()
    ctx.emit(kept, lambda: render.spare_rows(kept))


# -- VMs -------------------------------------------------------------------------------


@cli.group()
def vm() -> None:
    """Create and run VMs; snapshot, revert, clone and resize them."""


@vm.command("create")
@click.argument("name")
@click.option("--template", "template_name", default="docker-ready", show_default=True)
@click.option("--vcpus", type=int, help="vCPUs to boot with [the template's default].")
@click.option("--memory", help="Memory, e.g. 1GiB, 512MiB, 1.5G [the template's default].")
@click.option("--max-vcpus", type=int, help="Most vCPUs it can grow to live [2 x vcpus].")
@click.option("--max-memory", help="Most memory it can grow to live [2 x memory].")
@click.option("--disk", help="Root disk size, e.g. 20GiB [the template's default].")
@click.option("--full", is_flag=True, help="Copy the template's disk instead of linking to it.")
@click.option("--no-start", is_flag=True, help="Define it but do not boot it.")
@click.option("--cold", is_flag=True,
              help="Boot it, even where a warm spare of its template could resume.")  # fmt: skip
@click.option(
    "--resource-set",
    "resource_set",
    type=int,
    help="With --server: create it within this resource set (your quota).",
)
@click.option(
    "--host",
    "host_id",
    type=int,
    help="With --server: the host (id, see `host list`) to create it on [the first].",
)
@pass_ctx
def vm_create(ctx: Context, name: str, template_name: str, vcpus: int | None,
              memory: str | None,
              max_vcpus: int | None, max_memory: str | None, disk: str | None, full: bool,
              no_start: bool, cold: bool, resource_set: int | None,
              host_id: int | None) -> None:  # fmt: skip
    """Create a VM from a template, start it and wait for its Docker engine: resumed
    from a warm spare of the template where the host keeps one (see `template warm`),
    else booted."""
    memory_bytes = _size(memory, "memory")
    max_memory_bytes = _size(max_memory, "max memory")
    how: list[str] = []
    with ctx.progress(f"create {name}") as shown:

        def bar(step: str, fraction: float) -> None:
            if step.startswith((vm_service.WARM_START, vm_service.COLD_START)):
                how.append(step)
            shown(step, fraction)

        created = ctx.backend.create_vm(
            name=name,
            template=template_name,
            vcpus=vcpus,
            memory=memory_bytes,
            max_vcpus=max_vcpus,
            max_memory=max_memory_bytes,
            disk=_size(disk, "disk"),
            full=full,
            start=not no_start,
            resource_set=resource_set,
            host=host_id,
            progress=bar,
            cold=cold,
        )
    if how and not ctx.as_json:
        click.echo(how[-1], err=True)
    ctx.emit(created, lambda: render.vm_details(created, _endpoint_or_none(ctx, created.name)))


def _endpoint_or_none(ctx: Context, name: str) -> str | None:
    try:
        return ctx.backend.docker_host(name)
    except DockvisorError:
        return None


@vm.command("list")
@pass_ctx
def vm_list(ctx: Context) -> None:
    """List VMs."""
    vms = ctx.backend.list_vms()
    ctx.emit(vms, lambda: render.vm_rows(vms))


@vm.command("show")
@click.argument("name")
@pass_ctx
def vm_show(ctx: Context, name: str) -> None:
    """Show one VM in detail."""
    shown = ctx.backend.get_vm(name)
    ctx.emit(shown, lambda: render.vm_details(shown, _endpoint_or_none(ctx, name)))


@vm.command("start")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Do not wait for the Docker engine.")
@pass_ctx
def vm_start(ctx: Context, name: str, no_wait: bool) -> None:
    """Boot a stopped VM (and wait for its Docker engine)."""
    with ctx.progress(f"start {name}") as bar:
        started = ctx.backend.power(name, "start", wait=not no_wait, timeout=0, progress=bar)
    ctx.emit(started, f"{name} is {started.power_state}")


@vm.command("stop")
@click.argument("name")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the guest to power off.")  # fmt: skip
@pass_ctx
def vm_stop(ctx: Context, name: str, timeout: float) -> None:
    """Shut a VM down cleanly."""
    with ctx.progress(f"stop {name}") as bar:
        bar("asking the guest to power off", 0.1)
        stopped = ctx.backend.power(name, "stop", wait=True, timeout=timeout, progress=bar)
    ctx.emit(stopped, f"{name} is {stopped.power_state}")


@vm.command("kill")
@click.argument("name")
@pass_ctx
def vm_kill(ctx: Context, name: str) -> None:
    """Power a VM off at once."""
    killed = ctx.backend.power(name, "kill", wait=True, timeout=0, progress=no_progress)
    ctx.emit(killed, f"{name} is {killed.power_state}")


@vm.command("reboot")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait for the Docker engine to come back.")
@pass_ctx
def vm_reboot(ctx: Context, name: str, wait: bool) -> None:
    """Ask the guest to reboot."""
    with ctx.progress(f"reboot {name}") as bar:
        rebooted = ctx.backend.power(name, "reboot", wait=wait, timeout=0, progress=bar)
    ctx.emit(rebooted, f"{name} is rebooting")


@vm.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Power it off first if it runs.")
@pass_ctx
def vm_rm(ctx: Context, name: str, force: bool) -> None:
    """Delete a VM with its disk and snapshots."""
    ctx.backend.delete_vm(name, force=force)
    ctx.emit({"removed": name}, f"{name} removed")


@vm.command("set")
@click.argument("name")
@click.option("--vcpus", type=int, help="New vCPU count.")
@click.option("--memory", help="New memory size, e.g. 2GiB.")
@click.option("--disk", help="Grow the disk to this size, e.g. 20GiB (live if it runs).")
@pass_ctx
def vm_set(ctx: Context, name: str, vcpus: int | None, memory: str | None,
           disk: str | None) -> None:  # fmt: skip
    """Change vCPUs or memory (live within the VM's maximums, else at next boot) or grow
    its disk (live: the guest's filesystem grows with it; disks never shrink)."""
    result = ctx.backend.resize(
        name, vcpus=vcpus, memory=_size(memory, "memory"), disk=_size(disk, "disk")
    )

    def human() -> str:
        lines = []
        for key, value in result.applied.items():
            shown = str(value) if "vcpus" in key else format_size(value)
            lines.append(f"{key.replace('_', ' ')}: {shown} (now)")
        for key, value in result.pending.items():
            shown = str(value) if "vcpus" in key else format_size(value)
            lines.append(f"{key.replace('_', ' ')}: {shown} (pending: next boot)")
        lines.extend(f"note: {reason}" for reason in result.reasons)
        return "\n".join(lines)

    ctx.emit(result, human)


@vm.command("snapshot")
@click.argument("name")
@click.argument("snapshot")
@click.option("--description", default="", help="What this snapshot is for.")
@pass_ctx
def vm_snapshot(ctx: Context, name: str, snapshot: str, description: str) -> None:
    """Take a snapshot (with memory if the VM runs)."""
    with ctx.progress(f"snapshot {name}") as bar:
        bar("saving disk and memory", 0.2)
        taken = ctx.backend.snapshot(name, snapshot, description)
    memory = " with memory" if taken.with_memory else ""
    ctx.emit(taken, f"snapshot {taken.name} of {name} taken{memory}")


@vm.command("snapshots")
@click.argument("name")
@pass_ctx
def vm_snapshots(ctx: Context, name: str) -> None:
    """List a VM's snapshots (* marks the current one)."""
    snapshots = ctx.backend.snapshots(name)
    ctx.emit(snapshots, lambda: render.snapshot_rows(snapshots))


@vm.command("revert")
@click.argument("name")
@click.argument("snapshot")
@pass_ctx
def vm_revert(ctx: Context, name: str, snapshot: str) -> None:
    """Roll a VM back to a snapshot."""
    with ctx.progress(f"revert {name}") as bar:
        reverted = ctx.backend.revert(name, snapshot, bar)
    ctx.emit(reverted, f"{name} reverted to {snapshot}; it is {reverted.power_state}")


@vm.command("snapshot-rm")
@click.argument("name")
@click.argument("snapshot")
@pass_ctx
def vm_snapshot_rm(ctx: Context, name: str, snapshot: str) -> None:
    """Delete a snapshot."""
    ctx.backend.delete_snapshot(name, snapshot)
    ctx.emit({"removed": snapshot, "vm": name}, f"snapshot {snapshot} of {name} removed")


@vm.command("clone")
@click.argument("name")
@click.argument("new_name")
@click.option("--full", is_flag=True, help="An independent copy instead of a linked one.")
@click.option("--start", is_flag=True, help="Boot the clone and wait for its Docker engine.")
@pass_ctx
def vm_clone(ctx: Context, name: str, new_name: str, full: bool, start: bool) -> None:
    """Clone a VM, running or not, under a new name."""
    with ctx.progress(f"clone {name}") as bar:
        clone = ctx.backend.clone(name, new_name, full=full, start=start, progress=bar)
    mode = f" ({clone.disk_mode.value} disk)" if clone.disk_mode else ""
    ctx.emit(clone, f"{new_name} cloned from {name}{mode}; it is {clone.power_state}")


@vm.command("endpoint")
@click.argument("name")
@pass_ctx
def vm_endpoint(ctx: Context, name: str) -> None:
    """Print the environment that points the docker CLI at the VM's engine.

    Use it as: eval "$(dockvisor --server URL vm endpoint NAME)": the server's engine
    gateway, with your token; the server checks each docker command against your
    privileges and checks the VM's engine by its own name. Without --server it explains
    why not (the docker CLI cannot check a VM's engine on a host port).
    """
    environment = ctx.backend.docker_environment(name)
    ctx.emit({"env": environment.env, "unset": environment.unset}, environment.shell())


catalog_cmds.register(template)
vm.add_command(console_cli.console)
vm.add_command(metrics_cli.metrics)
for _command in (server_cli.serve, server_cli.user, server_cli.token, server_cli.audit,
                 server_cli.login, server_cli.resource_set, docker_cmds.docker):  # fmt: skip
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dockvisor` console script."""
    try:
        # A command that ends with ctx.exit(N) (docker run, docker exec) returns N here.
        status = cli.main(args=argv, prog_name="dockvisor", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InvalidInput as exc:
        _fail(str(exc), 2)
    except DockvisorError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        os._exit(1)
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()
