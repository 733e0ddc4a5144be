"""The XAPI adapter: XenServer and XCP-ng pools, held to the same contract as libvirt.

How the contract maps onto XAPI (ocaml/idl/datamodel_vm.ml and ocaml/xapi/xapi_vm*.ml
for each call's rules; doc/content/xen-api/ for the wire):

- A dockvisor template is a XAPI template (`is_a_template`) that dockvisor registered:
  a clone of the pool's "Other install media" template with the uploaded disk as a VDI
  (`VDI.create`, then `PUT /import_raw_vdi`) and a VIF on the pool's first network,
  marked `dockvisor-is-template` in its other_config.
- A VM is `VM.clone` (linked: the storage's copy-on-write) or `VM.copy` (full) of the
  template, then `VM.provision`; while it is halted, `VCPUs_max` and
  `memory_static_max` are set to the room it may grow to, `VCPUs_at_startup` and the
  dynamic memory range to its exact size.
- Live vCPUs: `VM.set_VCPUs_number_live` (up to VCPUs_max); live memory:
  `VM.set_memory_dynamic_range` (up to memory_static_max). Beyond those, or where the
  pool refuses (licence, no PV drivers, no DMC), the change is kept in the VM's
  other_config (`dockvisor-next-*`) and applied by dockvisor at the next start or reboot
  (static limits change only while halted), and reported as pending.
- Disks (disks.py): a VM's disk size is its VDIs' virtual_size; a new VM's root VDI is
  grown with `VDI.resize` before anything boots; `grow_disk` is `VDI.resize` on a halted
  VM's disk and `VDI.resize_online` on a running one's, where the SR's storage manager
  declares VDI_RESIZE / VDI_RESIZE_ONLINE (DISK_GROWTH / LIVE_DISK_GROWTH are the
  default SR's); the room a disk needs is checked against its SR's free space first.
- Snapshots: `VM.checkpoint` (with memory) for a running VM where the pool allows it,
  else `VM.snapshot` (disks). `VM.revert` hard-stops the VM and gives it the snapshot's
  disks (clones of the snapshot's VDIs: a disk grown since is back at the snapshot's
  size, which Snapshot.disk_size tells); dockvisor then resumes a checkpoint, or starts
  a VM whose snapshot was taken running. Deleting a snapshot or a VM destroys their
  VDIs too (`VM.destroy` keeps them).
- A clone of a running VM is made from a snapshot (its disks cut at one instant), which
  is destroyed afterwards.
- The Docker engine's address is the guest's IP as its Xen tools report it
  (`VM_guest_metrics.networks`); the engine identity reaches the guest on a config-drive
  VDI (the same ISO image as libvirt's, read-only, device 3), marked
  `dockvisor-config-drive` in the VDI's other_config.
- dockvisor's own facts about a VM or template live in its other_config, keys
  `dockvisor-*` (a template's sizes and catalog origin as JSON).
- int64 values are sent as strings, as XAPI's wire protocol says.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from dockvisor.domain.metrics import UsageCounters
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
    TemplateOrigin,
    TemplateSizes,
    TemplateSpec,
    VMSpec,
)
from dockvisor.domain.sizes import MiB, format_size
from dockvisor.domain.sizing import check_disk_growth, plan_disk, vcpu_ceiling
from dockvisor.drivers.base import Progress, no_progress, replaces
from dockvisor.drivers.disk_images import (
    check_self_contained,
    local_disk_format,
    local_disk_size,
)
from dockvisor.drivers.registry import HostCredentials
from dockvisor.drivers.xapi.connection import PoolConnection
from dockvisor.drivers.xapi.disks import (
    CONFIG_DRIVE_DEVICE,
    K_CONFIG_DRIVE,
    PoolStorage,
    disk_size,
    disks_of,
)
from dockvisor.drivers.xapi.errors import describe
from dockvisor.drivers.xapi.events import NULL, PoolEvents, Record
from dockvisor.drivers.xapi.tasks import cancel_task, decode_result, run_task
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
    WarmStartUnavailable,
)

__all__ = ["XapiDriver"]

log = logging.getLogger(__name__)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_POWER = {
    "Running": PowerState.RUNNING,
    "Halted": PowerState.STOPPED,
    "Paused": PowerState.PAUSED,
    "Suspended": PowerState.PAUSED,
}
_BASE_TEMPLATE = "Other install media"
_MAX_VCPUS_PER_VM = 64  # XenServer 8's supported maximum for one VM
TOOLS_WAIT = 60.0  # seconds a call that needs the guest's tools waits for them

# other_config keys (dockvisor's own facts about a VM or template)
K_IS_TEMPLATE = "dockvisor-is-template"
K_MANAGED = "dockvisor-managed"
K_TEMPLATE = "dockvisor-template"
K_DISK_MODE = "dockvisor-disk-mode"
K_CREATED = "dockvisor-created"
K_DOCKER_PORT = "dockvisor-docker-port"
K_ENGINE = "dockvisor-engine-name"
K_BUILTIN = "dockvisor-builtin"
K_IMAGE = "dockvisor-image-key"
K_NEXT_VCPUS = "dockvisor-next-vcpus"
K_NEXT_MEMORY = "dockvisor-next-memory"
K_TAKEN_RUNNING = "dockvisor-taken-running"
K_SIZES = "dockvisor-sizes"  # a template's TemplateSizes, as JSON
K_ORIGIN = "dockvisor-origin"  # a template's TemplateOrigin, as JSON


def _int(value: object) -> int:
    return int(str(value))


def _when(value: object) -> datetime | None:
    """An XML-RPC DateTime (or its string) as an aware datetime."""
    text = str(value or "")
    for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text)
    return None


class XapiDriver:
    """A HypervisorDriver for one XAPI pool."""

    def __init__(self, uri: str, credentials: HostCredentials) -> None:
        self.uri = uri
        self._conn = PoolConnection(uri, credentials)
        self._events = PoolEvents(self._conn)
        self._pool_ref, pool = self._one_pool()
        self._pool_uuid = str(pool.get("uuid", self._pool_ref))
        self._default_sr = str(pool.get("default_SR", NULL))
        self._storage = PoolStorage(uri, self._call)
        self.capabilities = self._detect_capabilities(pool)
        self._host: tuple[float, HostInfo] | None = None
        self._events.on_sync.append(self.settle_lost_tasks)

    def _call(self, doing: str, method: str, *args: Any) -> Any:
        return self._conn.call(doing, method, *args)

    def settle_lost_tasks(self) -> None:
        """Settle the tasks the pool was running when it stopped answering (their
        dockvisor tasks failed): cancel those still running, undo what finished ones
        made (a clone, a copy, a snapshot), forget them. Called when the pool answers
        again; what cannot be settled yet waits for the next time."""
        doing = "settling a task interrupted when the pool stopped answering"
        while self._conn.lost_tasks:
            task = self._conn.lost_tasks[0]
            try:
                record = self._call(doing, "task.get_record", task)
            except NotFound:  # the pool restarted: its tasks, and their work, are gone
                self._conn.lost_tasks.pop(0)
                continue
            except DockvisorError:
                return
            if record["status"] == "pending":
                cancel_task(self._conn, task)
                try:
                    record = self._call(doing, "task.get_record", task)
                except DockvisorError:
                    return
                if record["status"] == "pending":
                    return  # not cancellable, still running: looked at again next time
            made = (
                decode_result(str(record.get("result", "")))
                if record["status"] == "success"
                else None
            )
            if isinstance(made, str) and made.startswith("OpaqueRef:") and made != NULL:
                with contextlib.suppress(NotFound):
                    self._call(doing, "VM.get_uuid", made)  # only a VM it made
                    log.warning("xapi.undo-lost-task", extra={"pool": self.uri, "vm": made})
                    self._destroy_all(made, [])
            with contextlib.suppress(DockvisorError):
                self._call(doing, "task.destroy", task)
            self._conn.lost_tasks.pop(0)

    def _one_pool(self) -> tuple[str, Record]:
        pools = self._call("reading the pool", "pool.get_all_records")
        if not pools:
            raise HypervisorError(f"pool {self.uri}: XAPI lists no pool")
        ref, record = next(iter(pools.items()))
        return str(ref), record

    def _detect_capabilities(self, pool: Record) -> Capability:
        """What this pool lets dockvisor do. `pool.restrictions` (filled from the
        licence: restrict_checkpoint, restrict_dmc...) turns features off."""
        c = Capability
        # Live vCPUs both ways: VM.set_VCPUs_number_live takes any 0 < n <= VCPUs_max
        # (xapi_vm.ml); the guest's tools unplug the others.
        caps = c.LIVE_VCPUS | c.LIVE_VCPU_REMOVAL | c.LIVE_MEMORY | c.SNAPSHOTS
        caps |= c.LINKED_CLONES | c.CLONE_RUNNING
        caps |= c.EVENTS | c.GUEST_ADDRESSES
        restrictions = pool.get("restrictions") or {}
        if str(restrictions.get("restrict_set_vcpus_number_live", "false")).lower() == "true":
            caps &= ~(c.LIVE_VCPUS | c.LIVE_VCPU_REMOVAL)
        if str(restrictions.get("restrict_checkpoint", "false")).lower() != "true":
            caps |= c.MEMORY_SNAPSHOTS
        if str(restrictions.get("restrict_dmc", "false")).lower() == "true":
            caps &= ~c.LIVE_MEMORY
        return caps | self._storage.growth(self._default_sr)

    def _require(self, capability: Capability, what: str) -> None:
        if capability not in self.capabilities:
            raise Unsupported(f"pool {self.uri} cannot do {what}")

    # -- the pool --------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        """The pool's size: every host's CPUs and memory added up (read at most every
        30 s); the free space of its default SR, read now."""
        return replace(self._pool_facts(), storage_free=self._storage.free(self._default_sr))

    def _pool_facts(self) -> HostInfo:
        if self._host is not None and time.monotonic() - self._host[0] < 30:
            return self._host[1]
        hosts = self._call("reading the pool's hosts", "host.get_all_records")
        master = self._call("reading the pool", "pool.get_master", self._pool_ref)
        cpus, memory, largest = 0, 0, 1
        for record in hosts.values():
            count = _int((record.get("cpu_info") or {}).get("cpu_count", 0))
            cpus += count
            largest = max(largest, count)
            metrics = self._call("reading a host", "host_metrics.get_record", record["metrics"])
            memory += _int(metrics.get("memory_total", 0))
        head = hosts.get(master) or next(iter(hosts.values()))
        software = head.get("software_version") or {}
        info = HostInfo(
            uri=self.uri,
            hypervisor=str(software.get("product_brand") or "XenServer"),
            version=str(software.get("product_version") or software.get("xapi", "")),
            hostname=str(head.get("hostname") or head.get("name_label", "")),
            cpus=cpus,
            memory=memory,
            max_vcpus_per_vm=vcpu_ceiling(largest, _MAX_VCPUS_PER_VM),
            acceleration=None,
            capabilities=self.capabilities,
            identity=f"xapi-pool:{self._pool_uuid}",
        )
        self._host = (time.monotonic(), info)
        return info

    # -- warm spares: not on XAPI (no capability) ------------------------------------

    def _no_spares(self) -> Unsupported:
        return Unsupported(
            f"warm spares are not supported on XAPI pools ({self.uri}): VMs there boot cold"
        )

    def create_spare(self, spec: VMSpec, progress: Progress = no_progress) -> Spare:
        raise self._no_spares()

    def list_spares(self) -> list[Spare]:
        return []

    def delete_spare(self, name: str) -> None:
        raise NotFound(f"no warm spare named {name!r} on {self.uri}")

    def keep_spares(self, template: str, count: int) -> None:
        self.get_template(template)
        if count:
            raise self._no_spares()

    def adopt_spare(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        raise WarmStartUnavailable(f"host {self.uri} keeps no warm spares (XAPI)")

    def close(self) -> None:
        self._events.stop()
        self._conn.close()

    # -- finding VMs -----------------------------------------------------------------

    @staticmethod
    def _is_vm(record: Record) -> bool:
        return not (
            record.get("is_a_template")
            or record.get("is_a_snapshot")
            or record.get("is_control_domain")
        )

    def _vm_ref(self, vm: str) -> str:
        """The reference of the VM with id (uuid) or name `vm`."""
        if _UUID.match(vm):
            try:
                ref = str(self._call(f"looking up VM {vm}", "VM.get_by_uuid", vm))
            except NotFound:
                raise NotFound(f"no VM with id {vm} on pool {self.uri}") from None
            if not self._is_vm(self._call(f"reading VM {vm}", "VM.get_record", ref)):
                raise NotFound(f"{vm} is a template or snapshot on pool {self.uri}, not a VM")
            return ref
        refs = self._call(f"looking up VM {vm}", "VM.get_by_name_label", vm)
        found = []
        for ref in refs:
            record = self._call(f"reading VM {vm}", "VM.get_record", ref)
            if self._is_vm(record):
                found.append((str(ref), str(record["uuid"])))
        if not found:
            raise NotFound(f"no VM named {vm!r} on pool {self.uri}")
        if len(found) > 1:
            ids = ", ".join(uuid for _, uuid in found)
            raise InvalidInput(
                f"{len(found)} VMs are named {vm!r} on pool {self.uri} (ids {ids}): "
                "name it by its id"
            )
        return found[0][0]

    def _record(self, ref: str, doing: str = "reading a VM") -> Record:
        record: Record = self._call(doing, "VM.get_record", ref)
        self._events.remember("vm", ref, record)
        return record

    def _to_vm(self, record: Record, read: Callable[[str, str], Record | None]) -> VM:
        oc = record.get("other_config") or {}
        power = _POWER.get(str(record["power_state"]), PowerState.UNKNOWN)
        vcpus = _int(record["VCPUs_at_startup"])
        if power is PowerState.RUNNING and (metrics := read("VM_metrics", record["metrics"])):
            vcpus = _int(metrics.get("VCPUs_number", vcpus)) or vcpus
        max_vcpus = _int(record["VCPUs_max"])
        memory = _int(record["memory_dynamic_max"])
        max_memory = _int(record["memory_static_max"])
        next_vcpus = _int(oc[K_NEXT_VCPUS]) if K_NEXT_VCPUS in oc else None
        next_memory = _int(oc[K_NEXT_MEMORY]) if K_NEXT_MEMORY in oc else None
        mode = oc.get(K_DISK_MODE)
        return VM(
            name=str(record["name_label"]),
            uuid=str(record["uuid"]),
            power_state=power,
            vcpus=vcpus,
            max_vcpus=max_vcpus,
            memory=memory,
            max_memory=max_memory,
            template=oc.get(K_TEMPLATE),
            disk_mode=DiskMode(mode) if mode in ("linked", "full") else None,
            disk_size=disk_size(record, read),
            pending_vcpus=next_vcpus,
            pending_max_vcpus=next_vcpus if next_vcpus and next_vcpus > max_vcpus else None,
            pending_memory=next_memory,
            pending_max_memory=next_memory if next_memory and next_memory > max_memory else None,
            docker_ready=K_DOCKER_PORT in oc,
            snapshot_count=len(record.get("snapshots") or []),
            created=_when(oc.get(K_CREATED)),
            managed=oc.get(K_MANAGED) == "true",
        )

    def _live(self, cls: str, ref: str) -> Record | None:
        """A record of `cls` read from the pool now (None for a null or gone ref)."""
        if not ref or ref == NULL:
            return None
        try:
            return dict(self._call(f"reading a {cls}", f"{cls}.get_record", ref))
        except NotFound:
            return None

    def list_vms(self) -> list[VM]:
        """From the event-fed cache when it is in step (one dict read), else live."""
        cached = self._events.vms()
        if cached is not None:

            def read(cls: str, ref: str) -> Record | None:
                return self._events.record(cls.lower(), ref) or self._live(cls, ref)

            records = cached
        else:
            records = self._call("listing VMs", "VM.get_all_records")
            read = self._live
        return sorted(
            (self._to_vm(r, read) for r in records.values() if self._is_vm(r)),
            key=lambda v: v.name,
        )

    def get_vm(self, name: str) -> VM:
        ref = self._vm_ref(name)
        return self._to_vm(self._record(ref), self._live)

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(vm_uuid, what)` when a VM changes on the pool, whoever
        changed it (XAPI's event.from)."""
        self._events.listen(callback)

    # -- templates -------------------------------------------------------------------

    def _templates(self) -> dict[str, Record]:
        records = self._call("listing templates", "VM.get_all_records")
        return {
            str(ref): r
            for ref, r in records.items()
            if r.get("is_a_template")
            and not r.get("is_a_snapshot")
            and (r.get("other_config") or {}).get(K_IS_TEMPLATE) == "true"
        }

    def _to_template(self, record: Record) -> Template:
        oc = record.get("other_config") or {}
        port = oc.get(K_DOCKER_PORT)
        return Template(
            name=str(record["name_label"]),
            description=str(record.get("name_description", "")),
            disk_size=disk_size(record, self._live),
            docker_ready=port is not None,
            builtin=oc.get(K_BUILTIN) == "true",
            boots_kernel=False,
            created=_when(oc.get(K_CREATED)),
            image_key=oc.get(K_IMAGE),
            sizes=_sizes(oc.get(K_SIZES)),
            origin=_origin(oc.get(K_ORIGIN)),
            docker_port=_int(port) if port is not None and str(port).isdigit() else None,
        )

    def list_templates(self) -> list[Template]:
        return sorted(
            (self._to_template(r) for r in self._templates().values()), key=lambda t: t.name
        )

    def _template_ref(self, name: str) -> str:
        for ref, record in self._templates().items():
            if record["name_label"] == name:
                return ref
        raise NotFound(f"no template named {name!r} on pool {self.uri}")

    def get_template(self, name: str) -> Template:
        return self._to_template(self._record(self._template_ref(name), "reading a template"))

    def _check_new_name(self, name: str, spec: TemplateSpec | None = None) -> str | None:
        """dockvisor keeps names unique on a pool among VMs and its templates (XAPI
        itself does not). A template `spec` replaces (base.replaces) takes the name:
        its ref is returned, to be destroyed once the new one is made."""
        replaced = None
        for ref in self._call(f"looking up {name}", "VM.get_by_name_label", name):
            record = self._call(f"reading {name}", "VM.get_record", ref)
            oc = record.get("other_config") or {}
            if self._is_vm(record) or oc.get(K_IS_TEMPLATE) == "true":
                builtin, origin = oc.get(K_BUILTIN) == "true", _origin(oc.get(K_ORIGIN))
                if spec is not None and not self._is_vm(record) and replaces(spec, builtin, origin):
                    replaced = str(ref)
                    continue
                kind = "VM" if self._is_vm(record) else "template"
                raise AlreadyExists(f"a {kind} named {name!r} already exists on pool {self.uri}")
        return replaced

    def register_template(self, spec: TemplateSpec, progress: Progress = no_progress) -> Template:
        if spec.kernel or spec.initrd:
            raise Unsupported(
                f"pool {self.uri}: a XAPI template boots from its own disk; a kernel and "
                "initrd given apart are not supported"
            )
        if not os.path.isfile(spec.disk):
            raise InvalidInput(f"template disk {spec.disk} is not a file on this machine")
        check_self_contained(spec.disk, "the template's disk")
        replaced = self._check_new_name(spec.name, spec)
        base = self._base_template()
        made_vm: str | None = None
        made_vdis: list[str] = []
        doing = f"registering template {spec.name}"
        try:
            progress("cloning the pool's base template", 0.02)
            made_vm = str(self._call(doing, "VM.clone", base, spec.name))
            self._call(doing, "VM.set_name_description", made_vm, spec.description)
            with contextlib.suppress(DockvisorError):
                self._call(doing, "VM.remove_from_other_config", made_vm, "disks")
            marks = {
                K_IS_TEMPLATE: "true",
                K_CREATED: datetime.now(UTC).strftime("%Y%m%dT%H:%M:%SZ"),
                K_BUILTIN: "true" if spec.builtin else "false",
            }
            if spec.docker_port is not None:
                marks[K_DOCKER_PORT] = str(spec.docker_port)
            if spec.image_key:
                marks[K_IMAGE] = spec.image_key
            marks[K_SIZES] = json.dumps(asdict(spec.sizes), sort_keys=True)
            if spec.origin is not None:
                marks[K_ORIGIN] = json.dumps(asdict(spec.origin), sort_keys=True)
            for key, value in marks.items():
                self._call(doing, "VM.add_to_other_config", made_vm, key, value)
            size = local_disk_size(spec.disk)
            vdi = self._new_vdi(doing, f"{spec.name} disk", size, {})
            made_vdis.append(vdi)
            self._upload(spec.disk, vdi, progress, share=(0.05, 0.95))
            self._attach(doing, made_vm, vdi, device="0", bootable=True, read_only=False)
            self._add_network(doing, made_vm)
        except BaseException:
            self._destroy_all(made_vm, made_vdis)
            raise
        if replaced is not None:  # VMs made from it keep their disks (remove_template)
            self._destroy_vm_and_disks(replaced, f"replacing template {spec.name}")
        progress("template registered", 1.0)
        return self.get_template(spec.name)

    def _base_template(self) -> str:
        refs = self._call("finding the base template", "VM.get_by_name_label", _BASE_TEMPLATE)
        for ref in refs:
            if self._call("reading a template", "VM.get_is_a_template", ref):
                return str(ref)
        raise Unsupported(f"pool {self.uri} has no {_BASE_TEMPLATE!r} template to start from")

    def remove_template(self, name: str) -> None:
        """The template and its disks. VMs made from it keep theirs: XAPI's storage
        keeps a clone's parent data as long as a clone needs it."""
        ref = self._template_ref(name)
        self._destroy_vm_and_disks(ref, f"removing template {name}")

    # -- disks -----------------------------------------------------------------------

    def _new_vdi(self, doing: str, label: str, size: int, other: dict[str, str]) -> str:
        if self._default_sr == NULL:
            raise Unsupported(f"pool {self.uri} has no default storage repository")
        record = {
            "name_label": label,
            "name_description": "made by dockvisor",
            "SR": self._default_sr,
            "virtual_size": str(size),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": other,
            "xenstore_data": {},
            "sm_config": {},
            "tags": [],
        }
        return str(self._call(doing, "VDI.create", record))

    def _attach(
        self, doing: str, vm: str, vdi: str, *, device: str, bootable: bool, read_only: bool
    ) -> str:
        record = {
            "VM": vm,
            "VDI": vdi,
            "userdevice": device,
            "bootable": bootable,
            "mode": "RO" if read_only else "RW",
            "type": "Disk",
            "unpluggable": False,
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
        return str(self._call(doing, "VBD.create", record))

    def _add_network(self, doing: str, vm: str) -> None:
        networks = self._call(doing, "network.get_all_records")
        usable = [
            ref
            for ref, n in networks.items()
            if not (n.get("other_config") or {}).get("is_host_internal_management_network")
        ]
        if not usable:
            return
        record = {
            "device": "0",
            "network": usable[0],
            "VM": vm,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
        self._call(doing, "VIF.create", record)

    def _upload(
        self, path: str, vdi: str, progress: Progress, *, share: tuple[float, float]
    ) -> None:
        """Send a local disk image into a VDI with XAPI's HTTP handler
        (PUT /import_raw_vdi, format raw or vhd). A qcow2 image is converted to a
        dynamic VHD first (sparse: only data is sent)."""
        with contextlib.ExitStack() as stack:
            fmt = "raw"
            if local_disk_format(path) == "qcow2":
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dockvisor-"))
                converted = os.path.join(folder, "disk.vhd")
                subprocess.run(
                    ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
                     path, converted],
                    check=True, capture_output=True,
                )  # fmt: skip
                path, fmt = converted, "vhd"
            size = os.path.getsize(path)
            self._put(path, size, vdi, fmt, progress, share)

    def _put(
        self,
        path: str,
        size: int,
        vdi: str,
        fmt: str,
        progress: Progress,
        share: tuple[float, float],
    ) -> None:
        parts = urlsplit(self._conn.master_url)
        query = urlencode({"session_id": self._conn.session_ref, "vdi": vdi, "format": fmt})
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, context=self._conn.tls, timeout=60
        )
        low, high = share
        doing = "uploading a disk"
        try:
            connection.putrequest("PUT", f"/import_raw_vdi?{query}")
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    connection.send(chunk)
                    sent += len(chunk)
                    progress(doing, low + (high - low) * sent / max(size, 1))
            answer = connection.getresponse()
            body = answer.read(2000).decode(errors="replace").strip()
            if answer.status != 200:
                raise HypervisorError(
                    f"pool {self.uri}: the disk upload was refused: HTTP {answer.status} {body}"
                )
        except OSError as exc:
            raise HypervisorUnreachable(
                f"pool {self.uri}: the disk upload failed ({exc})"
            ) from None
        finally:
            connection.close()

    def _disks_of(self, vm: str) -> list[str]:
        """The VDIs of a VM's disk VBDs (and its suspend image), not shared with others."""
        record = self._call("reading a VM", "VM.get_record", vm)
        vdis = []
        for vbd_ref in record.get("VBDs") or []:
            vbd = self._live("VBD", vbd_ref)
            if vbd is None or vbd.get("type") != "Disk" or vbd.get("VDI", NULL) == NULL:
                continue
            vdis.append(str(vbd["VDI"]))
        suspend = str(record.get("suspend_VDI") or NULL)
        if suspend != NULL:
            vdis.append(suspend)
        return vdis

    def _destroy_vm_and_disks(self, vm: str, doing: str) -> None:
        vdis = self._disks_of(vm)
        self._call(doing, "VM.destroy", vm)
        self._events.forget("vm", vm)
        for vdi in vdis:
            with contextlib.suppress(NotFound):
                self._call(doing, "VDI.destroy", vdi)

    def _destroy_all(self, vm: str | None, vdis: list[str]) -> None:
        """Undo a half-made VM or template: best effort, everything it got."""
        with contextlib.suppress(DockvisorError):
            if vm is not None:
                vdis = vdis + self._disks_of(vm)
                record = self._call("undoing", "VM.get_record", vm)
                if record["power_state"] != "Halted":
                    self._call("undoing", "VM.hard_shutdown", vm)
                self._call("undoing", "VM.destroy", vm)
                self._events.forget("vm", vm)
        for vdi in dict.fromkeys(vdis):
            with contextlib.suppress(DockvisorError):
                self._call("undoing", "VDI.destroy", vdi)

    def _give_guest_config(self, doing: str, vm: str, guest: GuestConfig) -> None:
        with tempfile.NamedTemporaryFile(prefix="dockvisor-drive-") as drive:
            drive.write(guest.drive)
            drive.flush()
            size = len(guest.drive)
            vdi = self._new_vdi(doing, "dockvisor config drive", size, {K_CONFIG_DRIVE: "true"})
            try:
                self._put(drive.name, size, vdi, "raw", no_progress, (0.0, 1.0))
                self._attach(doing, vm, vdi, device=CONFIG_DRIVE_DEVICE, bootable=False,
                             read_only=True)  # fmt: skip
            except BaseException:
                with contextlib.suppress(DockvisorError):
                    self._call("undoing", "VDI.destroy", vdi)
                raise
        self._call(doing, "VM.add_to_other_config", vm, K_ENGINE, guest.engine_name)

    def _drop_config_drive(self, doing: str, vm: str) -> None:
        """Remove a VM's config drive (a clone must not share its source's)."""
        record = self._call(doing, "VM.get_record", vm)
        for vbd_ref in record.get("VBDs") or []:
            vbd = self._live("VBD", vbd_ref)
            if vbd is None or vbd.get("userdevice") != CONFIG_DRIVE_DEVICE:
                continue
            vdi = str(vbd.get("VDI", NULL))
            self._call(doing, "VBD.destroy", vbd_ref)
            if vdi != NULL:
                with contextlib.suppress(NotFound):
                    self._call(doing, "VDI.destroy", vdi)
        with contextlib.suppress(DockvisorError):
            self._call(doing, "VM.remove_from_other_config", vm, K_ENGINE)

    # -- lifecycle -------------------------------------------------------------------

    def create_vm(self, spec: VMSpec, progress: Progress = no_progress) -> VM:
        self._check_new_name(spec.name)
        template = self._template_ref(spec.template)
        grow_to = self._plan_root_disk(spec, self._call("reading a template", "VM.get_record",
                                                        template))  # fmt: skip
        doing = f"creating VM {spec.name}"
        made: str | None = None
        try:
            if spec.disk_mode is DiskMode.LINKED:
                self._require(Capability.LINKED_CLONES, "linked clones")
                progress("cloning the template (copy-on-write)", 0.02)
                made = run_task(self._conn, doing, "VM.clone", template, spec.name,
                                progress=progress, share=(0.02, 0.5))  # fmt: skip
            else:
                progress("copying the template", 0.02)
                made = run_task(self._conn, doing, "VM.copy", template, spec.name, NULL,
                                progress=progress, share=(0.02, 0.5))  # fmt: skip
            assert made is not None
            for key in (K_IS_TEMPLATE, K_SIZES, K_ORIGIN):  # the template's own facts
                with contextlib.suppress(DockvisorError):
                    self._call(doing, "VM.remove_from_other_config", made, key)
            for key, value in {
                K_MANAGED: "true",
                K_TEMPLATE: spec.template,
                K_DISK_MODE: spec.disk_mode.value,
                K_CREATED: datetime.now(UTC).strftime("%Y%m%dT%H:%M:%SZ"),
            }.items():
                self._call(doing, "VM.remove_from_other_config", made, key)
                self._call(doing, "VM.add_to_other_config", made, key, value)
            progress("provisioning", 0.55)
            run_task(self._conn, doing, "VM.provision", made, progress=progress,
                     share=(0.55, 0.8))  # fmt: skip
            if grow_to is not None:
                progress("growing the disk", 0.8)
                root, _ = disks_of(self._call(doing, "VM.get_record", made), self._live)[0]
                run_task(self._conn, doing, "VDI.resize", root, str(grow_to))
            progress("sizing", 0.85)
            self._size_halted(doing, made, spec.vcpus, spec.max_vcpus, spec.memory,
                              spec.max_memory)  # fmt: skip
            if spec.guest is not None:
                progress("attaching the config drive", 0.9)
                self._give_guest_config(doing, made, spec.guest)
            vm = self._to_vm(self._record(made), self._live)
        except BaseException:
            self._destroy_all(made, [])
            raise
        progress("created", 1.0)
        return vm

    def _plan_root_disk(self, spec: VMSpec, template: Record) -> int | None:
        """The size the new VM's root disk is grown to (None: it keeps the template's),
        with the room and the storage's leave checked before anything is made."""
        disks = disks_of(template, self._live)
        if not disks:
            if spec.disk_size is not None:
                raise Unsupported(f"template {spec.template!r} has no disk to size")
            return None
        _, root = disks[0]
        current = _int(root.get("virtual_size", 0))
        oc = template.get("other_config") or {}
        size = plan_disk(spec.template, current, _sizes(oc.get(K_SIZES)).default_disk,
                         spec.disk_size)  # fmt: skip
        sr = str(root.get("SR", NULL))
        self._storage.check_room(sr, size, f"a {format_size(size)} disk for VM {spec.name!r}")
        if size <= current:
            return None
        if "VDI_RESIZE" not in self._storage.features(sr):
            if spec.disk_size is None:  # the template's default size: its disk's will do
                return None
            raise Unsupported(
                f"pool {self.uri}: the storage of template {spec.template!r} cannot grow "
                f"disks (its storage manager lacks VDI_RESIZE): its VMs have its "
                f"{format_size(current)} disk"
            )
        return size

    def _size_halted(
        self, doing: str, vm: str, vcpus: int, max_vcpus: int, memory: int, max_memory: int
    ) -> None:
        """Give a halted VM its size and its room to grow (static limits: halted only)."""
        record = self._call(doing, "VM.get_record", vm)
        max_vcpus = max(max_vcpus, vcpus)
        if max_vcpus >= _int(record["VCPUs_at_startup"]):
            self._call(doing, "VM.set_VCPUs_max", vm, str(max_vcpus))
            self._call(doing, "VM.set_VCPUs_at_startup", vm, str(vcpus))
        else:
            self._call(doing, "VM.set_VCPUs_at_startup", vm, str(vcpus))
            self._call(doing, "VM.set_VCPUs_max", vm, str(max_vcpus))
        max_memory = max(max_memory, memory)
        static_min = min(_int(record["memory_static_min"]), memory)
        self._call(doing, "VM.set_memory_limits", vm, str(static_min), str(max_memory),
                   str(memory), str(memory))  # fmt: skip

    def _with_tools(self, call: Callable[[], Any], *, wait: float = TOOLS_WAIT) -> Any:
        """`call()`, which needs the guest's Xen tools: XAPI refuses it with
        VM_LACKS_FEATURE until they report (xapi_vm_lifecycle.ml, check_op_for_feature),
        as in the first seconds after a start. Asked again every half second for up to
        `wait` seconds, then the refusal goes on with what it means."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return call()
            except Unsupported as exc:
                if getattr(exc, "xapi_code", "") != "VM_LACKS_FEATURE":
                    raise
                if time.monotonic() > deadline:
                    raise Unsupported(
                        f"{exc}: the guest's Xen tools do not report (not installed or not "
                        "started), so it cannot be asked to do this"
                    ) from None
            time.sleep(0.5)

    def _uuid_of(self, ref: str) -> str:
        return str(self._call("reading a VM", "VM.get_uuid", ref))

    def _power_of(self, ref: str) -> str:
        return str(self._call("reading a VM's state", "VM.get_power_state", ref))

    def _apply_pending(self, doing: str, ref: str) -> None:
        """Apply the size kept for the next boot (the VM is halted)."""
        record = self._call(doing, "VM.get_record", ref)
        oc = record.get("other_config") or {}
        if K_NEXT_VCPUS not in oc and K_NEXT_MEMORY not in oc:
            return
        vcpus = _int(oc.get(K_NEXT_VCPUS, record["VCPUs_at_startup"]))
        memory = _int(oc.get(K_NEXT_MEMORY, record["memory_dynamic_max"]))
        self._size_halted(doing, ref, vcpus, max(vcpus, _int(record["VCPUs_max"])), memory,
                          max(memory, _int(record["memory_static_max"])))  # fmt: skip
        for key in (K_NEXT_VCPUS, K_NEXT_MEMORY):
            self._call(doing, "VM.remove_from_other_config", ref, key)

    def start_vm(self, name: str) -> VM:
        ref = self._vm_ref(name)
        doing = f"starting VM {name}"
        state = self._power_of(ref)
        if state == "Suspended":
            run_task(self._conn, doing, "VM.resume", ref, False, False)
        elif state == "Paused":
            self._call(doing, "VM.unpause", ref)
        elif state == "Halted":
            self._apply_pending(doing, ref)
            run_task(self._conn, doing, "VM.start", ref, False, False)
        else:
            raise BadPowerState(f"VM {name!r} is already {state.lower()}")
        return self.get_vm(self._uuid_of(ref))

    def shutdown_vm(self, name: str, *, timeout: float = 60.0) -> VM:
        ref = self._vm_ref(name)
        if self._power_of(ref) == "Halted":
            raise BadPowerState(f"VM {name!r} is already stopped")
        deadline = time.monotonic() + timeout

        def until_deadline(_step: str, _fraction: float) -> None:
            if time.monotonic() > deadline:
                raise GuestTimeout(
                    f"VM {name!r} is still up {timeout:.0f} s after it was asked to power "
                    "off (it is left running)"
                )

        self._with_tools(
            lambda: run_task(self._conn, f"stopping VM {name}", "VM.clean_shutdown", ref,
                             progress=until_deadline),
            wait=timeout,
        )  # fmt: skip
        return self.get_vm(self._uuid_of(ref))

    def force_off(self, name: str) -> VM:
        ref = self._vm_ref(name)
        if self._power_of(ref) == "Halted":
            raise BadPowerState(f"cannot power off VM {name!r}: it is stopped")
        run_task(self._conn, f"powering off VM {name}", "VM.hard_shutdown", ref)
        return self.get_vm(self._uuid_of(ref))

    def reboot_vm(self, name: str) -> VM:
        ref = self._vm_ref(name)
        doing = f"rebooting VM {name}"
        if self._power_of(ref) != "Running":
            raise BadPowerState(f"VM {name!r} is not running")
        oc = self._call(doing, "VM.get_other_config", ref)
        if K_NEXT_VCPUS in oc or K_NEXT_MEMORY in oc:  # static sizes change while halted
            self._with_tools(lambda: run_task(self._conn, doing, "VM.clean_shutdown", ref))
            self._apply_pending(doing, ref)
            run_task(self._conn, doing, "VM.start", ref, False, False)
        else:
            self._with_tools(lambda: run_task(self._conn, doing, "VM.clean_reboot", ref))
        return self.get_vm(self._uuid_of(ref))

    def delete_vm(self, name: str) -> None:
        ref = self._vm_ref(name)
        if self._power_of(ref) != "Halted":
            raise BadPowerState(f"VM {name!r} is running; stop it before deleting it")
        doing = f"deleting VM {name}"
        for snap in self._call(doing, "VM.get_snapshots", ref):
            self._destroy_vm_and_disks(str(snap), doing)
        self._destroy_vm_and_disks(ref, doing)

    def export_template(self, name: str, into: Path, progress: Progress = no_progress
                        ) -> TemplateSpec:  # fmt: skip
        raise Unsupported(f"{self.uri}: exporting a template's disk is not implemented for XAPI")

    def grow_disk(self, name: str, size: int) -> VM:
        """`VDI.resize` on a halted VM's root disk, `VDI.resize_online` on a running or
        paused one's (disks.py says what the SR must allow and hold). A suspended VM is
        refused: its saved memory describes the disk as it was."""
        ref = self._vm_ref(name)
        record = self._record(ref)
        label = str(record["name_label"])
        if (record.get("other_config") or {}).get(K_MANAGED) != "true":
            raise Unsupported(f"VM {label!r} was not created by dockvisor; its disk is not ours")
        disks = disks_of(record, self._live)
        if not disks:
            raise Unsupported(f"VM {label!r} has no disk to grow")
        vdi, root = disks[0]
        growth = check_disk_growth(label, _int(root.get("virtual_size", 0)), size)
        if not growth:
            return self._to_vm(record, self._live)
        sr = str(root.get("SR", NULL))
        self._storage.check_room(sr, growth, f"growing the disk of VM {label!r}")
        state = str(record["power_state"])
        if state == "Suspended":
            raise BadPowerState(f"VM {label!r} is suspended; resume or stop it to grow its disk")
        live = state != "Halted"
        features = self._storage.features(sr)
        if "VDI_RESIZE" not in features:
            raise Unsupported(
                f"pool {self.uri}: the storage of VM {label!r} cannot grow disks (its storage "
                "manager lacks VDI_RESIZE)"
            )
        if live and "VDI_RESIZE_ONLINE" not in features:
            raise Unsupported(
                f"pool {self.uri}: the storage of VM {label!r} grows disks only while the VM "
                "is stopped (its storage manager lacks VDI_RESIZE_ONLINE): stop it first"
            )
        doing = f"growing the disk of VM {label} to {format_size(size)}"
        run_task(self._conn, doing, "VDI.resize_online" if live else "VDI.resize", vdi, str(size))
        self._events.remember("vdi", vdi, self._call(doing, "VDI.get_record", vdi))
        return self._to_vm(self._record(ref), self._live)

    def set_resources(
        self, name: str, *, vcpus: int | None = None, memory: int | None = None
    ) -> ResizeResult:
        ref = self._vm_ref(name)
        doing = f"resizing VM {name}"
        record = self._call(doing, "VM.get_record", ref)
        result = ResizeResult(self._to_vm(record, self._live))
        if record["power_state"] == "Halted":
            self._size_halted(
                doing, ref,
                vcpus or _int(record["VCPUs_at_startup"]),
                max(vcpus or 0, _int(record["VCPUs_max"])),
                memory or _int(record["memory_dynamic_max"]),
                max(memory or 0, _int(record["memory_static_max"])),
            )  # fmt: skip
            result.applied.update({k: v for k, v in (("vcpus", vcpus), ("memory", memory)) if v})
            for key, value in ((K_NEXT_VCPUS, vcpus), (K_NEXT_MEMORY, memory)):
                if value is not None:
                    self._call(doing, "VM.remove_from_other_config", ref, key)
        else:
            if vcpus is not None:
                self._resize_vcpus_live(doing, ref, result.vm, vcpus, result)
            if memory is not None:
                self._resize_memory_live(doing, ref, result.vm, memory, result)
        return replace(result, vm=self.get_vm(str(record["uuid"])))

    def _keep_for_next_boot(self, doing: str, ref: str, key: str, value: int) -> None:
        self._call(doing, "VM.remove_from_other_config", ref, key)
        self._call(doing, "VM.add_to_other_config", ref, key, str(value))

    def _resize_vcpus_live(
        self, doing: str, ref: str, now: VM, vcpus: int, result: ResizeResult
    ) -> None:
        why = None
        if vcpus < now.vcpus and Capability.LIVE_VCPU_REMOVAL not in self.capabilities:
            why = "vCPUs are added to a running VM, not removed"
        elif vcpus > now.max_vcpus:
            why = f"{vcpus} vCPUs is above the {now.max_vcpus} this VM was booted with room for"
        elif Capability.LIVE_VCPUS not in self.capabilities:
            why = f"pool {self.uri} cannot change vCPUs live"

        def live() -> None:
            if vcpus != now.vcpus:
                self._with_tools(
                    lambda: self._call(doing, "VM.set_VCPUs_number_live", ref, str(vcpus)),
                    wait=15.0,
                )

        self._live_or_next_boot(doing, ref, "vcpus", vcpus, now.max_vcpus, why, live, result)

    def _resize_memory_live(
        self, doing: str, ref: str, now: VM, memory: int, result: ResizeResult
    ) -> None:
        why = None
        if memory > now.max_memory:
            why = (
                f"memory {memory // MiB}MiB is above the {now.max_memory // MiB}MiB this VM "
                "was booted with room for (memory_static_max changes only while halted)"
            )
        elif Capability.LIVE_MEMORY not in self.capabilities:
            why = f"pool {self.uri} cannot change memory live (no dynamic memory control)"

        def live() -> None:
            self._call(doing, "VM.set_memory_dynamic_range", ref, str(memory), str(memory))

        self._live_or_next_boot(doing, ref, "memory", memory, now.max_memory, why, live, result)

    def _live_or_next_boot(
        self,
        doing: str,
        ref: str,
        field: str,
        value: int,
        limit: int,
        why: str | None,
        live: Callable[[], None],
        result: ResizeResult,
    ) -> None:
        """Apply `value` to the running VM with `live()` unless `why` says it cannot be;
        otherwise (or if the pool refuses) keep it for the next boot, with the reason."""
        key = K_NEXT_VCPUS if field == "vcpus" else K_NEXT_MEMORY
        if why is None:
            try:
                live()
                result.applied[field] = value
                self._call(doing, "VM.remove_from_other_config", ref, key)
                return
            except DockvisorError as exc:
                why = f"the pool did not take it live ({_xapi_words(exc)})"
        self._keep_for_next_boot(doing, ref, key, value)
        result.pending[field] = value
        if value > limit:
            result.pending[f"max_{field}"] = value
        result.reasons.append(f"{why}: applies at the next boot")

    # -- snapshots -------------------------------------------------------------------

    def _snapshots(self, ref: str) -> dict[str, Record]:
        return {
            str(s): self._call("reading a snapshot", "VM.get_record", s)
            for s in self._call("listing snapshots", "VM.get_snapshots", ref)
        }

    def _to_snapshot(
        self, vm_name: str, record: Record, names: dict[str, str], current: str
    ) -> Snapshot:
        """`names`: the VM's snapshots' labels by reference; `current`: the reference of
        the snapshot the VM was last taken or reverted to (its `parent` field)."""
        oc = record.get("other_config") or {}
        with_memory = record.get("power_state") == "Suspended"
        running = with_memory or oc.get(K_TAKEN_RUNNING) == "true"
        return Snapshot(
            name=str(record["name_label"]),
            vm=vm_name,
            created=_when(record.get("snapshot_time")) or datetime.now(UTC),
            power_state=PowerState.RUNNING if running else PowerState.STOPPED,
            with_memory=with_memory,
            description=str(record.get("name_description", "")),
            parent=names.get(str(record.get("parent", NULL))),
            current=names.get(current) == record["name_label"],
            vcpus=_int(record["VCPUs_at_startup"]),
            memory=_int(record["memory_dynamic_max"]),
            disk_size=disk_size(record, self._live),
        )

    def _snapshot_ref(self, ref: str, vm_name: str, snapshot: str) -> tuple[str, Record]:
        for snap_ref, record in self._snapshots(ref).items():
            if record["name_label"] == snapshot:
                return snap_ref, record
        owners = []
        for other in self._call("looking up a snapshot", "VM.get_by_name_label", snapshot):
            record = self._call("reading a snapshot", "VM.get_record", other)
            owner = str(record.get("snapshot_of", NULL))
            if record.get("is_a_snapshot") and owner not in (NULL, ref):
                with contextlib.suppress(NotFound):
                    owners.append(self._call("reading a VM", "VM.get_name_label", owner))
        where = f" (VM {owners[0]!r} has one of that name)" if owners else ""
        raise NotFound(f"VM {vm_name!r} has no snapshot {snapshot!r}{where}")

    def create_snapshot(self, name: str, snapshot: str, description: str = "") -> Snapshot:
        self._require(Capability.SNAPSHOTS, "snapshots")
        ref = self._vm_ref(name)
        vm_name = str(self._call("reading a VM", "VM.get_name_label", ref))
        if any(r["name_label"] == snapshot for r in self._snapshots(ref).values()):
            raise AlreadyExists(f"VM {vm_name!r} already has a snapshot named {snapshot!r}")
        doing = f"snapshotting VM {vm_name}"
        running = self._power_of(ref) == "Running"
        if running and Capability.MEMORY_SNAPSHOTS in self.capabilities:
            snap = self._with_tools(
                lambda: run_task(self._conn, doing, "VM.checkpoint", ref, snapshot)
            )
        else:
            snap = run_task(self._conn, doing, "VM.snapshot", ref, snapshot)
        try:
            self._call(doing, "VM.set_name_description", snap, description)
            self._call(doing, "VM.remove_from_other_config", snap, K_TAKEN_RUNNING)
            self._call(doing, "VM.add_to_other_config", snap, K_TAKEN_RUNNING,
                       "true" if running else "false")  # fmt: skip
        except BaseException:
            self._destroy_all(snap, [])
            raise
        return next(s for s in self._snapshot_list(ref) if s.name == snapshot)

    def _snapshot_list(self, ref: str) -> list[Snapshot]:
        vm = self._call("reading a VM", "VM.get_record", ref)
        records = self._snapshots(ref)
        names = {r: str(rec["name_label"]) for r, rec in records.items()}
        current = str(vm.get("parent", NULL))
        snaps = [
            self._to_snapshot(str(vm["name_label"]), rec, names, current)
            for rec in records.values()
        ]
        return sorted(snaps, key=lambda s: (s.created, s.name))

    def list_snapshots(self, name: str) -> list[Snapshot]:
        return self._snapshot_list(self._vm_ref(name))

    def revert_to_snapshot(self, name: str, snapshot: str) -> VM:
        self._require(Capability.SNAPSHOTS, "snapshots")
        ref = self._vm_ref(name)
        vm_name = str(self._call("reading a VM", "VM.get_name_label", ref))
        snap_ref, _ = self._snapshot_ref(ref, vm_name, snapshot)
        info = next(s for s in self._snapshot_list(ref) if s.name == snapshot)
        doing = f"reverting VM {vm_name} to {snapshot}"
        run_task(self._conn, doing, "VM.revert", snap_ref)
        state = self._power_of(ref)
        if state == "Suspended":  # a checkpoint: its memory comes back
            run_task(self._conn, doing, "VM.resume", ref, False, False)
        elif state == "Halted" and info.power_state is PowerState.RUNNING:
            run_task(self._conn, doing, "VM.start", ref, False, False)
        return self.get_vm(self._uuid_of(ref))

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        ref = self._vm_ref(name)
        vm_name = str(self._call("reading a VM", "VM.get_name_label", ref))
        snap_ref, _ = self._snapshot_ref(ref, vm_name, snapshot)
        self._destroy_vm_and_disks(snap_ref, f"deleting snapshot {snapshot} of {vm_name}")

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
        ref = self._vm_ref(name)
        record = self._call("reading a VM", "VM.get_record", ref)
        oc = record.get("other_config") or {}
        if oc.get(K_MANAGED) != "true":
            raise Unsupported(f"VM {name!r} was not created by dockvisor; it cannot be cloned")
        self._check_new_name(new_name)
        doing = f"cloning VM {record['name_label']} as {new_name}"
        source, cut = ref, None
        made: str | None = None
        method = "VM.clone" if linked else "VM.copy"
        try:
            if record["power_state"] != "Halted":
                progress("cutting the disks (a snapshot)", 0.02)
                cut = run_task(self._conn, doing, "VM.snapshot", ref, f"{new_name}-cut")
                source = cut
            args = (source, new_name) if linked else (source, new_name, NULL)
            made = run_task(self._conn, doing, method, *args, progress=progress,
                            share=(0.05, 0.85))  # fmt: skip
            assert made is not None
            if cut is not None:  # a clone of a snapshot is a template (copy_vm_record)
                self._call(doing, "VM.set_is_a_template", made, False)
            self._drop_config_drive(doing, made)
            for key in (K_TAKEN_RUNNING, K_NEXT_VCPUS, K_NEXT_MEMORY):
                self._call(doing, "VM.remove_from_other_config", made, key)
            for key, value in {
                K_DISK_MODE: "linked" if linked else "full",
                K_CREATED: datetime.now(UTC).strftime("%Y%m%dT%H:%M:%SZ"),
            }.items():
                self._call(doing, "VM.remove_from_other_config", made, key)
                self._call(doing, "VM.add_to_other_config", made, key, value)
            if guest is not None:
                progress("attaching the config drive", 0.9)
                self._give_guest_config(doing, made, guest)
            vm = self._to_vm(self._record(made), self._live)
        except BaseException:
            self._destroy_all(made, [])
            raise
        finally:
            if cut is not None:
                with contextlib.suppress(DockvisorError):
                    self._destroy_vm_and_disks(cut, doing)
        progress("cloned", 1.0)
        return vm

    def guest_addresses(self, name: str) -> list[str]:
        """What the guest's Xen tools report (`VM_guest_metrics.networks`: `N/ip`,
        `N/ipv4/M`, `N/ipv6/M`), IPv4 first. The guest chooses what it reports: an
        address that cannot be its own (loopback: the host itself; link-local,
        multicast, unspecified) is never returned, and the engine's certificate name
        still pins which VM dockvisor talks to."""
        ref = self._vm_ref(name)
        metrics = self._live("VM_guest_metrics", self._call(
            "reading a VM", "VM.get_guest_metrics", ref
        ))  # fmt: skip
        networks = (metrics or {}).get("networks") or {}
        reported = sorted(
            (k, str(v)) for k, v in networks.items() if re.match(r"^\d+/(ip|ipv4/\d+|ipv6/\d+)$", k)
        )
        found: list[str] = []
        for _key, text in sorted(reported, key=lambda kv: "ipv6" in kv[0]):
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            unusable = (
                address.is_loopback
                or address.is_link_local
                or address.is_multicast
                or address.is_unspecified
            )
            if not unusable and str(address) not in found:
                found.append(str(address))
        return found

    def docker_endpoint(self, name: str) -> DockerEndpoint:
        ref = self._vm_ref(name)
        record = self._call("reading a VM", "VM.get_record", ref)
        oc = record.get("other_config") or {}
        label = record["name_label"]
        if K_DOCKER_PORT not in oc:
            raise Unsupported(
                f"VM {label!r} has no Docker engine (its template is not Docker-ready)"
            )
        if record["power_state"] != "Running":
            raise BadPowerState(
                f"cannot reach the Docker engine of VM {label!r}: it is "
                f"{str(record['power_state']).lower()}"
            )
        addresses = self.guest_addresses(str(record["uuid"]))
        if not addresses:
            raise GuestTimeout(f"the Xen tools of VM {label!r} report no IP address yet")
        engine = oc.get(K_ENGINE)
        return DockerEndpoint(addresses[0], _int(oc[K_DOCKER_PORT]), engine is not None, engine)

    def console_log(self, name: str, lines: int = 20) -> str:
        """XAPI keeps no serial log dockvisor can read: empty."""
        self._vm_ref(name)
        return ""

    def usage_counters(self) -> dict[str, UsageCounters]:
        raise Unsupported(f"pool {self.uri}: VM graphs are not read from XAPI (its RRDs) yet")

    def open_console(self, name: str, kind: ConsoleKind) -> socket.socket:
        raise Unsupported(f"pool {self.uri}: consoles of XAPI VMs are not offered yet")


_SIZE_FIELDS = {f.name for f in fields(TemplateSizes)}
_ORIGIN_FIELDS = [f.name for f in fields(TemplateOrigin)]


def _sizes(text: str | None) -> TemplateSizes:
    """A template's sizes from its other_config (what is absent or unreadable: unsaid)."""
    try:
        data = json.loads(text or "{}")
        return TemplateSizes(**{k: v for k, v in data.items() if k in _SIZE_FIELDS})
    except (ValueError, TypeError, AttributeError):
        log.warning("xapi.template-sizes-unreadable", extra={"value": text})
        return TemplateSizes()


def _origin(text: str | None) -> TemplateOrigin | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return TemplateOrigin(**{k: str(data[k]) for k in _ORIGIN_FIELDS})
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("xapi.template-origin-unreadable", extra={"value": text})
        return None


def _xapi_words(exc: DockvisorError) -> str:
    code = getattr(exc, "xapi_code", None)
    if code is None:
        return str(exc)
    return describe([code, *getattr(exc, "xapi_params", [])])
