"""Lifecycle timings of one Docker-ready VM on qemu:///system: dockvisor against raw libvirt.

Prints boot-to-Docker-API time, then for snapshot, revert, clone and live resize the
median time through dockvisor's services and through the equivalent raw libvirt-python
calls on the same VM, and their ratio (target: under 1.2).

"Equivalent" means the same work: a revert to a memory snapshot is, in raw calls too,
define-the-snapshot's-config + start paused + loadvm + resume (libvirt's own revert cannot
restore this VM's hot-pluggable vCPUs); a clone is overlay + block-copy mirror + freeze +
cut + define; a live resize is setMemory live and config, then waiting until the guest
has the memory; adding a vCPU is setVcpus config and live. Runs alternate between the
two paths to share any drift.

Usage: .venv/bin/python bench/lifecycle.py [--rounds N]
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import sys
import time
from collections.abc import Callable

import libvirt
import libvirt_qemu

from dockvisor.domain.sizes import GiB, KiB, MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml
from dockvisor.engines.docker import DockerEngine
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service

TARGET = 1.2


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Raw:
    """The same operations in plain libvirt-python calls."""

    def __init__(self, conn: libvirt.virConnect, name: str) -> None:
        self.conn = conn
        self.name = name

    @property
    def dom(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def snapshot(self, snap: str) -> None:
        self.dom.snapshotCreateXML(f"<domainsnapshot><name>{snap}</name></domainsnapshot>", 0)

    def revert(self, snap: str) -> None:
        dom = self.dom
        xml = dom.snapshotLookupByName(snap, 0).getXMLDesc(0)
        match = re.search(r"<domain[ >].*</domain>", xml, re.S)
        assert match
        dom.destroy()
        dom = self.conn.defineXML(match.group(0))
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        libvirt_qemu.qemuMonitorCommand(
            dom, f'loadvm "{snap}"', libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )
        dom.resume()

    def clone(self, new: str, port: int) -> None:
        dom = self.dom
        cfg = parse_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).config
        pool = self.conn.storagePoolLookupByName("dockvisor")
        vol = pool.createXML(
            f"<volume><name>{new}-raw.qcow2</name><capacity>{cfg.disk_size}</capacity>"
            "<target><format type='qcow2'/><compat>1.1</compat></target><backingStore>"
            f"<path>{cfg.base_path}</path><format type='qcow2'/></backingStore></volume>",
            0,
        )
        dest = f"<disk type='file'><source file='{vol.path()}'/><driver type='qcow2'/></disk>"
        dom.blockCopy(
            "vda",
            dest,
            None,
            libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
            | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
            | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB,
        )
        while "ready='yes'" not in dom.XMLDesc(0):
            time.sleep(0.1)
        dom.fsFreeze(None, 0)
        dom.blockJobAbort("vda", 0)
        dom.fsThaw(None, 0)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        xml = re.sub(r"<uuid>.*?</uuid>", "", xml)
        xml = xml.replace(f"<name>{self.name}</name>", f"<name>{new}</name>")
        xml = xml.replace(cfg.disk_path, vol.path())
        xml = re.sub(r"127\.0\.0\.1:\d+-", f"127.0.0.1:{port}-", xml)
        xml = re.sub(r"mac=[0-9a-f:]+", "mac=52:54:00:00:00:01", xml)
        self.conn.defineXML(xml)

    def resize_memory(self, memory: int) -> None:
        dom = self.dom
        for flag in (libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG):
            dom.setMemoryFlags(memory // KiB, flag)
        while abs(int(dom.memoryStats()["actual"]) * KiB - memory) >= MiB:
            time.sleep(0.2)

    def add_vcpus(self, vcpus: int) -> None:
        dom = self.dom
        for flag in (libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_AFFECT_LIVE):
            dom.setVcpusFlags(vcpus, flag)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    driver = LibvirtDriver("qemu:///system")
    template_service.build_builtin_template(driver)
    name = f"dvb-{secrets.token_hex(3)}"
    results: dict[str, tuple[list[float], list[float]]] = {
        op: ([], []) for op in ("snapshot", "revert", "clone", "live resize", "vcpu add")
    }
    clones: list[str] = []
    try:
        vm_service.create_vm_from_template(
            driver, name=name, template="docker-ready", vcpus=1, memory=1 * GiB,
            max_vcpus=4, max_memory=2 * GiB, start=False,
        )  # fmt: skip
        start = time.perf_counter()
        driver.start_vm(name)
        with DockerEngine(driver.docker_endpoint(name)) as engine:
            engine.wait_until_ready(150)
        boot = time.perf_counter() - start
        print(f"boot to Docker API: {boot:.1f} s (TCG: {driver.host_info().acceleration})")

        with driver.raw_connection() as conn:
            raw = Raw(conn, name)
            for i in range(args.rounds):
                dv_t, raw_t = results["snapshot"]
                dv_t.append(timed(lambda i=i: vm_service.snapshot_vm(driver, name, f"d{i}")))
                raw_t.append(timed(lambda i=i: raw.snapshot(f"r{i}")))

                dv_t, raw_t = results["revert"]
                dv_t.append(timed(lambda i=i: vm_service.revert_to_snapshot(driver, name, f"d{i}")))
                raw_t.append(timed(lambda i=i: raw.revert(f"r{i}")))

                dv_t, raw_t = results["clone"]
                dv_name, raw_name = f"{name}-d{i}", f"{name}-r{i}"
                clones += [dv_name, raw_name]
                dv_t.append(timed(lambda n=dv_name: vm_service.clone_vm(driver, name, n)))
                port = 42900 + i
                raw_t.append(timed(lambda n=raw_name, p=port: raw.clone(n, p)))

                # Memory goes up and down through both paths alike: dockvisor first on
                # even rounds, raw first on odd ones.
                dv_t, raw_t = results["live resize"]
                up, down = 1536 * MiB, 1024 * MiB
                first, second = (up, down) if i % 2 == 0 else (down, up)
                dv_t.append(timed(lambda m=first: vm_service.resize_vm(driver, name, memory=m)))
                raw_t.append(timed(lambda m=second: raw.resize_memory(m)))

            # vCPUs are only added live: one sample each (1 -> 2 and 2 -> 3).
            dv_t, raw_t = results["vcpu add"]
            dv_t.append(timed(lambda: vm_service.resize_vm(driver, name, vcpus=2)))
            raw_t.append(timed(lambda: raw.add_vcpus(3)))
    finally:
        for clone in clones:
            try:
                driver.delete_vm(clone)
            except Exception:  # noqa: BLE001 - best effort cleanup, reported below
                print(f"could not delete {clone}", file=sys.stderr)
        vm_service.delete_vm(driver, name, force=True)

    print(
        f"\n{'operation':<12} {'dockvisor':>10} {'raw libvirt':>12} {'ratio':>6}  target < {TARGET}"
    )
    ok = True
    for op, (dv_t, raw_t) in results.items():
        d, r = statistics.median(dv_t), statistics.median(raw_t)
        ratio = d / r
        ok &= ratio < TARGET
        mark = "ok" if ratio < TARGET else "MISSED"
        print(f"{op:<12} {d:>9.3f}s {r:>11.3f}s {ratio:>6.2f}  {mark}")
    print(f"\nmedians of {args.rounds} rounds; VM: 1 vCPU (max 4), 1 GiB (max 2 GiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
