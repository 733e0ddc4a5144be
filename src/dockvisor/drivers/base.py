"""The one contract every hypervisor adapter fulfils.

Vocabulary: a *VM* is a guest dockvisor can start and stop; a *template* is what VMs are
made from (a base disk, optionally a kernel and initrd, and what its guests provide);
a *snapshot* is a named point a VM can return to.

A VM argument (`name` below) is the VM's id, its `VM.uuid` (the libvirt domain UUID, the
XAPI VM uuid), which never changes; or its name, the user's handle, where that is
unambiguous (XAPI allows several VMs of one name: a name shared by several VMs is refused
with InvalidInput listing their ids). The server keeps ids; a person types names.
Native handles (libvirt domain objects, XAPI opaque refs) stay inside the adapters.

Every method either does all it says or, on failure, leaves nothing behind and raises
one of the errors of `dockvisor.errors` (never a backend exception). Optional features
are announced in `capabilities`; a method whose capability is absent raises Unsupported.
Long methods take a `progress(step, fraction)` callback.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from dockvisor.domain.metrics import UsageCounters
from dockvisor.domain.model import (
    VM,
    Capability,
    ConsoleKind,
    DockerEndpoint,
    GuestConfig,
    HostInfo,
    ResizeResult,
    Snapshot,
    Spare,
    Template,
    TemplateOrigin,
    TemplateSpec,
    VMSpec,
)
from dockvisor.errors import (
    AlreadyExists,
    BadPowerState,
    DockvisorError,
    GuestTimeout,
    HypervisorError,
    HypervisorUnreachable,
    NotFound,
    OutOfCapacity,
    Unsupported,
    WarmStartUnavailable,
)

__all__ = [
    "AlreadyExists",
    "BadPowerState",
    "Capability",
    "DockvisorError",
    "GuestTimeout",
    "HypervisorDriver",
    "HypervisorError",
    "HypervisorUnreachable",
    "NotFound",
    "OutOfCapacity",
    "Progress",
    "Unsupported",
    "WarmStartUnavailable",
    "no_progress",
    "replaces",
]

Progress = Callable[[str, float], None]


def no_progress(step: str, fraction: float) -> None:
    """A progress callback that ignores everything."""


def replaces(spec: TemplateSpec, builtin: bool, origin: TemplateOrigin | None) -> bool:
    """Whether registering `spec` replaces an existing template of its name, which is
    `builtin` or was pulled from `origin`: a new build of the built-in template, or a
    newer version of the same catalog template."""
    if spec.builtin:
        return builtin
    return (
        spec.origin is not None
        and origin is not None
        and (spec.origin.catalog, spec.origin.product) == (origin.catalog, origin.product)
    )


@runtime_checkable
class HypervisorDriver(Protocol):
    """A connection to one hypervisor (a libvirt URI, a XAPI pool)."""

    uri: str
    capabilities: Capability

    def host_info(self) -> HostInfo:
        """The host's size, hypervisor, acceleration and what this adapter can do there."""
        ...

    # -- inventory -------------------------------------------------------------------

    def list_vms(self) -> list[VM]:
        """Every VM on the hypervisor, including those dockvisor did not create; no templates."""
        ...

    def get_vm(self, name: str) -> VM:
        """The VM called `name`; NotFound if there is none (or it is a template)."""
        ...

    def list_templates(self) -> list[Template]: ...

    def get_template(self, name: str) -> Template:
        """NotFound if there is no template `name`."""
        ...

    def register_template(self, spec: TemplateSpec, progress: Progress = no_progress) -> Template:
        """Copy the spec's files to the hypervisor's storage and record the template.

        AlreadyExists if the name is taken by a template or a VM, unless `replaces(spec,
        ...)` says the spec is a new version of that template (the built-in one, or one
        pulled from the same catalog template): then it takes the old one's place, and
        VMs made from the old one keep its disk (deleted once no VM uses it).
        """
        ...

    def export_template(self, name: str, into: Path, progress: Progress = no_progress
                        ) -> TemplateSpec:  # fmt: skip
        """Copy the template's files (disk, kernel, initrd) into the directory `into` on
        this machine; the spec names the copies and says what the template says (boot
        command line, Docker port, sizes, description). Unsupported where the adapter
        cannot read its storage's files."""
        ...

    def remove_template(self, name: str) -> None:
        """Forget the template and delete its files unless VMs still use its base disk
        (then raise BadPowerState naming them)."""
        ...

    # -- lifecycle -------------------------------------------------------------------

    def create_vm(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        """Define a stopped VM of exactly spec's size from spec's template, with its own
        disk (an overlay on the template's base, or a full copy) of spec.disk_size bytes
        (the template's if None; InvalidInput if below it, OutOfCapacity if the storage
        cannot hold it), room to grow to spec's maximums, and spec.guest's config drive
        attached read-only. On failure the domain and disks are removed."""
        ...

    def start_vm(self, name: str) -> VM:
        """BadPowerState if it is already running."""
        ...

    def shutdown_vm(self, name: str, *, timeout: float = 60.0) -> VM:
        """Ask the guest to power off and wait; GuestTimeout if it is still up after
        `timeout` seconds (it is left running)."""
        ...

    def force_off(self, name: str) -> VM:
        """Power off at once, like pulling the plug."""
        ...

    def reboot_vm(self, name: str) -> VM:
        """Ask the guest to reboot."""
        ...

    def delete_vm(self, name: str) -> None:
        """Remove a stopped VM with its snapshots and its own disks (never a template's
        base). BadPowerState if it is running."""
        ...

    def set_resources(
        self, name: str, *, vcpus: int | None = None, memory: int | None = None
    ) -> ResizeResult:
        """Change vCPUs and/or memory. Within the maximums of a running VM the change is
        live (fewer vCPUs only with LIVE_VCPU_REMOVAL, else at the next boot); beyond
        them (or where the guest refuses) it is stored for the next boot and reported as
        pending. A stopped VM simply gets the new size."""
        ...

    def grow_disk(self, name: str, size: int) -> VM:
        """Grow the VM's root disk to `size` bytes: live if it runs (LIVE_DISK_GROWTH;
        the guest sees the new size at once and a Docker-ready guest grows its
        filesystem), else on the stopped disk (DISK_GROWTH). InvalidInput if `size` is
        below the disk's size (shrinking is refused), OutOfCapacity if the storage cannot
        hold it; Unsupported if the capability is absent (a running VM on a host without
        LIVE_DISK_GROWTH must be stopped first). The same size changes nothing. The VM's
        snapshots keep the size they were taken at: reverting to one returns the disk
        to that size (Snapshot.disk_size)."""
        ...

    # -- warm spares (WARM_SPARES) ----------------------------------------------------

    def create_spare(self, spec: VMSpec, progress: Progress = no_progress) -> Spare:
        """Boot a spare of spec's template at spec's size with spec.guest's identity, wait
        until its Docker engine is up (the guest's own socket), save it with its memory
        and stop it. spec.name must not be a valid VM name (`spare.` + hex). On failure
        nothing is left. Unsupported without WARM_SPARES."""
        ...

    def list_spares(self) -> list[Spare]:
        """The host's spares, each saying if it is stale (it no longer matches its
        template or this hypervisor: an adoption deletes it) and why; a spare whose
        making or adoption was cut short is removed here. Empty without WARM_SPARES."""
        ...

    def delete_spare(self, name: str) -> None:
        """Remove a spare and its files. NotFound if there is none of that name."""
        ...

    def keep_spares(self, template: str, count: int) -> None:
        """Record how many spares of `template` the host keeps (Template.spares_kept);
        making them is the caller's. Unsupported for a count above 0 without
        WARM_SPARES."""
        ...

    def adopt_spare(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        """Make a VM of spec from a ready spare of spec.template: it takes spec.name,
        resumes where the spare was saved (its identity is the spare's: UUID, MAC, engine
        certificate; spec.guest must be None), its clock set to the host's, its hostname
        to spec.name, grown live to spec's vCPUs, memory and disk; the running VM.
        Two adoptions never get one spare. WarmStartUnavailable (nothing made) if no
        spare fits spec (none left; spec larger than a spare's maximums; a disk smaller
        than a spare's; a full copy asked) or the spares no longer match their template
        or this hypervisor (those are deleted); the message says why."""
        ...

    # -- snapshots -------------------------------------------------------------------

    def create_snapshot(self, name: str, snapshot: str, description: str = "") -> Snapshot:
        """Snapshot the VM: disk and, if it runs, memory. AlreadyExists if the VM has one
        of that name."""
        ...

    def list_snapshots(self, name: str) -> list[Snapshot]: ...

    def revert_to_snapshot(self, name: str, snapshot: str) -> VM:
        """Return the VM to the snapshot: running with its memory if it was taken
        running, stopped otherwise. NotFound if the VM has no such snapshot."""
        ...

    def delete_snapshot(self, name: str, snapshot: str) -> None: ...

    # -- copies and access -----------------------------------------------------------

    def clone_vm(
        self,
        name: str,
        new_name: str,
        *,
        linked: bool = True,
        guest: GuestConfig | None = None,
        progress: Progress = no_progress,
    ) -> VM:
        """A stopped copy of the VM's current disk state (without its snapshots), with a
        new name, UUID, MAC and Docker forward, and `guest` as its config drive (a clone
        never shares its source's: without `guest` it has none). Works on a running VM
        without stopping it: its filesystems are frozen for the instant the copy is cut."""
        ...

    def guest_addresses(self, name: str) -> list[str]:
        """The guest's IP addresses as its agent reports them (loopback excluded)."""
        ...

    def docker_endpoint(self, name: str) -> DockerEndpoint:
        """Where the VM's Docker engine answers for dockvisor. BadPowerState if the VM is
        not running, Unsupported if its template has no Docker."""
        ...

    def console_log(self, name: str, lines: int = 20) -> str:
        """The last lines the guest wrote to its serial console, if this host keeps them."""
        ...

    def usage_counters(self) -> dict[str, UsageCounters]:
        """The counters of every running VM of the host, by VM id, for the VMs' graphs
        (domain/metrics.py): one request to the hypervisor for all of them, not one per
        VM (what only a guest can say, it may ask the guest). A counter that cannot be
        read now is None. Unsupported without METRICS."""
        ...

    def open_console(self, name: str, kind: ConsoleKind) -> socket.socket:
        """A connected stream socket whose other end is the running VM's console of `kind`
        (SERIAL_CONSOLE: the guest's first serial port; GRAPHICAL_CONSOLE: its screen as
        an RFB server that asks for no authentication). Bytes pass unchanged both ways;
        the socket reads end-of-file when the console ends (the VM stops, or another
        session takes the serial console over), and closing it releases the console on
        the hypervisor within a second. The caller owns the socket (blocking, or use it
        with an event loop). BadPowerState if the VM is not running, Unsupported if the
        capability is absent or the VM has no such console."""
        ...

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(vm_id, what)` from now on whenever a VM changes on the
        hypervisor, whoever changed it (what: "started", "stopped", "created",
        "deleted", "changed"...). Unsupported without EVENTS."""
        ...

    def close(self) -> None: ...
