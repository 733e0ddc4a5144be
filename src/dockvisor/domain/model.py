"""The records dockvisor works with, the same for every hypervisor family.

Sizes are in bytes. Nothing here does I/O; adapters fill these in, services and shells
read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Capability",
    "ConsoleKind",
    "DiskMode",
    "DockerEndpoint",
    "GuestConfig",
    "HostInfo",
    "PowerState",
    "ResizeResult",
    "Snapshot",
    "Spare",
    "Template",
    "TemplateOrigin",
    "TemplateSizes",
    "TemplateSpec",
    "VM",
    "VMSpec",
]


class PowerState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


class DiskMode(enum.StrEnum):
    LINKED = "linked"  # a copy-on-write overlay on the template's base image
    FULL = "full"  # an independent copy


class ConsoleKind(enum.StrEnum):
    """A running VM's consoles: its first serial port, and its screen spoken as VNC (RFB)."""

    SERIAL = "serial"
    VNC = "vnc"

    @property
    def capability(self) -> Capability:
        """What an adapter must have to open this console."""
        if self is ConsoleKind.SERIAL:
            return Capability.SERIAL_CONSOLE
        return Capability.GRAPHICAL_CONSOLE


class Capability(enum.Flag):
    """What a hypervisor adapter can do; callers check before they ask."""

    NONE = 0
    LIVE_VCPUS = enum.auto()  # add vCPUs to a running VM
    LIVE_VCPU_REMOVAL = enum.auto()  # and take them away from it (else: at the next boot)
    LIVE_MEMORY = enum.auto()  # change the memory of a running VM (balloon)
    SNAPSHOTS = enum.auto()  # disk snapshots, revert, delete
    MEMORY_SNAPSHOTS = enum.auto()  # snapshots of a running VM with its memory
    LINKED_CLONES = enum.auto()  # copy-on-write disks on a template or another disk
    CLONE_RUNNING = enum.auto()  # clone a VM while it runs
    GUEST_AGENT = enum.auto()  # an agent in the guest (QEMU's): addresses, filesystem freeze
    GUEST_ADDRESSES = enum.auto()  # the guest's IP addresses, as its agent or tools report
    LOOPBACK_FORWARD = enum.auto()  # user-mode network with a host-forward on 127.0.0.1
    METRICS = enum.auto()  # counters of running VMs for their graphs (usage_counters)
    SERIAL_CONSOLE = enum.auto()  # a running VM's serial console as a byte stream
    GRAPHICAL_CONSOLE = enum.auto()  # a running VM's screen as a VNC (RFB) byte stream
    EVENTS = enum.auto()  # tells of VM changes as they happen (watch), whoever made them
    DISK_GROWTH = enum.auto()  # grow a stopped VM's disk (grow_disk)
    LIVE_DISK_GROWTH = enum.auto()  # grow a running VM's disk, seen by the guest at once
    WARM_SPARES = enum.auto()  # saved, booted spares that a create resumes (adopt_spare)

    def names(self) -> list[str]:
        return [str(c.name).lower().replace("_", "-") for c in Capability if c in self]


@dataclass(frozen=True)
class HostInfo:
    uri: str
    hypervisor: str  # "QEMU", "Xen", "Test", "XenServer"...
    version: str
    hostname: str
    cpus: int
    memory: int
    max_vcpus_per_vm: int  # the most vCPUs one VM may have here (current or maximum)
    acceleration: str | None  # "kvm", "tcg" (software emulation), or None if not QEMU
    capabilities: Capability
    # What the hypervisor is, whichever address reaches it (a XAPI pool's uuid: its
    # master and members are one pool); None where the adapter cannot tell.
    identity: str | None = None
    # Bytes the storage that new VM disks go to has free (libvirt pool, XAPI default SR),
    # less what the disks already there may still grow into; None where it cannot tell.
    storage_free: int | None = None


@dataclass(frozen=True)
class VMSpec:
    """What to create: a VM of an exact size from a template, with room to grow live."""

    name: str
    template: str
    vcpus: int
    memory: int
    max_vcpus: int
    max_memory: int
    disk_mode: DiskMode = DiskMode.LINKED
    guest: GuestConfig | None = None
    # The root disk's size in bytes (at least the template's); None: the template's
    # default disk (TemplateSizes.default_disk), else its own disk's size.
    disk_size: int | None = None


@dataclass(frozen=True)
class GuestConfig:
    """What a Docker-ready VM's guest receives at boot, on its config drive."""

    drive: bytes  # the drive's image: ISO 9660 labelled "cidata" (guest/config_drive.py)
    engine_name: str  # the name in its Docker engine's server certificate


