"""What the conformance suite needs to know about each adapter family, and nothing else:
how to open a connection with a template to make VMs from, and how to look at the
hypervisor's own view (its disks, its objects' names) to prove that nothing was left
behind. The suite itself names no adapter.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dockvisor.domain.model import TemplateSpec
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.drivers.registry import HostCredentials, open_driver
from dockvisor.services import templates as template_service
from tests.xapi_sim import XapiSimulator


def small_disk(folder: Path) -> Path:
    disk = folder / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return disk


@dataclass(frozen=True)
class Rejection:
    """A create the hypervisor itself refuses (after the adapter made something)."""

    spec_changes: dict[str, Any]
    message: str  # a regular expression the error matches


class Harness(Protocol):
    driver: HypervisorDriver
    template: str
    real_guests: bool  # guests really boot (a Docker engine and an agent answer)
    # VMs made from a template need the template's disk for as long as they live
    # (libvirt's overlays do; XAPI's storage keeps a clone's parent data by itself).
    clones_hold_their_template: bool

    def disks(self) -> set[str]:
        """Every disk the hypervisor has (volumes, VDIs), by a stable handle."""
        ...

    def disks_of(self, name: str) -> set[str]:
        """The disks the VM called `name` has now."""
        ...

    def names(self) -> set[str]:
        """The names of every VM-like object (VMs, templates, snapshots) it has."""
        ...

    def define_foreign_vm(self, name: str) -> None:
        """A stopped 1-vCPU 256 MiB VM made without dockvisor (by another client)."""
        ...

    def rejection(self) -> Rejection: ...

    def guest_reports(self, name: str, address: str) -> None:
        """Make a simulated guest's tools report `address` (simulators only)."""
        ...

    def close(self) -> None: ...


class LibvirtHarness:
    clones_hold_their_template = True

    def __init__(self, uri: str, prefix: str, folder: Path) -> None:
        self.driver = open_driver(uri)
        self.real_guests = not uri.startswith("test:")
        if self.real_guests:
            _, built = template_service.build_builtin_template(self.driver)
            self.template = built.name
        else:
            self.template = f"{prefix}tmpl"
            spec = TemplateSpec(name=self.template, disk=str(small_disk(folder)))
            self.driver.register_template(spec)

    def _volumes(self) -> list[str]:
        return self.driver.volume_names()  # type: ignore[attr-defined, no-any-return]

    def disks(self) -> set[str]:
        return set(self._volumes())

    def disks_of(self, name: str) -> set[str]:
        return {v for v in self._volumes() if v.startswith(f"{name}-")}

    def names(self) -> set[str]:
        with self.driver.raw_connection() as conn:  # type: ignore[attr-defined]
            return {d.name() for d in conn.listAllDomains(0)}

    def define_foreign_vm(self, name: str) -> None:
        virt = "qemu" if self.real_guests else "test"
        xml = (
            f"<domain type='{virt}'><name>{name}</name><memory unit='MiB'>256</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
        )
        with self.driver.raw_connection() as conn:  # type: ignore[attr-defined]
            conn.defineXML(xml)

    def rejection(self) -> Rejection:
        # The driver trusts the service to size VMs; libvirt itself refuses zero
        # memory, after the disk was made.
        return Rejection({"memory": 0, "max_memory": 0}, "Memory size must be specified")

    def guest_reports(self, name: str, address: str) -> None:
        raise AssertionError("libvirt guests are real or absent, never simulated")

    def close(self) -> None:
        self.driver.close()


class XapiHarness:
    """A pool of the XAPI simulator (tests/xapi_sim), reached through the real SDK."""

    clones_hold_their_template = False
    real_guests = False
    PASSWORD = "conformance-secret"

    def __init__(self, prefix: str, folder: Path) -> None:
        self.sim = XapiSimulator(users={"root": self.PASSWORD}, members=1, tls=True).start()
        self.sim.task_seconds = 0.05
        self.uri = self.sim.url.replace("https://", "xapi://").rstrip("/")
        self.credentials = HostCredentials("root", self.PASSWORD, self.sim.certificate_pem)
        self.driver = open_driver(self.uri, self.credentials)
        self.template = f"{prefix}tmpl"
        spec = TemplateSpec(name=self.template, disk=str(small_disk(folder)))
        self.driver.register_template(spec)

    def _records(self, cls: str) -> dict[str, dict[str, Any]]:
        return dict(self.sim.objects(cls))

    def disks(self) -> set[str]:
        return {str(r["uuid"]) for r in self._records("VDI").values()}

    def disks_of(self, name: str) -> set[str]:
        vms = [ref for ref, r in self._records("VM").items() if r["name_label"] == name]
        vbds = self._records("VBD")
        vdis = self._records("VDI")
        return {
            str(vdis[b["VDI"]]["uuid"])
            for b in vbds.values()
            if b["VM"] in vms and b["VDI"] in vdis
        }

    def names(self) -> set[str]:
        return {str(r["name_label"]) for r in self._records("VM").values()}

    def define_foreign_vm(self, name: str) -> None:
        """Made by another client of the pool, through the SDK: a clone of a built-in
        template, provisioned, sized; no dockvisor marks."""
        import XenAPI

        session = XenAPI.Session(self.sim.url, ignore_ssl=True)
        session.xenapi.login_with_password("root", self.PASSWORD, "2.0", "other-client")
        try:
            x = session.xenapi
            base = x.VM.get_by_name_label("Other install media")[0]
            ref = x.VM.clone(base, name)
            x.VM.provision(ref)
            mib256 = str(256 * 1024 * 1024)
            x.VM.set_memory_limits(ref, mib256, mib256, mib256, mib256)
            x.VM.set_VCPUs_max(ref, "1")
            x.VM.set_VCPUs_at_startup(ref, "1")
        finally:
            session.xenapi.session.logout()

    def guest_reports(self, name: str, address: str) -> None:
        uuid = next(str(r["uuid"]) for r in self._records("VM").values() if r["name_label"] == name)
        self.sim.set_guest_networks(uuid, {"0/ip": address, "0/ipv4/0": address})

    def rejection(self) -> Rejection:
        # The pool's storage runs out while the template's disk is being cloned (what
        # the storage manager answers: error 44).
        self.sim.fail_next(
            "VM.clone", "SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""
        )
        return Rejection({}, "XAPI SR_BACKEND_FAILURE_44 .*insufficient space")

    def close(self) -> None:
        self.driver.close()
        self.sim.stop()
