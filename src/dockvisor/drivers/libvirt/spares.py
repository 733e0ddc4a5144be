"""Warm spares: VMs booted ahead of time, saved with their memory, resumed by a create.

Why spares and not one warm image copied for every VM: a Docker engine's identity is
made when dockerd starts (`docker info`'s ID comes from the key it reads then, and its
TLS listener is set up then), and restarting dockerd in a resumed guest costs 6-8 s
under TCG (its network setup: about a hundred iptables calls; measured). A spare is
instead a VM booted once with an identity of its own: its own UUID and MAC, its own
engine key and certificate (its own config drive), its own kernel random state (from
its own boot, with the host's virtio-rng), made unique by being made, not rewritten
afterwards. Its Docker engine is brought up, then QEMU's `savevm` keeps its memory in
its own disk file (an internal snapshot named WARM_STATE) and it is stopped.

A create adopts one: the spare's domain is renamed to the new VM and redefined with a
Docker forward under a lock (two creates never get one spare), still a spare marked
with its adopting process until the adoption ends (one cut short by a killed process
is removed: clear_dead_adoption), its file checked against the SHA-256 taken when it
was saved, started paused, `loadvm` brings its memory back and `delvm` frees it, its
disk grows if asked, it resumes, its clock is set to the host's through the guest
agent, the guest agent sets its hostname, vCPUs and memory are plugged live to the
asked size, and it becomes a VM. (Its /etc/machine-id, written from its UUID at its
boot, is already its own: the VM keeps the spare's UUID.) The spare's disk is an
overlay on its template's base like any linked VM's; nothing is copied. A spare saved
by another QEMU or machine type, or on an older base of its template, or whose file
was cut or changed, is refused and deleted (WarmStartUnavailable says why).

Spares are the host's: they are in no resource set and no user's quota; their files
count in the pool's free space (HostInfo.storage_free) like any volume.
"""

from __future__ import annotations

import base64
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from dockvisor.domain.model import VM, Capability, DiskMode, Spare, VMSpec
from dockvisor.domain.naming import SPARE_PREFIX
from dockvisor.domain.sizes import KiB, format_size
from dockvisor.drivers.base import Progress, no_progress
from dockvisor.drivers.libvirt.domain_xml import (
    NS,
    Adopter,
    DomainConfig,
    SpareSeal,
    metadata_xml,
)
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.drivers.libvirt.guest_network import process_stat
from dockvisor.drivers.libvirt.host_locks import host_lock
from dockvisor.drivers.libvirt.resize import resize_domain
from dockvisor.drivers.libvirt.snapshots import hmp, sync_guest_clock
from dockvisor.errors import (
    DockvisorError,
    GuestTimeout,
    HypervisorError,
    InvalidInput,
    NotFound,
    WarmStartUnavailable,
)

if TYPE_CHECKING:
    from dockvisor.drivers.libvirt.driver import LibvirtDriver

__all__ = [
    "WARM_STATE",
    "adopt_spare",
    "create_spare",
    "delete_spare",
    "delete_spares_of",
    "list_spares",
]

WARM_STATE = "dockvisor-warm"
# An unsaved spare older than this was being made by a process that is gone.
_ABANDONED_AFTER = 900.0

# Run in the adopted guest by its agent, as root, with the VM's name as $1 (an argument,
# never spliced into the script). The stored name is the one the guest's init compares
# at boot: it keeps the engine key the spare made for itself across reboots.
_ADOPT_SCRIPT = """set -e
hostname "$1"
echo "$1" > /etc/hostname
printf '127.0.0.1 localhost %s\\n::1 localhost\\n' "$1" > /etc/hosts
mkdir -p /var/lib/dockvisor
echo "$1" > /var/lib/dockvisor/hostname
"""
# Ready when dockerd listens on its TCP port (after its unix socket): the log says so.
_ENGINE_UP = "grep -q 'API listen on \\[::\\]' /var/log/dockerd.log"