@dataclass(frozen=True)
class VM:
    name: str
    uuid: str
    power_state: PowerState
    vcpus: int  # what the VM has now (live if running, else at next boot)
    max_vcpus: int
    memory: int
    max_memory: int
    template: str | None  # None for a VM dockvisor did not create
    disk_mode: DiskMode | None
    disk_size: int
    # What the next boot will have where it differs from now (a change beyond the maximum).
    pending_vcpus: int | None = None
    pending_max_vcpus: int | None = None
    pending_memory: int | None = None
    pending_max_memory: int | None = None
    docker_ready: bool = False
    snapshot_count: int = 0
    created: datetime | None = None
    managed: bool = True  # created by dockvisor (False: found on the hypervisor)

    @property
    def has_pending_changes(self) -> bool:
        return any(
            v is not None
            for v in (
                self.pending_vcpus,
                self.pending_max_vcpus,
                self.pending_memory,
                self.pending_max_memory,
            )
        )


@dataclass(frozen=True)
class TemplateSizes:
    """What a template's publisher says its VMs need (min_*) and suit (default_*).
    Zero or None: not said (the template's disk size is always its minimum disk)."""

    min_vcpus: int = 1
    min_memory: int = 0
    default_vcpus: int | None = None
    default_memory: int | None = None
    default_disk: int | None = None


@dataclass(frozen=True)
class TemplateOrigin:
    """Where a template pulled from a catalog came from."""

    catalog: str  # the catalog's name where it was pulled
    product: str  # the template's name in the catalog
    version: str
    sha256: str  # of the disk file as published (checked when pulled)


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    disk_size: int
    docker_ready: bool  # its guests run a Docker engine dockvisor can reach
    builtin: bool
    boots_kernel: bool  # boots a kernel + initrd given with the template (else the disk's own)
    created: datetime | None = None
    image_key: str | None = None  # the built-in template: key of the guest image it holds
    sizes: TemplateSizes = field(default_factory=TemplateSizes)
    origin: TemplateOrigin | None = None
    docker_port: int | None = None  # the guest port its dockerd listens on (if Docker-ready)
    spares_kept: int = 0  # warm spares the host keeps of it (refilled by its server)


@dataclass(frozen=True)
class Spare:
    """A warm spare: a VM of a template booted once with an identity of its own (UUID,
    MAC, engine key and certificate, random state), saved with its memory once its
    Docker engine was up, and stopped. A create adopts it: it resumes in seconds under
    the new VM's name. Spares belong to the host, not to any user or resource set."""

    name: str
    template: str
    ready: bool  # saved and waiting (False: being made, or its making was interrupted)
    vcpus: int  # as saved; an adopting create plugs more, up to max_vcpus
    max_vcpus: int
    memory: int
    max_memory: int
    disk_size: int
    stored: int  # bytes it takes on the host's storage (its disk and saved memory)
    created: datetime | None = None
    engine_name: str | None = None
    stale: str | None = None  # why it can no longer become a VM (it is then deleted)
    uuid: str = ""  # the hypervisor's id, which the VM that adopts it keeps


@dataclass(frozen=True)
class TemplateSpec:
    """A template to register from files on this machine."""

    name: str
    disk: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = "console=ttyS0 root=/dev/vda1 rw"
    description: str = ""
    docker_port: int | None = 2376  # the guest port dockerd listens on; None: no Docker
    builtin: bool = False
    image_key: str | None = None
    sizes: TemplateSizes = field(default_factory=TemplateSizes)
    origin: TemplateOrigin | None = None


@dataclass(frozen=True)
class Snapshot:
    name: str
    vm: str
    created: datetime
    power_state: PowerState  # of the VM when the snapshot was taken
    with_memory: bool
    description: str = ""
    parent: str | None = None
    current: bool = False
    # The size reverting to it gives the VM back (None: the hypervisor does not say).
    vcpus: int | None = None
    memory: int | None = None
    disk_size: int | None = None  # the root disk's, which a revert returns to


@dataclass(frozen=True)
class DockerEndpoint:
    """Where the Docker engine of a VM answers, as dockvisor reaches it."""

    host: str
    port: int
    tls: bool = False
    # The name the engine's certificate must carry (it differs from `host` when the engine
    # is reached through a forward): dockvisor checks it, so one VM cannot pose as another.
    server_name: str | None = None

    @property
    def docker_host(self) -> str:
        """The value for DOCKER_HOST."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ResizeResult:
    """What a resize did: `applied` took effect (live on a running VM, or in the
    configuration of a stopped one); `pending` waits for the running VM's next boot."""

    vm: VM
    applied: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
