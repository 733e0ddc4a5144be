"""Lifecycle timings of one Docker-ready VM on qemu:///system: dockvisor against raw libvirt.

Prints boot-to-Docker-API time, then for snapshot, revert, clone and live resize the
median time through dockvisor's services and through the equivalent raw libvirt-python
calls on the same VM, and their ratio (target: under 1.2).

"Equivalent" means the same work: a revert to a memory snapshot is, in raw calls too,
define-the-snapshot's-config + start paused + loadvm + resume (libvirt's own revert cannot
restore this VM's hot-pluggable vCPUs) + set the guest clock + see Docker answer; a clone
is port choice + overlay + block-copy mirror + freeze + cut + a new engine identity (a
server certificate and a config drive, uploaded as a volume; the identity is made by the
same code in both paths, as no libvirt call makes one, and its share is printed) + define,
the clone's metadata naming its own volumes; a live resize is
setMemory live and config to 1.5 GiB and back, each time waiting until the guest has the
memory; adding a vCPU is setVcpus config and live. Which path goes first alternates
from round to round.

The VM runs on the isolated guest network (DOCKVISOR_GUEST_NETWORK=isolated: QEMU's
user-mode network with restrict=on and the Docker port forward), where a start needs
nothing but QEMU, in both paths. On the default `outbound` network every start of QEMU
(a revert's too) also starts passt and its frame guard for the VM, which the raw calls
here would have to do as well to be the same work.

Usage: .venv/bin/python bench/lifecycle.py [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import libvirt
import libvirt_qemu

from dockvisor.domain.model import DockerEndpoint
from dockvisor.domain.sizes import GiB, KiB, MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml
from dockvisor.drivers.libvirt.storage import unique_volume_name
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.engines import EngineAccess

TARGET = 1.2
SIZES = (1536 * MiB, 1 * GiB)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def each(fn: Callable[[int], object], values: tuple[int, ...]) -> Callable[[], None]:
    """One timed step that calls `fn` with each value in turn."""

    def run() -> None:
        for value in values:
            fn(value)

    return run


class Raw:
    """The same operations in plain libvirt-python calls."""

    def __init__(self, conn: libvirt.virConnect, name: str, endpoint: DockerEndpoint) -> None:
        self.conn = conn
        self.name = name
        self.endpoint = endpoint
        self.identity_times: list[float] = []  # of each clone: certificate + config drive

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
        now = time.time()  # the guest's clock reads the snapshot's time: set it (agent)
        for _ in range(25):
            try:
                dom.setTime({"seconds": int(now), "nseconds": int(now % 1 * 1e9)}, 0)
                break
            except libvirt.libvirtError:
                time.sleep(0.2)
                now = time.time()
        with EngineAccess.default().engine(self.endpoint) as engine:
            engine.wait_until_ready(30)

    def free_port(self) -> int:
        """A Docker forward port no domain's configuration uses (dockvisor's range)."""
        used: set[int] = set()
        for other in self.conn.listAllDomains(0):
            xml = other.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            used.update(int(p) for p in re.findall(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-", xml))
        return next(p for p in range(42000, 43000) if p not in used)

    def clone(self, new: str) -> None:
        dom = self.dom
        port = self.free_port()
        cfg = parse_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).config
        assert cfg.disk_path and cfg.config_drive and cfg.engine_name
        pool = self.conn.storagePoolLookupByName("dockvisor")
        vol = pool.createXML(
            f"<volume><name>{unique_volume_name(new, 'qcow2')}</name>"
            f"<capacity>{cfg.disk_size}</capacity>"
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
        # The clone's own engine identity, as dockvisor gives it: a server certificate
        # under a new name and a config drive carrying it, stored as a volume.
        started = time.perf_counter()
        guest = EngineAccess.default().guest_config(new)
        self.identity_times.append(time.perf_counter() - started)
        drive = self.upload(pool, unique_volume_name(new, "cidata.iso"), guest.drive)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        xml = re.sub(r"<uuid>.*?</uuid>", "", xml)
        xml = xml.replace(f"<name>{self.name}</name>", f"<name>{new}</name>")
        xml = xml.replace(f"dockvisor.hostname={self.name}", f"dockvisor.hostname={new}")
        for old, made in ((cfg.disk_path, vol), (cfg.config_drive, drive)):
            xml = xml.replace(old, made.path())  # the device and the metadata
            xml = xml.replace(f">{os.path.basename(old)}<", f">{made.name()}<")  # volumes
        xml = xml.replace(cfg.engine_name, guest.engine_name)
        xml = re.sub(r"127\.0\.0\.1:\d+-", f"127.0.0.1:{port}-", xml)
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        xml = re.sub(r"mac=[0-9a-f:]+", f"mac={mac}", xml)
        xml = xml.replace(f">{cfg.mac}<", f">{mac}<")
        self.conn.defineXML(xml)

    def upload(self, pool: libvirt.virStoragePool, name: str, data: bytes) -> libvirt.virStorageVol:
        vol = pool.createXML(
            f"<volume><name>{name}</name><capacity unit='bytes'>{len(data)}</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        stream = self.conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        source = io.BytesIO(data)
        while chunk := source.read(1 << 20):
            stream.send(chunk)
        stream.finish()
        return vol

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
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    os.environ["DOCKVISOR_GUEST_NETWORK"] = "isolated"  # see above: a start is QEMU only
    driver = LibvirtDriver("qemu:///system")
    template_service.build_builtin_template(driver)
    name = f"dvb-{secrets.token_hex(3)}"
    results: dict[str, tuple[list[float], list[float]]] = {
        op: ([], []) for op in ("snapshot", "revert", "clone", "live resize", "vcpu add")
    }
    clones: list[str] = []
    identity_times: list[float] = []
    try:
        vm_service.create_vm_from_template(
            driver, name=name, template="docker-ready", vcpus=1, memory=1 * GiB,
            max_vcpus=4, max_memory=2 * GiB, start=False,
        )  # fmt: skip
        start = time.perf_counter()
        driver.start_vm(name)
        with EngineAccess.default().engine(driver.docker_endpoint(name)) as engine:
            engine.wait_until_ready(150)
        boot = time.perf_counter() - start
        print(f"boot to Docker API: {boot:.1f} s (TCG: {driver.host_info().acceleration})")

        with driver.raw_connection() as conn:
            raw = Raw(conn, name, driver.docker_endpoint(name))
            identity_times = raw.identity_times
            for i in range(args.rounds):
                dv_snap, raw_snap = f"d{i}", f"r{i}"
                dv_clone, raw_clone = f"{name}-d{i}", f"{name}-r{i}"
                clones.extend([dv_clone, raw_clone])
                steps: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
                    ("snapshot",
                     partial(vm_service.snapshot_vm, driver, name, dv_snap),
                     partial(raw.snapshot, raw_snap)),
                    ("revert",
                     partial(vm_service.revert_to_snapshot, driver, name, dv_snap),
                     partial(raw.revert, raw_snap)),
                    ("clone",
                     partial(vm_service.clone_vm, driver, name, dv_clone),
                     partial(raw.clone, raw_clone)),
                    # Memory to 1.5 GiB and back to 1 GiB: the balloon deflates, then inflates.
                    ("live resize",
                     each(lambda m: vm_service.resize_vm(driver, name, memory=m), SIZES),
                     each(raw.resize_memory, SIZES)),
                ]  # fmt: skip
                for op, through_dockvisor, through_raw in steps:
                    # Whoever goes first may pay for what the last step left: alternate.
                    dv_t, raw_t = results[op]
                    if i % 2 == 0:
                        dv_t.append(timed(through_dockvisor))
                        raw_t.append(timed(through_raw))
                    else:
                        raw_t.append(timed(through_raw))
                        dv_t.append(timed(through_dockvisor))

            # vCPUs are only added live, so there are few samples: 1 -> 2 and 2 -> 3.
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
        if op == "vcpu add":
            mark = f"(+{(d - r) * 1000:.0f} ms)"
        else:
            ok &= ratio < TARGET
            mark = "ok" if ratio < TARGET else "MISSED"
        print(f"{op:<12} {d:>9.3f}s {r:>11.3f}s {ratio:>6.2f}  {mark}")
    print(f"\nmedians of {args.rounds} rounds; VM: 1 vCPU (max 4), 1 GiB (max 2 GiB), on the")
    print("isolated guest network (a start is QEMU only, in both paths)")
    if identity_times:
        print("clone: both paths give the clone a new engine identity (server certificate +")
        print(
            "config drive, uploaded as a volume); making it takes "
            f"{statistics.median(identity_times) * 1000:.0f} ms of the raw path's clone."
        )
    print("vcpu add: one sample each; its raw call takes milliseconds, so the ratio shows")
    print("dockvisor's reads (the resulting VM record), not a slower operation: no target.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