def _agent(dom: libvirt.virDomain, command: str, arguments: dict[str, Any], timeout: int = 10
           ) -> Any:  # fmt: skip
    import libvirt_qemu

    reply = libvirt_qemu.qemuAgentCommand(
        dom, json.dumps({"execute": command, "arguments": arguments}), timeout, 0
    )
    return json.loads(reply)["return"]


def guest_run(dom: libvirt.virDomain, argv: list[str], *, timeout: float = 30.0) -> str:
    """Run `argv` in the guest through its agent and wait; its output. HypervisorError
    if it fails or the agent does not answer, GuestTimeout if it runs too long."""
    deadline = time.monotonic() + timeout
    pid = None
    while pid is None:
        try:
            run = {"path": argv[0], "arg": argv[1:], "capture-output": True}
            pid = _agent(dom, "guest-exec", run)["pid"]
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise HypervisorError(f"the guest agent of {dom.name()} did not answer: "
                                      f"{exc.get_error_message()}") from exc  # fmt: skip
            time.sleep(0.2)
    while time.monotonic() < deadline:
        status = _agent(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
            if status.get("exitcode", 0) != 0:
                raise HypervisorError(
                    f"{argv[0]} in {dom.name()} failed ({status.get('exitcode')}): "
                    f"{(err or out).strip()[:300]}"
                )
            return out
        time.sleep(0.05)
    raise GuestTimeout(f"{argv[0]} in {dom.name()} did not finish within {timeout:.0f} s")


def _machine(xml: str) -> str:
    el = ET.fromstring(xml).find("os/type")
    return el.get("machine", "") if el is not None else ""


# The driver's warm-spare methods, with the driver as `d`.


def create_spare(d: LibvirtDriver, spec: VMSpec, progress: Progress = no_progress
                 ) -> Spare:  # fmt: skip
    d._require(Capability.WARM_SPARES, "warm spares")
    if not spec.name.startswith(SPARE_PREFIX):
        raise InvalidInput(f"a spare's name starts with {SPARE_PREFIX!r} (got {spec.name!r})")
    if spec.disk_mode is not DiskMode.LINKED:
        raise InvalidInput("spares are linked to their template's base")
    if d._is_qemu and d._template_state(spec.template).config.docker_guest_port is None:
        raise InvalidInput(f"template {spec.template!r} runs no Docker engine to keep warm")
    dom = d._new_domain(spec, no_progress, kind="spare")
    try:
        progress("booting the spare", 0.05)
        with d._starts.starting(dom) as dom, libvirt_errors(f"starting spare {spec.name}"):
            dom.create()
        machine = _machine(dom.XMLDesc(0))
        if d._is_qemu:
            _wait_engine_up(d, dom, progress)
            progress("saving the spare's memory", 0.9)
            with libvirt_errors(f"saving spare {spec.name}"):
                reply = hmp(dom, f'savevm "{WARM_STATE}"')
            if reply:
                raise HypervisorError(f"saving spare {spec.name}: QEMU said: {reply[:300]}")
        with libvirt_errors(f"stopping spare {spec.name}"):
            dom.destroy()
            config = d._state(dom, inactive=True).config
            digest = d._storage.digest(config.disk_path) if d._is_qemu else ""
            seal = SpareSeal(qemu=int(d._conn.getVersion()), machine=machine,
                             file_size=_file_size(d, config.disk_path),
                             saved=datetime.now(UTC), sha256=digest)  # fmt: skip
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            metadata_xml(replace(config, seal=seal)), "dockvisor", NS,
                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)  # fmt: skip
    except BaseException:
        _discard(d, dom)
        raise
    progress("spare saved", 1.0)
    return _to_spare(d, d._state(dom, inactive=True).config, dom)


def _wait_engine_up(d: LibvirtDriver, dom: libvirt.virDomain, progress: Progress,
                    timeout: float = 240.0) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        progress("waiting for the spare's Docker engine",
                 0.1 + 0.75 * min((time.monotonic() - started) / 60, 1.0))  # fmt: skip
        if not dom.isActive():
            raise HypervisorError(f"spare {dom.name()} stopped while booting")
        with suppress(HypervisorError):
            guest_run(dom, ["/bin/sh", "-c", _ENGINE_UP], timeout=10)
            time.sleep(2.0)  # let dockerd finish its start-up work before the save
            return
        if time.monotonic() > deadline:
            raise GuestTimeout(f"spare {dom.name()}'s Docker engine did not start "
                               f"within {timeout:.0f} s")  # fmt: skip
        time.sleep(1.0)


