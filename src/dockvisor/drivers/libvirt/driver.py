"""The libvirt adapter: QEMU/KVM, Xen (libxl), the in-process test driver, local or remote.

Templates are inactive domains marked as templates in their metadata, with a read-only
base disk, as XAPI and Proxmox model them. VMs get their own volume: a qcow2 overlay on
the template's base (linked) or a flattened copy (full).

Two QEMU operations bypass libvirt's usual call, for reasons measured on libvirt 9.0:
reverting to a memory snapshot (see snapshots.py) and cloning (see disk_copy.py).
"""

from __future__ import annotations

import functools
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlparse
from xml.sax.saxutils import escape

import libvirt

from dockvisor.domain.model import (
    VM,
    Capability,
    ConsoleKind,
    DiskMode,
    DockerEndpoint,
    GuestConfig,
    HostInfo,
    PowerState,
    ResizeResult,
    Snapshot,
    Spare,
    Template,
    TemplateSizes,
    TemplateSpec,
    VMSpec,
)
from dockvisor.domain.sizes import KiB, MiB
from dockvisor.domain.sizing import (
    check_disk_growth,
    check_storage_room,
    plan_disk,
    vcpu_ceiling,
)
from dockvisor.drivers.base import Progress, no_progress, replaces
from dockvisor.drivers.disk_images import (
    check_self_contained,
    local_disk_size,
)
from dockvisor.drivers.libvirt import spares
from dockvisor.drivers.libvirt.acceleration import detect_acceleration
from dockvisor.drivers.libvirt.consoles import log_tail, open_console
from dockvisor.drivers.libvirt.disk_copy import mirror_and_cut
from dockvisor.drivers.libvirt.domain_xml import (
    NS,
    DomainConfig,
    DomainState,
    build_domain_xml,
    metadata_xml,
    parse_domain_xml,
    random_mac,
)
from dockvisor.drivers.libvirt.errors import libvirt_errors, translate
from dockvisor.drivers.libvirt.events import EVENT_NAMES
from dockvisor.drivers.libvirt.resize import balloon_size, resize_domain
from dockvisor.drivers.libvirt.snapshots import (
    load_memory_snapshot,
    snapshot_names,
    snapshot_record,
)
from dockvisor.drivers.libvirt.starts import StartPreparation
from dockvisor.drivers.libvirt.storage import (
    StoragePool,
    unique_volume_name,
)
from dockvisor.drivers.libvirt.usage import UsageReading
from dockvisor.errors import (
    AlreadyExists,
    BadPowerState,
    DockvisorError,
    GuestTimeout,
    HypervisorError,
    HypervisorUnreachable,
    InvalidInput,
    NotFound,
    Unsupported,
)

__all__ = ["DEFAULT_URI", "LibvirtDriver"]

DEFAULT_URI = "qemu:///system"

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
}

# Silence libvirt's default handler, which prints every error to stderr; errors reach
# us as exceptions and are reported once, translated.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _by_id(method: _Method) -> _Method:
    """The method's VM argument may be the VM's id (its libvirt UUID, what the server
    keeps) or its name (what a user types): the method itself sees the name."""

    @functools.wraps(method)
    def by_name(self: LibvirtDriver, vm: str, *args: Any, **kwargs: Any) -> Any:
        return method(self, self._name_of(vm), *args, **kwargs)

    return cast(_Method, by_name)


