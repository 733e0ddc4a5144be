"""Snapshots of libvirt domains: reading them, and loading one taken with memory.

Why loading has its own code: libvirt 9.0 reverts to a memory snapshot by restarting
QEMU with `-loadvm`, which runs before libvirt re-plugs hot-plugged vCPUs, so a snapshot
of a VM whose vCPUs were changed live (and our VMs plug every vCPU after the first)
never loads: "Unknown savevm section or instance 'cpu_common' 1". Here the snapshot's
configuration is started paused (libvirt plugs its vCPUs), then `loadvm` runs through
the monitor and the VM resumes.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from datetime import UTC, datetime

import libvirt

from dockvisor.domain.model import PowerState, Snapshot
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.errors import HypervisorError

__all__ = [
    "hmp",
    "load_memory_snapshot",
    "snapshot_names",
    "snapshot_record",
    "sync_guest_clock",
]


def snapshot_names(dom: libvirt.virDomain) -> list[str]:
    try:
        return list(dom.snapshotListNames(0))
    except libvirt.libvirtError:
        return []


def snapshot_record(
    vm: str, snap: libvirt.virDomainSnapshot, current: bool | None = None
) -> Snapshot:
    """The Snapshot record of a libvirt snapshot (`current` if already known)."""
    root = ET.fromstring(snap.getXMLDesc(0))
    state = root.findtext("state", "shutoff")
    memory = root.find("memory")
    with_memory = (
        memory.get("snapshot") in ("internal", "external")
        if memory is not None
        else state in ("running", "paused")
    )
    if current is None:
        try:
            current = bool(snap.isCurrent(0))
        except libvirt.libvirtError:
            current = False
    size = None
    if (domain := root.find("domain")) is not None:
        with suppress(ValueError, ET.ParseError):
            size = parse_domain_xml(ET.tostring(domain, encoding="unicode")).config
    return Snapshot(
        name=root.findtext("name", ""),
        vm=vm,
        created=datetime.fromtimestamp(int(root.findtext("creationTime", "0")), UTC),
        power_state={"running": PowerState.RUNNING, "paused": PowerState.PAUSED}.get(
            state, PowerState.STOPPED
        ),
        with_memory=with_memory,
        description=root.findtext("description", ""),
        parent=root.findtext("parent/name"),
        current=current,
        vcpus=size.vcpus if size else None,
        memory=size.memory if size else None,
        disk_size=size.disk_size if size and size.managed else None,
    )


def load_memory_snapshot(
    conn: libvirt.virConnect,
    dom: libvirt.virDomain,
    snap: libvirt.virDomainSnapshot,
    info: Snapshot,
    *,
    starting: Callable[[libvirt.virDomain], AbstractContextManager[libvirt.virDomain]],
) -> None:
    """Return `dom` to the memory snapshot `snap`: its configuration, disk and memory.

    QEMU starts inside `starting(dom)`, given the redefined domain, which prepares what
    a start needs (a free Docker port, the guest network) and answers the domain to
    start. On failure the VM is left off.
    """

    name = dom.name()
    snap_xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    match = re.search(r"<domain[ >].*</domain>", snap_xml, re.S)
    if match is None:
        raise HypervisorError(f"snapshot {info.name} of {name} records no configuration")
    with libvirt_errors(f"reverting VM {name} to {info.name}"):
        if dom.isActive():
            dom.destroy()
        dom = conn.defineXML(match.group(0))
        with starting(dom) as dom:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        try:
            reply = hmp(dom, f'loadvm "{info.name}"')
        except libvirt.libvirtError:
            dom.destroy()
            raise
        if reply:
            dom.destroy()
            raise HypervisorError(f"reverting VM {name} to {info.name}: QEMU said: {reply[:300]}")
        dom.snapshotCreateXML(
            snap_xml,
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
        )
        if info.power_state is PowerState.RUNNING:
            dom.resume()
            sync_guest_clock(dom)


def hmp(dom: libvirt.virDomain, command: str) -> str:
    """QEMU's answer to a human-monitor command (savevm, loadvm, delvm: empty when they
    succeed), stripped. libvirt notes such a command in the domain's log ("tainted")."""
    import libvirt_qemu

    reply = libvirt_qemu.qemuMonitorCommand(
        dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    return str(reply).strip()


def sync_guest_clock(dom: libvirt.virDomain, timeout: float = 5.0) -> None:
    """After a memory revert the guest's clock reads the snapshot's time: set it to now
    through the agent (best effort: a guest without an agent keeps its clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        try:
            dom.setTime({"seconds": int(now), "nseconds": int(now % 1 * 1e9)}, 0)
            return
        except libvirt.libvirtError:
            time.sleep(0.2)