def _file_size(d: LibvirtDriver, path: str) -> int:
    vol = d._storage.volume_by_path(path)
    if vol is None:
        return -1
    with suppress(libvirt.libvirtError):
        return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
    return int(vol.info()[2])


def _spare_domains(d: LibvirtDriver) -> list[tuple[libvirt.virDomain, DomainConfig]]:
    found = []
    for dom in d._domains():
        with suppress(NotFound, HypervisorError):
            config = d._state(dom, inactive=True).config
            if config.kind == "spare":
                found.append((dom, config))
    return found


def _to_spare(d: LibvirtDriver, config: DomainConfig, dom: libvirt.virDomain) -> Spare:
    stored = 0
    for volume in config.volumes:
        with suppress(DockvisorError, libvirt.libvirtError):
            stored += _file_size(d, d._storage.path_of(volume))
    stale = None
    if config.seal is not None:
        try:
            stale = _stale(d, config, d._template_state(config.template or "").config)
        except NotFound:
            stale = f"its template {config.template!r} is gone"
    return Spare(
        name=config.name,
        template=config.template or "",
        ready=config.seal is not None and not dom.isActive() and stale is None,
        vcpus=config.vcpus,
        max_vcpus=config.max_vcpus,
        memory=config.memory,
        max_memory=config.max_memory,
        disk_size=config.disk_size,
        stored=stored,
        created=config.created,
        engine_name=config.engine_name,
        stale=stale,
        uuid=config.uuid or "",
    )


def list_spares(d: LibvirtDriver) -> list[Spare]:
    if Capability.WARM_SPARES not in d.capabilities:
        return []
    spares = []
    now = datetime.now(UTC)
    for dom, config in _spare_domains(d):
        if _adopted(config):
            _discard_spare(d, dom, config.name, adoptions_only=True)  # or being adopted
            continue
        if config.seal is None and (
            config.created is None or (now - config.created).total_seconds() > _ABANDONED_AFTER
        ):
            _discard_spare(d, dom, config.name)  # its making was cut short
            continue
        spares.append(_to_spare(d, config, dom))
    return sorted(spares, key=lambda s: (s.template, s.created or now, s.name))


def delete_spare(d: LibvirtDriver, name: str) -> None:
    for dom, config in _spare_domains(d):
        if config.name == name and _discard_spare(d, dom, name):
            return
    raise NotFound(f"no warm spare named {name!r} on {d.uri}")


def keep_spares(d: LibvirtDriver, template: str, count: int) -> None:
    if count:
        d._require(Capability.WARM_SPARES, "warm spares")
    config = d._template_state(template).config
    if config.spares_kept != count:
        with libvirt_errors(f"recording the spares of template {template}"):
            d._lookup(template).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                metadata_xml(replace(config, spares_kept=count)),
                "dockvisor", NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )  # fmt: skip


def delete_spares_of(d: LibvirtDriver, template: str) -> None:
    for dom, config in _spare_domains(d):
        if config.template == template:
            _discard_spare(d, dom, config.name)


def _discard(d: LibvirtDriver, dom: libvirt.virDomain) -> None:
    """Remove a spare (or a half-adopted one): its QEMU, its domain, its volumes."""
    with suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    config = None
    with suppress(DockvisorError, libvirt.libvirtError):
        config = d._state(dom, inactive=True).config
    name = ""
    with suppress(libvirt.libvirtError):
        name = dom.name()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    for volume in config.volumes if config else ():
        with suppress(DockvisorError):
            d._storage.delete(volume)
    if name:
        d._starts.forget(name)
    if config is not None:  # the last user of an earlier version of its template
        d._delete_orphaned_template_files({config.base_path, config.kernel, config.initrd})