class LibvirtDriver(UsageReading):
    """A HypervisorDriver for one libvirt connection."""

    def __init__(self, uri: str = DEFAULT_URI, *, pool: str = "dockvisor") -> None:
        self.uri = uri
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            reason = (exc.get_error_message() or str(exc)).strip()
            hint = ""
            if "libvirt-sock" in reason or "virtqemud" in reason:
                hint = " (is libvirtd running? start it with: libvirtd -d)"
            raise HypervisorUnreachable(f"cannot connect to {uri}: {reason}{hint}") from exc
        with libvirt_errors(f"querying {uri}"):
            self._type_name = str(self._conn.getType())  # "QEMU", "Xen", "TEST"...
            self._type = self._type_name.upper()
        parsed = urlparse(uri)
        self._local = not parsed.hostname or parsed.hostname in ("localhost", "127.0.0.1")
        self._storage = StoragePool(self._conn, uri, pool)
        self._virt_type = self._detect_virt_type()
        self._host: tuple[float, HostInfo] | None = None
        self.capabilities = self._detect_capabilities()
        self._starts = StartPreparation(self._conn, qemu=self._is_qemu, local=self._local,
                                        virt_type=self._virt_type)  # fmt: skip

    # -- connection facts ------------------------------------------------------------

    @property
    def _is_qemu(self) -> bool:
        return self._type == "QEMU"

    def _detect_virt_type(self) -> str:
        if self._type == "TEST":
            return "test"
        if self._type == "XEN":
            return "xen"
        if self._is_qemu:
            if self._local:
                return "kvm" if detect_acceleration() == "kvm" else "qemu"
            with suppress(libvirt.libvirtError):
                self._conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
                return "kvm"
            return "qemu"
        raise Unsupported(f"{self.uri}: libvirt driver {self._type_name} is not supported")

    def _detect_capabilities(self) -> Capability:
        c = Capability
        if self._type == "TEST":
            return (c.LIVE_VCPUS | c.LIVE_MEMORY | c.SNAPSHOTS | c.MEMORY_SNAPSHOTS
                    | c.LINKED_CLONES | c.CLONE_RUNNING | c.METRICS | c.EVENTS
                    | c.DISK_GROWTH | c.LIVE_DISK_GROWTH | c.WARM_SPARES)  # fmt: skip
        if self._type == "XEN":
            # libvirt's libxl driver (src/libxl/libxl_driver.c, libvirt 11.5): its driver
            # table has no domainSnapshot*, no connectGetAllDomainStats, no
            # domainOpenGraphicsFD, no guest agent and no block copy; addresses come from
            # libvirt's DHCP leases only; libxl_conf.c refuses interface type 'user' (so
            # no host-forward). It has live vCPUs and balloon (setVcpusFlags,
            # setMemoryFlags with LIVE), openConsole on PTY consoles, and qcow2 backing
            # files through the qdisk backend; no domainBlockResize (a stopped VM's
            # volume grows through the storage driver).
            return (c.LIVE_VCPUS | c.LIVE_MEMORY | c.LINKED_CLONES | c.SERIAL_CONSOLE
                    | c.EVENTS | c.DISK_GROWTH)  # fmt: skip
        caps = (c.LIVE_VCPUS | c.LIVE_MEMORY | c.SNAPSHOTS | c.MEMORY_SNAPSHOTS | c.METRICS
                | c.LINKED_CLONES | c.CLONE_RUNNING | c.GUEST_AGENT | c.GUEST_ADDRESSES
                | c.SERIAL_CONSOLE | c.EVENTS | c.DISK_GROWTH | c.LIVE_DISK_GROWTH
                | c.WARM_SPARES)  # fmt: skip
        return caps | c.LOOPBACK_FORWARD | c.GRAPHICAL_CONSOLE if self._local else caps

    def _require(self, capability: Capability, what: str) -> None:
        if capability not in self.capabilities:
            raise Unsupported(f"{what} is not supported by {self.uri} ({self._type})")

    def host_info(self) -> HostInfo:
        """The host's facts, read at most every 30 s (a host's size rarely changes); its
        storage's free space, read now."""
        return replace(self._host_facts(), storage_free=self._storage.free())

    def _host_facts(self) -> HostInfo:
        if self._host is not None and time.monotonic() - self._host[0] < 30:
            return self._host[1]
        with libvirt_errors(f"querying {self.uri}"):
            info = self._conn.getInfo()
            try:
                hv_max = int(self._conn.getMaxVcpus(None))
            except libvirt.libvirtError:
                hv_max = 255
            version = self._conn.getVersion()
            hostname = self._conn.getHostname()
            memory = int(info[1]) * MiB
            with suppress(libvirt.libvirtError):  # NUMA node sizes can undercount the host
                stats = self._conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
                memory = max(memory, int(stats.get("total", 0)) * KiB)
        host = HostInfo(
            uri=self.uri,
            hypervisor=self._type_name,
            version=f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}",
            hostname=hostname,
            cpus=int(info[2]),
            memory=memory,
            max_vcpus_per_vm=vcpu_ceiling(int(info[2]), hv_max),
            acceleration={"kvm": "kvm", "qemu": "tcg"}.get(self._virt_type),
            capabilities=self.capabilities,
        )
        self._host = (time.monotonic(), host)
        return host

    def close(self) -> None:
        with suppress(libvirt.libvirtError):
            self._conn.close()

    # -- reading domains -------------------------------------------------------------

    def _domains(self) -> list[libvirt.virDomain]:
        with libvirt_errors(f"listing domains on {self.uri}"):
            return list(self._conn.listAllDomains(0))

    def _name_of(self, vm: str) -> str:
        if not _UUID.match(vm):
            return vm
        try:
            return str(self._conn.lookupByUUIDString(vm).name())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no VM with id {vm} on {self.uri}") from exc
            raise HypervisorError(f"looking up {vm}: {exc.get_error_message()}") from exc

    def _lookup(self, name: str, kind: str = "VM") -> libvirt.virDomain:
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no {kind} named {name!r} on {self.uri}") from exc
            raise HypervisorError(f"looking up {name}: {exc.get_error_message()}") from exc

    @staticmethod
    def _state(dom: libvirt.virDomain, *, inactive: bool = False) -> DomainState:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with libvirt_errors(f"reading domain {dom.name()}"):
            return parse_domain_xml(dom.XMLDesc(flags))

    def _vm_domain(self, name: str) -> tuple[libvirt.virDomain, DomainState]:
        dom = self._lookup(name)
        state = self._state(dom)
        if state.config.kind == "template":
            raise NotFound(f"{name!r} is a template, not a VM (make a VM from it: vm create)")
        if state.config.kind == "spare":
            raise NotFound(f"{name!r} is a warm spare, not a VM (see: template spares)")
        return dom, state

    def _power(self, dom: libvirt.virDomain) -> PowerState:
        with libvirt_errors(f"reading state of {dom.name()}"):
            return _STATES.get(dom.state(0)[0], PowerState.UNKNOWN)

    def _balloon(self, dom: libvirt.virDomain) -> int | None:
        return balloon_size(dom) if self._is_qemu else None

    def _to_vm(self, dom: libvirt.virDomain, state: DomainState) -> VM:
        power = self._power(dom)
        live = state.config
        if (actual := self._balloon(dom)) is not None:
            live = replace(live, memory=actual)
        pending: dict[str, int | None] = {}
        if dom.isActive() and dom.isPersistent():
            nxt = self._state(dom, inactive=True).config
            for key, now, later in (
                ("pending_vcpus", live.vcpus, nxt.vcpus),
                ("pending_max_vcpus", live.max_vcpus, nxt.max_vcpus),
                ("pending_memory", live.memory, nxt.memory),
                ("pending_max_memory", live.max_memory, nxt.max_memory),
            ):
                pending[key] = later if later != now else None
        with libvirt_errors(f"counting snapshots of {dom.name()}"):
            try:
                snapshots = dom.snapshotNum(0)
            except libvirt.libvirtError:
                snapshots = 0
        return VM(
            name=live.name,
            uuid=state.uuid,
            power_state=power,
            vcpus=live.vcpus,
            max_vcpus=live.max_vcpus,
            memory=live.memory,
            max_memory=live.max_memory,
            template=live.template,
            disk_mode=live.disk_mode,
            disk_size=live.disk_size,
            docker_ready=live.docker_guest_port is not None,
            snapshot_count=snapshots,
            created=live.created,
            managed=live.managed,
            **pending,
        )

    def list_vms(self) -> list[VM]:
        vms = []
        for dom in self._domains():
            with suppress(NotFound):  # it vanished while we looked
                state = self._state(dom)
                if state.config.kind == "vm":
                    vms.append(self._to_vm(dom, state))
        return sorted(vms, key=lambda vm: vm.name)

    @_by_id
    def get_vm(self, name: str) -> VM:
        dom, state = self._vm_domain(name)
        return self._to_vm(dom, state)

    # -- templates -------------------------------------------------------------------

    @staticmethod
    def _to_template(state: DomainState) -> Template:
        c = state.config
        return Template(
            name=c.name,
            description=c.description,
            disk_size=c.disk_size,
            docker_ready=c.docker_guest_port is not None,
            builtin=c.builtin_key is not None,
            boots_kernel=c.kernel is not None,
            created=c.created,
            image_key=c.builtin_key,
            sizes=c.sizes or TemplateSizes(),
            origin=c.origin,
            docker_port=c.docker_guest_port,
            spares_kept=c.spares_kept,
        )

    def _template_state(self, name: str) -> DomainState:
        try:
            dom = self._lookup(name, "template")
        except NotFound:
            raise NotFound(f"no template named {name!r} on {self.uri}") from None
        state = self._state(dom)
        if state.config.kind != "template":
            raise NotFound(f"{name!r} is a VM, not a template")
        return state

    def list_templates(self) -> list[Template]:
        templates = []
        for dom in self._domains():
            with suppress(NotFound):
                state = self._state(dom)
                if state.config.kind == "template":
                    templates.append(self._to_template(state))
        return sorted(templates, key=lambda t: t.name)

    def get_template(self, name: str) -> Template:
        return self._to_template(self._template_state(name))

    def register_template(self, spec: TemplateSpec, progress: Progress = no_progress) -> Template:
        existing = self._existing(spec.name)
        if existing is not None and not replaces(spec, existing.config.builtin_key is not None,
                                                 existing.config.origin):  # fmt: skip
            kind = "template" if existing.config.kind == "template" else "VM"
            raise AlreadyExists(f"a {kind} named {spec.name!r} already exists on {self.uri}")
        for path in (spec.disk, spec.kernel, spec.initrd):
            if path and not Path(path).is_file():
                raise InvalidInput(f"no such file: {path}")
        local_format = check_self_contained(spec.disk, "the template's disk")
        if spec.initrd and not spec.kernel:
            raise InvalidInput("--initrd needs --kernel")
        send = self._type != "TEST"  # the test driver keeps no file content
        created: list[str] = []
        try:
            volumes = {}
            for role, path in (("disk", spec.disk), ("kernel", spec.kernel),
                               ("initrd", spec.initrd)):  # fmt: skip
                if path:
                    vol = unique_volume_name(f"template-{spec.name}", role)
                    self._storage.upload(vol, path, progress=progress, send_content=send)
                    created.append(vol)
                    volumes[role] = vol
            disk_vol = volumes["disk"]
            disk_format = (  # as the pool sees what arrived, not only the local file
                self._storage.check_self_contained(disk_vol, "the template's disk")
                if send
                else local_format
            )
            config = DomainConfig(
                name=spec.name,
                kind="template",
                vcpus=1,
                max_vcpus=1,
                memory=128 * MiB,
                max_memory=128 * MiB,
                disk_path=self._storage.path_of(disk_vol),
                disk_format=disk_format,
                disk_size=self._storage.capacity(disk_vol) if send else local_disk_size(spec.disk),
                disk_readonly=True,
                kernel=self._storage.path_of(volumes["kernel"]) if "kernel" in volumes else None,
                initrd=self._storage.path_of(volumes["initrd"]) if "initrd" in volumes else None,
                cmdline=spec.cmdline if spec.kernel else None,
                docker_guest_port=spec.docker_port,
                volumes=tuple(created),
                description=spec.description,
                builtin_key=spec.image_key if spec.builtin else None,
                sizes=spec.sizes,
                origin=spec.origin,
            )
            if existing is not None:  # a new build, or version, of the template
                config = replace(config, uuid=existing.uuid,
                                 spares_kept=existing.config.spares_kept)  # fmt: skip
            with libvirt_errors(f"defining template {spec.name}"):
                self._conn.defineXML(build_domain_xml(config, virt_type=self._virt_type))
        except BaseException:
            for vol in created:
                with suppress(Exception):
                    self._storage.delete(vol)
            raise
        if existing is not None:
            self._delete_unused_volumes(existing.config.volumes)
        return self.get_template(spec.name)

    def export_template(self, name: str, into: Path, progress: Progress = no_progress
                        ) -> TemplateSpec:  # fmt: skip
        if self._type == "TEST":
            raise Unsupported(f"{self.uri} keeps no file content: nothing to export")
        c = self._template_state(name).config
        files: dict[str, str] = {}
        for role, path in (("disk", c.disk_path), ("kernel", c.kernel), ("initrd", c.initrd)):
            if path:
                dest = into / f"{name}.{role}"
                self._storage.download(path, dest, progress=progress)
                files[role] = str(dest)
        return TemplateSpec(
            name=name,
            disk=files["disk"],
            kernel=files.get("kernel"),
            initrd=files.get("initrd"),
            cmdline=c.cmdline or "",
            description=c.description,
            docker_port=c.docker_guest_port,
            sizes=c.sizes or TemplateSizes(),
            origin=c.origin,
        )

    def _existing(self, name: str) -> DomainState | None:
        try:
            return self._state(self._lookup(name))
        except NotFound:
            return None

    def _users_of(self, paths: set[str], kinds: tuple[str, ...] = ("vm", "spare")) -> list[str]:
        """The domains (VMs, or also templates) whose disk base, kernel or initrd is
        one of `paths`."""
        users = []
        for dom in self._domains():
            with suppress(NotFound):
                c = self._state(dom, inactive=True).config
                uses = {c.base_path, c.kernel, c.initrd}
                if c.kind == "template":
                    uses.add(c.disk_path)
                if c.kind in kinds and uses & paths:
                    users.append(c.name)
        return sorted(users)

    def _delete_orphaned_template_files(self, paths: set[str | None]) -> None:
        """After a VM is deleted: the files of an earlier version of its template (a
        replaced built-in or catalog template), once nothing uses them any more."""
        for path in paths:
            vol = self._storage.volume_by_path(path) if path else None
            if vol is None or not vol.name().startswith("template-"):
                continue
            if not self._users_of({str(path)}, ("vm", "spare", "template")):
                with suppress(DockvisorError):
                    self._storage.delete(vol.name())

    def _delete_unused_volumes(self, volumes: tuple[str, ...]) -> None:
        paths = {}
        for vol in volumes:
            with suppress(NotFound):
                paths[self._storage.path_of(vol)] = vol
        if not self._users_of(set(paths)):
            for vol in paths.values():
                self._storage.delete(vol)

    def remove_template(self, name: str) -> None:
        state = self._template_state(name)
        users = self._users_of({state.config.disk_path}, ("vm",))
        if users:
            raise BadPowerState(
                f"template {name!r} is the base of VMs {', '.join(users)}; delete them first"
            )
        spares.delete_spares_of(self, name)
        with libvirt_errors(f"removing template {name}"):
            self._lookup(name).undefine()
        for vol in state.config.volumes:
            self._storage.delete(vol)

    # -- lifecycle -------------------------------------------------------------------

    def _console_log_path(self, name: str) -> str | None:
        if self._is_qemu and self.uri.endswith("/system"):
            return f"/var/log/libvirt/qemu/{name}-console.log"
        return None

    def _define(self, config: DomainConfig) -> libvirt.virDomain:
        xml = build_domain_xml(
            config, virt_type=self._virt_type, console_log=self._console_log_path(config.name)
        )
        with libvirt_errors(f"defining VM {config.name}"):
            return self._conn.defineXML(xml)

    def _check_new_name(self, name: str) -> None:
        existing = self._existing(name)
        if (
            existing is not None
            and existing.config.kind == "spare"
            and spares.clear_dead_adoption(self, name)  # a create of `name` cut short
        ):
            existing = None
        if existing is not None:
            kind = "template" if existing.config.kind == "template" else "VM"
            raise AlreadyExists(f"a {kind} named {name!r} already exists on {self.uri}")

    def create_vm(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        dom = self._new_domain(spec, progress)
        progress("defined", 1.0)
        return self._to_vm(dom, self._state(dom))

    def _new_domain(self, spec: VMSpec, progress: Progress, kind: str = "vm") -> libvirt.virDomain:
        """Define a stopped domain of `kind` ("vm", or "spare": no Docker forward, a
        spare's is given when a VM adopts it) from spec; on failure its disks are gone."""
        self._check_new_name(spec.name)
        template = self._template_state(spec.template).config
        default = template.sizes.default_disk if template.sizes else None
        size = plan_disk(spec.template, template.disk_size, default, spec.disk_size)
        check_storage_room(self.host_info(), size)
        volume = unique_volume_name(spec.name, "qcow2")
        made: list[str] = []
        progress("creating disk", 0.1)
        try:
            if spec.disk_mode is DiskMode.LINKED:  # an overlay of any size on the base
                disk = self._storage.create_overlay(
                    volume, template.disk_path, template.disk_format, size
                )
            else:
                disk = self._storage.create_copy(volume, template.disk_path, template.disk_size)
            made.append(volume)
            copied = spec.disk_mode is not DiskMode.LINKED
            if copied and size > template.disk_size and self._type != "TEST":  # (no content)
                self._storage.grow(disk, size)
            drive = self._add_config_drive(spec.name, spec.guest, made)
            progress("defining VM", 0.8)
            config = DomainConfig(
                name=spec.name,
                kind=kind,
                vcpus=spec.vcpus,
                max_vcpus=spec.max_vcpus,
                memory=spec.memory,
                max_memory=spec.max_memory,
                disk_path=disk,
                disk_size=size,
                disk_mode=spec.disk_mode,
                base_path=template.disk_path if spec.disk_mode is DiskMode.LINKED else None,
                base_format=template.disk_format,
                kernel=template.kernel,
                initrd=template.initrd,
                cmdline=template.cmdline,
                template=spec.template,
                docker_guest_port=template.docker_guest_port,
                docker_host_port=self._starts.allocate_port()
                if template.docker_guest_port and kind == "vm"
                else None,
                engine_name=spec.guest.engine_name if spec.guest else None,
                config_drive=drive,
                nic_socket=self._starts.nic_socket(spec.name),
                volumes=tuple(made),
                created=datetime.now(UTC),
            )
            return self._define(config)
        except BaseException:
            for name in made:
                with suppress(Exception):
                    self._storage.delete(name)
            raise

    def _add_config_drive(self, vm: str, guest: GuestConfig | None, made: list[str]) -> str | None:
        drive = guest.drive if guest else None
        return self._storage.add_config_drive(vm, drive, made, send_content=self._type != "TEST")

    @_by_id
    def start_vm(self, name: str) -> VM:
        dom, _ = self._vm_domain(name)
        if dom.isActive():
            raise BadPowerState(f"VM {name!r} is already {self._power(dom)}")
        with self._starts.starting(dom) as dom, libvirt_errors(f"starting VM {name}"):
            dom.create()
        return self.get_vm(name)

    def _require_running(self, dom: libvirt.virDomain, doing: str) -> None:
        if not dom.isActive():
            raise BadPowerState(f"cannot {doing} VM {dom.name()!r}: it is stopped")

    def _wait_stopped(self, dom: libvirt.virDomain, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return True
            time.sleep(0.2)
        return not dom.isActive()

    @_by_id
    def shutdown_vm(self, name: str, *, timeout: float = 60.0) -> VM:
        dom, _ = self._vm_domain(name)
        self._require_running(dom, "shut down")
        with libvirt_errors(f"shutting down VM {name}"):
            if self._is_qemu:
                dom.shutdownFlags(
                    libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
                    | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
                )
            else:
                dom.shutdown()
        if not self._wait_stopped(dom, timeout):
            raise GuestTimeout(
                f"VM {name!r} did not shut down within {timeout:.0f} s; "
                f"power it off with: dockvisor vm kill {name}"
            )
        return self.get_vm(name)

    @_by_id
    def force_off(self, name: str) -> VM:
        dom, _ = self._vm_domain(name)
        self._require_running(dom, "power off")
        with libvirt_errors(f"powering off VM {name}"):
            dom.destroy()
        return self.get_vm(name)

    @_by_id
    def reboot_vm(self, name: str) -> VM:
        dom, _ = self._vm_domain(name)
        self._require_running(dom, "reboot")
        with libvirt_errors(f"rebooting VM {name}"):
            if self._is_qemu:
                dom.reboot(
                    libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT | libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN
                )
            else:
                dom.reboot(0)
        return self.get_vm(name)

    @_by_id
    def delete_vm(self, name: str) -> None:
        dom, state = self._vm_domain(name)
        if dom.isActive():
            raise BadPowerState(f"VM {name!r} is running; stop it before deleting it")
        config = self._state(dom, inactive=True).config
        # Ours: the volumes its metadata lists. Not ours: its writable disk, if that is a
        # volume of a libvirt pool (never a path libvirt does not manage).
        own: list[libvirt.virStorageVol] = []
        if config.managed:
            for vol_name in config.volumes:
                with suppress(NotFound):
                    own.append(self._storage.volume(vol_name))
        elif config.disk_path and not config.disk_readonly:
            vol = self._storage.volume_by_path(config.disk_path)
            if vol is not None:
                own.append(vol)
        with libvirt_errors(f"deleting VM {name}"):
            flags = libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            if self._is_qemu:
                flags |= (
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT,
                                                libvirt.VIR_ERR_INVALID_ARG):  # fmt: skip
                    raise
                for snap in dom.listAllSnapshots(0):
                    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
                dom.undefine()
        for vol in own:
            with libvirt_errors(f"deleting the disk of {name}"):
                vol.delete(0)
        self._starts.forget(name)
        if config.managed:
            self._delete_orphaned_template_files({config.base_path, config.kernel, config.initrd})

    @_by_id
    def grow_disk(self, name: str, size: int) -> VM:
        dom, state = self._vm_domain(name)
        if not state.config.managed:
            raise Unsupported(f"VM {name!r} was not created by dockvisor; its disk is not ours")
        growth = check_disk_growth(name, state.config.disk_size, size)
        if not growth:
            return self.get_vm(name)
        check_storage_room(self.host_info(), growth)
        running = bool(dom.isActive())
        self._require(
            Capability.LIVE_DISK_GROWTH if running else Capability.DISK_GROWTH,
            "growing the disk of a running VM (stop it first)" if running else "growing disks",
        )
        with libvirt_errors(f"growing the disk of VM {name}"):
            if self._type == "TEST":
                pass  # the test driver's disks have no content to grow
            elif running:  # QEMU only (LIVE_DISK_GROWTH): the disk is vda
                dom.blockResize("vda", size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                self._storage.grow(state.config.disk_path, size)
            # The size in dockvisor's metadata: now, and for the next boot.
            for flags, config in (
                (libvirt.VIR_DOMAIN_AFFECT_LIVE, state.config if running else None),
                (libvirt.VIR_DOMAIN_AFFECT_CONFIG, self._state(dom, inactive=True).config),
            ):
                if config is not None:
                    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                    metadata_xml(replace(config, disk_size=size)),
                                    "dockvisor", NS, flags)  # fmt: skip
        return self.get_vm(name)

    @_by_id
    def set_resources(
        self, name: str, *, vcpus: int | None = None, memory: int | None = None
    ) -> ResizeResult:
        dom, state = self._vm_domain(name)
        with libvirt_errors(f"resizing VM {name}"):
            applied, pending, reasons = resize_domain(
                dom,
                live=state.config,
                next_boot=lambda: self._state(dom, inactive=True).config,
                balloon=self._balloon,
                vcpus=vcpus,
                memory=memory,
            )
        return ResizeResult(vm=self.get_vm(name), applied=applied, pending=pending,
                            reasons=reasons)  # fmt: skip

    # -- warm spares (spares.py) -----------------------------------------------------

    def create_spare(self, spec: VMSpec, progress: Progress = no_progress) -> Spare:
        return spares.create_spare(self, spec, progress)

    def list_spares(self) -> list[Spare]:
        return spares.list_spares(self)

    def delete_spare(self, name: str) -> None:
        spares.delete_spare(self, name)

    def keep_spares(self, template: str, count: int) -> None:
        spares.keep_spares(self, template, count)

    def adopt_spare(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        return spares.adopt_spare(self, spec, progress)

    # -- snapshots -------------------------------------------------------------------

    def _snapshot(self, dom: libvirt.virDomain, snapshot: str) -> libvirt.virDomainSnapshot:
        try:
            return dom.snapshotLookupByName(snapshot, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                raise HypervisorError(f"looking up snapshot {snapshot}: {exc}") from exc
            owners = [d.name() for d in self._domains() if d.name() != dom.name()
                      and snapshot in snapshot_names(d)]  # fmt: skip
            where = f" (VM {owners[0]!r} has one of that name)" if owners else ""
            raise NotFound(f"VM {dom.name()!r} has no snapshot {snapshot!r}{where}") from exc

    @_by_id
    def create_snapshot(self, name: str, snapshot: str, description: str = "") -> Snapshot:
        self._require(Capability.SNAPSHOTS, "snapshots")
        dom, _ = self._vm_domain(name)
        xml = (
            f"<domainsnapshot><name>{escape(snapshot)}</name>"
            f"<description>{escape(description)}</description></domainsnapshot>"
        )
        try:
            snap = dom.snapshotCreateXML(xml, 0)
        except libvirt.libvirtError as exc:
            if snapshot in snapshot_names(dom):
                raise AlreadyExists(f"VM {name!r} already has a snapshot {snapshot!r}") from exc
            raise translate(exc, f"snapshotting VM {name}") from exc
        return snapshot_record(name, snap, current=True)

    @_by_id
    def list_snapshots(self, name: str) -> list[Snapshot]:
        dom, _ = self._vm_domain(name)
        with libvirt_errors(f"listing snapshots of {name}"):
            snaps = [snapshot_record(name, s) for s in dom.listAllSnapshots(0)]
        return sorted(snaps, key=lambda s: (s.created, s.name))

    @_by_id
    def revert_to_snapshot(self, name: str, snapshot: str) -> VM:
        self._require(Capability.SNAPSHOTS, "snapshots")
        dom, _ = self._vm_domain(name)
        snap = self._snapshot(dom, snapshot)
        info = snapshot_record(name, snap)
        if self._is_qemu and info.with_memory:
            load_memory_snapshot(self._conn, dom, snap, info, starting=self._starts.starting)
        else:
            with libvirt_errors(f"reverting VM {name} to {snapshot}"):
                dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)
        return self.get_vm(name)

    @_by_id
    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._require(Capability.SNAPSHOTS, "snapshots")
        dom, _ = self._vm_domain(name)
        snap = self._snapshot(dom, snapshot)
        with libvirt_errors(f"deleting snapshot {snapshot} of {name}"):
            snap.delete(0)

    # -- clones ----------------------------------------------------------------------

    @_by_id
    def clone_vm(
        self,
        name: str,
        new_name: str,
        *,
        linked: bool = True,
        guest: GuestConfig | None = None,
        progress: Progress = no_progress,
    ) -> VM:
        dom, state = self._vm_domain(name)
        self._check_new_name(new_name)
        source = self._state(dom, inactive=True).config
        if not source.managed:
            raise Unsupported(f"VM {name!r} was not created by dockvisor; it cannot be cloned")
        mode = DiskMode.LINKED if linked and source.disk_mode is DiskMode.LINKED else DiskMode.FULL
        if mode is DiskMode.LINKED:
            self._require(Capability.LINKED_CLONES, "linked clones")
        volume = unique_volume_name(new_name, "qcow2")
        new_dom = None
        made = [volume]
        try:
            if mode is DiskMode.LINKED:
                assert source.base_path is not None
                disk = self._storage.create_overlay(
                    volume, source.base_path, source.base_format, source.disk_size
                )
            else:
                disk = self._storage.create_empty(volume, source.disk_size)
            if self._is_qemu:
                self._copy_disk(dom, state.config.disk_path, disk, shallow=mode is DiskMode.LINKED,
                                progress=progress)  # fmt: skip
            elif self._type != "TEST":
                self._require(Capability.CLONE_RUNNING, "cloning")
            drive = self._add_config_drive(new_name, guest, made)
            config = replace(
                source,
                name=new_name,
                uuid=None,
                mac=random_mac(),
                disk_path=disk,
                disk_mode=mode,
                base_path=source.base_path if mode is DiskMode.LINKED else None,
                docker_host_port=self._starts.allocate_port() if source.docker_guest_port else None,
                engine_name=guest.engine_name if guest else None,
                config_drive=drive,
                nic_socket=self._starts.nic_socket(new_name),
                volumes=tuple(made),
                created=datetime.now(UTC),
            )
            progress("defining the clone", 0.95)
            new_dom = self._define(config)
        except BaseException:
            if new_dom is not None:
                with suppress(Exception):
                    new_dom.undefine()
            for vol in made:
                with suppress(Exception):
                    self._storage.delete(vol)
            raise
        progress("cloned", 1.0)
        return self._to_vm(new_dom, self._state(new_dom))

    def _copy_disk(self, dom: libvirt.virDomain, source: str, dest: str, *, shallow: bool,
                   progress: Progress) -> None:  # fmt: skip
        """Copy the VM's disk into `dest` (pre-created) through a block-copy job."""
        started_here = False
        name = dom.name()
        with libvirt_errors(f"copying the disk of {name}"):
            if not dom.isActive():
                progress("starting the stopped VM paused to read its disk", 0.1)
                with self._starts.starting(dom) as dom:
                    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                started_here = True
            try:
                mirror_and_cut(dom, dest, shallow=shallow, freeze=not started_here,
                               progress=progress)  # fmt: skip
            finally:
                if started_here:
                    with suppress(libvirt.libvirtError):
                        dom.destroy()

    # -- guest access ----------------------------------------------------------------

    @_by_id
    def guest_addresses(self, name: str) -> list[str]:
        dom, _ = self._vm_domain(name)
        self._require(Capability.GUEST_AGENT, "asking a guest agent for addresses")
        self._require_running(dom, "query the guest of")
        with libvirt_errors(f"asking the guest agent of {name}"):
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        addresses = []
        for iface, data in sorted(ifaces.items()):
            for addr in data.get("addrs") or []:
                ip = addr.get("addr", "")
                if iface != "lo" and ip and not ip.startswith(("127.", "::1", "fe80:")):
                    addresses.append(ip)
        return addresses

    @_by_id
    def docker_endpoint(self, name: str) -> DockerEndpoint:
        dom, state = self._vm_domain(name)
        config = state.config
        if config.docker_guest_port is None:
            raise Unsupported(
                f"VM {name!r} has no Docker engine (its template is not Docker-ready)"
            )
        if not self.capabilities & (Capability.LOOPBACK_FORWARD | Capability.GUEST_ADDRESSES):
            raise Unsupported(f"{self.uri} gives no way to locate a guest's Docker engine")
        self._require_running(dom, "reach the Docker engine of")
        tls, server_name = config.engine_name is not None, config.engine_name
        if config.docker_host_port and Capability.LOOPBACK_FORWARD in self.capabilities:
            return DockerEndpoint("127.0.0.1", config.docker_host_port, tls, server_name)
        addresses = self.guest_addresses(name)
        if not addresses:
            raise GuestTimeout(f"the guest agent of {name!r} reports no IP address yet")
        return DockerEndpoint(addresses[0], config.docker_guest_port, tls, server_name)

    @_by_id
    def console_log(self, name: str, lines: int = 20) -> str:
        _, state = self._vm_domain(name)
        return log_tail(state.console_log, lines) if self._local else ""

    @_by_id
    def open_console(self, name: str, kind: ConsoleKind) -> socket.socket:
        self._require(kind.capability, f"the {kind} console")  # the screen: on this machine only
        dom, state = self._vm_domain(name)
        return open_console(dom, self.uri, state.uuid, kind)

    # -- events ----------------------------------------------------------------------

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(vm_id, what)` on each domain lifecycle event (what: "started",
        "stopped", "defined", "undefined"...). Needs `start_event_loop()` to have run
        before this driver connected."""

        def relay(_conn: object, dom: libvirt.virDomain, event: int, _detail: int,
                  _opaque: object) -> None:  # fmt: skip
            callback(dom.UUIDString(), EVENT_NAMES.get(event, "changed"))

        with libvirt_errors(f"watching {self.uri}"):
            self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, relay, None
            )

    # -- for tests and benchmarks ----------------------------------------------------

    @contextmanager
    def raw_connection(self) -> Iterator[libvirt.virConnect]:
        """The underlying libvirt connection (benchmarks compare against raw calls)."""
        yield self._conn

    def volume_names(self) -> list[str]:
        return self._storage.names()