def _discard_spare(d: LibvirtDriver, dom: libvirt.virDomain, name: str, *,
                   adoptions_only: bool = False) -> bool:  # fmt: skip
    """Discard the spare `name` under the claim lock, if it is still that spare (named
    so, with that UUID) and no live process is adopting it: True if it was. With
    `adoptions_only`, only if it is a spare whose adoption was cut short."""
    with _claiming():  # where adoptions begin and end: none is seen halfway
        config = _still_spare(d, dom, name)
        if config is None:
            return False
        if adoptions_only and not _adopted(config):
            return False
        if config.adopter is not None and not _adopter_gone(config.adopter, config.created):
            return False  # under way
        _discard(d, dom)
        return True


def clear_dead_adoption(d: LibvirtDriver, name: str) -> bool:
    """Remove the domain `name` if it is a spare whose adoption as the VM `name` was cut
    short (its process is gone): True if it was (the name is free again)."""
    with suppress(libvirt.libvirtError):
        dom = d._conn.lookupByName(name)
        return _discard_spare(d, dom, name, adoptions_only=True)
    return False


def _me() -> Adopter:
    return Adopter(boot_id=_boot_id(), pid=os.getpid(), started=_start_time(os.getpid()) or 0)


def _boot_id() -> str:
    with suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot: /proc/PID/stat's 22nd field);
    None if it no longer runs."""
    fields = process_stat(pid)
    return int(fields[19]) if fields is not None else None


def _adopter_gone(adopter: Adopter, since: datetime | None) -> bool:
    """Whether the process adopting a spare is gone: told by its pid on this machine since
    its boot; elsewhere (or before a reboot) once the adoption is older than any takes."""
    if adopter.boot_id and adopter.boot_id == _boot_id():
        return _start_time(adopter.pid) != adopter.started
    return since is None or (datetime.now(UTC) - since).total_seconds() > _ABANDONED_AFTER


def _adopted(config: DomainConfig) -> bool:
    """Whether the spare `config` is being adopted, or was and the adoption was cut
    short (marked with its adopter, or already under the VM's name)."""
    return config.adopter is not None or not config.name.startswith(SPARE_PREFIX)


def _still_spare(d: LibvirtDriver, dom: libvirt.virDomain, name: str) -> DomainConfig | None:
    """The spare's configuration if the domain called `name` is still this spare."""
    try:
        now = d._conn.lookupByName(name)
        if now.UUIDString() != dom.UUIDString():
            return None
        config = d._state(now, inactive=True).config
    except (libvirt.libvirtError, DockvisorError):
        return None
    return config if config.kind == "spare" else None


def _stale(d: LibvirtDriver, config: DomainConfig, template: DomainConfig) -> str | None:
    """Why this spare can no longer become a VM of its template here (None: it can)."""
    seal = config.seal
    assert seal is not None
    if d._is_qemu and not seal.sha256:
        return f"spare {config.name} was saved without a checksum (by an older dockvisor)"
    if config.base_path != template.disk_path:
        return (f"template {template.name!r} has changed since spare {config.name} was "
                "saved (its disk is another)")  # fmt: skip
    qemu = int(d._conn.getVersion())
    if qemu != seal.qemu:
        return (f"spare {config.name} was saved by QEMU {_version(seal.qemu)}; this host "
                f"runs {_version(qemu)}")  # fmt: skip
    size = _file_size(d, config.disk_path)
    if size != seal.file_size:
        what = "is missing" if size < 0 else f"is {size} bytes, not {seal.file_size}"
        return f"the saved state of spare {config.name} {what} (cut or changed)"
    return None


def adopt_spare(d: LibvirtDriver, spec: VMSpec, progress: Progress = no_progress) -> VM:
    if Capability.WARM_SPARES not in d.capabilities:
        raise WarmStartUnavailable(f"host {d.uri} keeps no warm spares")
    if spec.guest is not None:
        raise InvalidInput("an adopted spare keeps its own identity: give no config drive")
    if spec.disk_mode is not DiskMode.LINKED:
        raise WarmStartUnavailable("a full-copy disk is made by a cold create only")
    d._check_new_name(spec.name)
    template = d._template_state(spec.template).config
    reasons: list[str] = []
    candidates = [(dom, c) for dom, c in _spare_domains(d)
                  if c.template == spec.template and c.seal is not None
                  and c.name.startswith(SPARE_PREFIX) and not dom.isActive()]  # fmt: skip
    candidates.sort(key=lambda dc: dc[1].seal.saved if dc[1].seal else datetime.now(UTC))
    for dom, config in candidates:
        if why := _stale(d, config, template):
            _discard_spare(d, dom, config.name)
            reasons.append(why)
            continue
        if config.max_memory > spec.max_memory:
            # Its memory is the QEMU's it was saved in: the guest could take it back from
            # the balloon, beyond what this VM may ever have (its maximum).
            reasons.append(
                f"spares of {spec.template!r} hold {format_size(config.max_memory)} of "
                f"memory, more than this VM's maximum of {format_size(spec.max_memory)}"
            )
            continue
        if spec.vcpus > config.max_vcpus or spec.memory > config.max_memory:
            reasons.append(
                f"spares of {spec.template!r} grow to at most {config.max_vcpus} vCPUs "
                f"and {format_size(config.max_memory)} (asked {spec.vcpus} vCPUs, "
                f"{format_size(spec.memory)})"
            )
            continue
        if spec.disk_size is not None and spec.disk_size < config.disk_size:
            reasons.append(
                f"spares of {spec.template!r} have a {format_size(config.disk_size)} "
                f"disk (asked {format_size(spec.disk_size)}; disks only grow)"
            )
            continue
        # A spare still (no VM to anyone) until its adoption ends: one cut short is told
        # by its adopter being gone, and removed (clear_dead_adoption).
        vm_config = replace(
            config,
            name=spec.name,
            seal=None,
            adopter=_me(),
            docker_host_port=d._starts.allocate_port() if config.docker_guest_port else None,
            nic_socket=d._starts.nic_socket(spec.name),
            created=datetime.now(UTC),
        )
        adopted = _claim(d, dom, config, vm_config)
        if adopted is None:
            continue  # another create took it
        try:
            return _resume_adopted(d, adopted, config, vm_config, spec, progress)
        except _NotStarted as exc:
            _give_back(d, adopted, config, spec.name)
            reasons.append(f"spare {config.name} could not start as {spec.name!r} (it is "
                           f"kept): {exc.__cause__ or exc}")  # fmt: skip
            raise _unavailable(reasons) from exc
        except BaseException as exc:
            _discard(d, adopted)
            if isinstance(exc, DockvisorError | libvirt.libvirtError):
                reasons.append(f"spare {config.name} could not become {spec.name!r}: {exc}")
                raise _unavailable(reasons) from exc
            raise
    if not reasons:
        reasons.append(f"no warm spare of template {spec.template!r} is left on {d.uri}")
    raise _unavailable(reasons)


def _unavailable(reasons: list[str]) -> WarmStartUnavailable:
    """Why no spare served a create: each reason once, in the order met."""
    return WarmStartUnavailable("; ".join(dict.fromkeys(reasons)))


def _resume_adopted(d: LibvirtDriver, dom: libvirt.virDomain, spare: DomainConfig,
                    config: DomainConfig, spec: VMSpec, progress: Progress) -> VM:  # fmt: skip
    """Bring the claimed spare `dom` (now defined as the VM `config`) to life as spec."""
    name = spec.name
    assert spare.seal is not None
    progress("adopting a warm spare", 0.1)
    with libvirt_errors(f"resuming {name} from its spare"):
        if d._is_qemu:
            if d._storage.digest(spare.disk_path) != spare.seal.sha256:
                raise WarmStartUnavailable(
                    f"the saved state of spare {spare.name} does not match the checksum "
                    "taken when it was saved (corrupted)"
                )
            machine = _machine(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if machine != spare.seal.machine:
                raise WarmStartUnavailable(
                    f"spare {spare.name} was saved on machine type {spare.seal.machine}; "
                    f"this host now gives {machine}"
                )
            try:
                with d._starts.starting(dom) as dom:
                    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except (libvirt.libvirtError, DockvisorError) as exc:
                raise _NotStarted() from exc  # nothing read its file: it can wait on
            progress("loading the spare's memory", 0.3)
            reply = hmp(dom, f'loadvm "{WARM_STATE}"')
            if reply:
                raise HypervisorError(f"QEMU said: {reply[:300]}")
            # The saved memory goes: it held the spare's engine key, on its tmpfs.
            if reply := hmp(dom, f'delvm "{WARM_STATE}"'):
                raise HypervisorError(f"QEMU said: {reply[:300]}")
        else:  # the test driver: no memory to load, nor a paused start
            with d._starts.starting(dom) as dom:
                dom.create()
        if spec.disk_size is not None and spec.disk_size > spare.disk_size:
            if d._is_qemu:
                dom.blockResize("vda", spec.disk_size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            for flags in (libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG):
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                metadata_xml(replace(config, disk_size=spec.disk_size)),
                                "dockvisor", NS, flags)  # fmt: skip
        progress("resuming", 0.6)
        if d._is_qemu:
            dom.resume()
            sync_guest_clock(dom)
            guest_run(dom, ["/bin/sh", "-c", _ADOPT_SCRIPT, "adopt", name], timeout=20)
        live = d._state(dom).config
        if (spec.vcpus, spec.memory) != (live.vcpus, live.memory):
            progress("sizing", 0.8)
            resize_domain(
                dom,
                live=live,
                next_boot=lambda: d._state(dom, inactive=True).config,
                balloon=d._balloon,
                vcpus=spec.vcpus if spec.vcpus != live.vcpus else None,
                memory=spec.memory if spec.memory != live.memory else None,
            )
        # Its room to grow is this VM's, as a cold create gives it (from its next boot;
        # beyond it, growing needs the right to allocate, as for any VM).
        cfg = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if spec.max_vcpus != spare.max_vcpus:
            dom.setVcpusFlags(spec.max_vcpus, cfg | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        if spec.max_memory != spare.max_memory:
            dom.setMemoryFlags(spec.max_memory // KiB, cfg | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
        # A VM from now on, no longer a spare being adopted: its lasting definition first
        # (a cut between the two leaves a VM that a sweep never removes).
        with _claiming():
            for inactive, flags in ((True, cfg), (False, libvirt.VIR_DOMAIN_AFFECT_LIVE)):
                now = d._state(dom, inactive=inactive).config
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                metadata_xml(replace(now, kind="vm", adopter=None)),
                                "dockvisor", NS, flags)  # fmt: skip
    progress("adopted", 1.0)
    return d.get_vm(name)


@contextmanager
def _claiming() -> Iterator[None]:
    """Claims (and deletions of spares) one at a time on this machine, by every thread
    of every dockvisor process of any user."""
    with host_lock("spares"):
        yield


def _claim(d: LibvirtDriver, dom: libvirt.virDomain, spare: DomainConfig,
           vm: DomainConfig) -> libvirt.virDomain | None:  # fmt: skip
    """Make the spare `spare` the spare being adopted `vm` (renamed and redefined, not
    started) if it is still that spare: its domain, or None if another create took it. libvirt
    renames by UUID (a second rename of one domain succeeds too), so the check, the
    rename and the redefinition run under _claiming: nobody sees a claim halfway."""
    with _claiming():
        if _still_spare(d, dom, spare.name) is None or dom.isActive():
            return None
        with libvirt_errors(f"claiming spare {spare.name}"):
            dom.rename(vm.name, 0)
            return d._define(vm)


class _NotStarted(Exception):
    """QEMU did not start for the adopted spare (host memory, say): nothing read its file."""


def _give_back(d: LibvirtDriver, dom: libvirt.virDomain, spare: DomainConfig, vm: str) -> None:
    """Return a claimed spare that never ran to the spares, as it was (first a spare
    again under the VM's name, then its own name); else remove it."""
    with _claiming():
        try:
            with suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            d._define(replace(spare, name=vm))
            d._lookup(vm).rename(spare.name, 0)
        except (libvirt.libvirtError, DockvisorError):
            _discard(d, dom)


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
