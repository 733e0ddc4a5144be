"""VM clone, copy, snapshot, checkpoint, revert, provision and destroy.

Sources: ocaml/xapi/xapi_vm_clone.ml (copy_vm_record: what a new VM inherits, the
mac_seed/default_template/base_template_name rewrite of other_config, parent links,
power state of the result; clone: disks first, VBDs, VIFs, suspend VDI),
xapi_vm.ml (clone/copy of a snapshot end Halted; copy to an ISO SR is refused;
provision; destroy), xapi_vm_snapshot.ml (checkpoint suspends, snapshots, resumes;
revert hard-shuts-down the VM, copies the fields saved at snapshot time except
`do_not_copy`, replaces disks by clones of the snapshot's disks, keeps disks the
snapshot lacks but detaches them, copies VIFs with their MACs, guest metrics and
metrics, sets parent, and ends in the snapshot's power state; a VM destroyed
since is recreated with its old uuid), xapi_vm_helpers.ml destroy (VBDs, VIFs,
metrics go, VDIs stay) and xapi_templates.ml (provision spec XML, SR by uuid).
"""

from __future__ import annotations

import copy as copylib
import json
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

from .devices import copy_vbd, copy_vif, create_vbd
from .engine import Call, Engine
from .errors import XapiError
from .guests import copy_guest_metrics, drop_guest_metrics
from .lifecycle import begin_operation, truthy, update_allowed_operations
from .memory import set_overhead
from .registry import api
from .storage import (
    assert_space,
    create_vdi,
    derive_vdi,
    destroy_vdi,
    space_needed,
)
from .store import Store
from .tasks import Plan
from .vm_power import make_suspend_image, set_running, set_stopped, vm_plan
from .wire import EPOCH, NULL_REF, encode, now

_INHERITED = (
    "name_description",
    "user_version",
    "affinity",
    "memory_overhead",
    "memory_target",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_max",
    "VCPUs_at_startup",
    "VCPUs_params",
    "actions_after_softreboot",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "HVM_boot_policy",
    "HVM_boot_params",
    "HVM_shadow_multiplier",
    "platform",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader",
    "PV_bootloader_args",
    "PV_legacy_args",
    "PCI_bus",
    "last_boot_CPU_flags",
    "is_control_domain",
    "last_booted_record",
    "recommendations",
    "xenstore_data",
    "ha_restart_priority",
    "tags",
    "bios_strings",
    "hardware_platform_version",
    "has_vendor_device",
    "reference_label",
    "domain_type",
    "NVRAM",
)
# xapi_vm_snapshot.ml do_not_copy (post-MNR snapshots): fields a revert leaves alone.
DO_NOT_COPY = {
    "uuid",
    "suspend_VDI",
    "power_state",
    "parent",
    "current_operations",
    "allowed_operations",
    "metrics",
    "guest_metrics",
    "resident_on",
    "domid",
    "protection_policy",
    "snapshot_schedule",
    "scheduled_to_be_resident_on",
    "snapshots",
    "tags",
    "affinity",
    "consoles",
    "VBDs",
    "VIFs",
    "VGPUs",
    "VUSBs",
    "VTPMs",
    "attached_PCIs",
}


def copy_metrics(store: Store, vm: str) -> str:
    """Xapi_vm_helpers.copy_metrics: a copy of the VM_metrics record (or a fresh one)."""
    src = store.all("VM_metrics").get(store.get("VM", vm)["metrics"])
    fields = {k: v for k, v in src.items() if k != "uuid"} if src else {}
    return store.create("VM_metrics", copylib.deepcopy(fields))


def _other_config(src: dict[str, Any], is_snapshot: bool) -> dict[str, str]:
    other = dict(src["other_config"])
    if not is_snapshot:
        other["mac_seed"] = str(uuidlib.uuid4())
    other.pop("default_template", None)
    other.pop("xensource_internal", None)
    if src["is_a_template"] and "base_template_name" not in other:
        other["base_template_name"] = src["name_label"]
    return other


def new_vm_record(store: Store, vm: str, mode: str, name: str, power_state: str) -> dict[str, Any]:
    """copy_vm_record in xapi_vm_clone.ml."""
    src = store.get("VM", vm)
    snap = mode in ("snapshot", "checkpoint")
    fields = {k: copylib.deepcopy(src[k]) for k in _INHERITED}
    fields.update(
        name_label=name,
        power_state=power_state,
        is_a_template=snap or src["is_a_template"],
        is_default_template=False,
        is_a_snapshot=snap,
        snapshot_of=vm if snap else NULL_REF,
        snapshot_time=now() if snap else EPOCH,
        parent=src["parent"] if snap else NULL_REF,
        other_config=_other_config(src, snap),
        metrics=copy_metrics(store, vm),
        guest_metrics=copy_guest_metrics(store, vm),
        domid=-1,
        generation_id="0:0",
    )
    if snap:
        info = {"power-state-at-snapshot": src["power_state"]}
        info["disk-snapshot-type"] = "crash_consistent"
        metadata = {k: copylib.deepcopy(v) for k, v in src.items() if not k.startswith("_")}
        fields.update(
            snapshot_info=info,
            snapshot_metadata=json.dumps(encode(metadata), default=str, sort_keys=True),
            _metadata=metadata,
        )
    return fields


def clone_vm(
    engine: Engine,
    vm: str,
    mode: str,
    name: str,
    sr: str | None = None,
    ignore_vdis: tuple[str, ...] = (),
) -> str:
    """Xapi_vm_clone.clone for mode clone/copy/snapshot/checkpoint; all or nothing."""
    store = engine.store
    src = store.get("VM", vm)
    disk_mode = {"clone": "clone", "copy": "copy"}.get(mode, "snapshot")
    vbds = [
        v
        for v in store.children("VM", vm, "VBDs")
        if not (mode in ("snapshot", "checkpoint") and store.get("VBD", v)["VDI"] in ignore_vdis)
    ]
    disks = [
        v for v in vbds if not store.get("VBD", v)["empty"] and store.get("VBD", v)["type"] != "CD"
    ]
    vdis = [store.get("VBD", v)["VDI"] for v in disks]
    has_suspend = store.exists("VDI", src["suspend_VDI"]) and mode != "snapshot"
    extra = [src["suspend_VDI"]] if has_suspend else []
    assert_space(store, space_needed(store, vdis + extra, disk_mode, sr))
    keeps_image = {"checkpoint": ("Running", "Suspended"), "clone": ("Suspended",)}
    keeps_image["copy"] = ("Suspended",)
    state = "Suspended" if src["power_state"] in keeps_image.get(mode, ()) else "Halted"
    if src["is_a_snapshot"] and mode in ("clone", "copy"):
        state, has_suspend = "Halted", False  # xapi_vm.ml: hard_shutdown of the result
    ref = store.create("VM", new_vm_record(store, vm, mode, name, state))
    for vbd in vbds:
        record = store.get("VBD", vbd)
        if record["empty"] or record["type"] == "CD":
            new = record["VDI"]
        else:
            new = derive_vdi(store, record["VDI"], disk_mode, sr)
        copy_vbd(store, vbd, ref, new, owner=True)
    for vif in store.children("VM", vm, "VIFs"):
        copy_vif(store, vif, ref, preserve_mac=mode in ("snapshot", "checkpoint"))
    if has_suspend:
        store.update("VM", ref, suspend_VDI=derive_vdi(store, src["suspend_VDI"], disk_mode, sr))
    if mode in ("snapshot", "checkpoint"):
        store.update("VM", vm, parent=ref)
    set_overhead(store, ref)
    update_allowed_operations(store, ref)
    return ref


@api("VM.clone", "r", "s")
def vm_clone(call: Call, vm: str, new_name: str) -> Plan:
    apply = lambda: clone_vm(call.engine, vm, "clone", new_name)  # noqa: E731
    return vm_plan(call, vm, "clone", apply, cancellable=True)


@api("VM.copy", "r", "s", "r")
def vm_copy(call: Call, vm: str, new_name: str, sr: str) -> Plan:
    store = call.store
    target = sr if store.exists("SR", sr) else None

    def prepare() -> None:
        if target and store.get("SR", target)["content_type"] == "iso":
            raise XapiError("OPERATION_NOT_ALLOWED", "Cannot copy a VM's disks to an ISO SR")

    apply = lambda: clone_vm(call.engine, vm, "copy", new_name, target)  # noqa: E731
    return vm_plan(call, vm, "copy", apply, prepare=prepare, cancellable=True)


@api("VM.snapshot", "r", "s", optional=(("ignore_vdis", []),))
def vm_snapshot(call: Call, vm: str, new_name: str, *rest: Any) -> Plan:
    ignore = tuple(rest[0]) if rest and isinstance(rest[0], list) else ()
    apply = lambda: clone_vm(call.engine, vm, "snapshot", new_name, None, ignore)  # noqa: E731
    return vm_plan(call, vm, "snapshot", apply, cancellable=True)


@api("VM.checkpoint", "r", "s")
def vm_checkpoint(call: Call, vm: str, new_name: str) -> Plan:
    engine, store = call.engine, call.store

    def prepare() -> None:
        if not engine.feature("Checkpoint"):
            raise XapiError("LICENCE_RESTRICTION", "Checkpoint")

    def apply() -> str:
        record = store.get("VM", vm)
        running = record["power_state"] == "Running"
        if running:
            image = make_suspend_image(engine, vm)
            store.update("VM", vm, suspend_VDI=image)
        try:
            snap = clone_vm(engine, vm, "checkpoint", new_name)
        finally:
            if running:  # the "slow resume": back to Running in a new domain
                destroy_vdi(store, store.get("VM", vm)["suspend_VDI"])
                store.update("VM", vm, suspend_VDI=NULL_REF)
                set_running(engine, vm, record["resident_on"], boot=False)
        return snap

    return vm_plan(call, vm, "checkpoint", apply, prepare=prepare, cancellable=True)


def recreate_vm(store: Store, snapshot: str) -> str:
    """Xapi_vm_snapshot.create_vm_from_snapshot: the VM comes back with its old uuid."""
    snap = store.get("VM", snapshot)
    metadata = snap.get("_metadata", {})
    fields = {k: copylib.deepcopy(v) for k, v in metadata.items() if k not in DO_NOT_COPY}
    fields.update(uuid=metadata.get("uuid", str(uuidlib.uuid4())), power_state="Halted")
    fields["metrics"] = store.create("VM_metrics", {})
    old = snap["snapshot_of"]
    ref = store.create("VM", fields)
    for other_ref, other in list(store.all("VM").items()):
        if other["snapshot_of"] == old:
            store.update("VM", other_ref, snapshot_of=ref)
    update_allowed_operations(store, ref)
    return ref


def revert_disks(engine: Engine, snapshot: str, vm: str) -> None:
    """revert_vbds in xapi_vm_snapshot.ml, on an SR without VDI.revert (clone path)."""
    store = engine.store
    snap_vbds = store.children("VM", snapshot, "VBDs")
    snap_disks = [v for v in snap_vbds if store.get("VBD", v)["type"] == "Disk"]
    snap_cds = [v for v in snap_vbds if store.get("VBD", v)["type"] != "Disk"]
    originals = {store.get("VDI", store.get("VBD", v)["VDI"])["snapshot_of"] for v in snap_disks}
    vm_vbds = store.children("VM", vm, "VBDs")
    for vbd in vm_vbds:
        record = store.get("VBD", vbd)
        store.destroy("VBD", vbd)
        if record["type"] == "Disk" and record["VDI"] in originals:
            destroy_vdi(store, record["VDI"])
    suspend = store.get("VM", vm)["suspend_VDI"]
    if store.exists("VDI", suspend):
        destroy_vdi(store, suspend)
    store.update("VM", vm, suspend_VDI=NULL_REF)
    snap_vdis = [store.get("VBD", v)["VDI"] for v in snap_disks]
    snap_suspend = store.get("VM", snapshot)["suspend_VDI"]
    extra = [snap_suspend] if store.exists("VDI", snap_suspend) else []
    assert_space(store, space_needed(store, snap_vdis + extra, "clone"))
    for vbd in snap_disks:
        old_vdi = store.get("VBD", vbd)["VDI"]
        previous = store.get("VDI", old_vdi)["snapshot_of"]
        new_vdi = derive_vdi(store, old_vdi, "clone")
        for vdi_ref, vdi in list(store.all("VDI").items()):
            if vdi["snapshot_of"] == previous and previous != NULL_REF:
                store.update("VDI", vdi_ref, snapshot_of=new_vdi)
        copy_vbd(store, vbd, vm, new_vdi, owner=False)
    for vbd in snap_cds:
        copy_vbd(store, vbd, vm, store.get("VBD", vbd)["VDI"], owner=False)
    if extra:
        store.update("VM", vm, suspend_VDI=derive_vdi(store, snap_suspend, "clone"))


def revert_vm(engine: Engine, snapshot: str, vm: str) -> None:
    store = engine.store
    if store.get("VM", vm)["power_state"] != "Halted":
        from .vm_power import _halt

        _halt(engine, vm)
    snap = store.get("VM", snapshot)
    metadata = snap.get("_metadata", {})
    restored = {k: copylib.deepcopy(v) for k, v in metadata.items() if k not in DO_NOT_COPY}
    restored["ha_always_run"] = False
    store.update("VM", vm, **restored)
    try:
        revert_disks(engine, snapshot, vm)
    except XapiError:
        set_stopped(engine, vm)
        raise
    for vif in store.children("VM", vm, "VIFs"):
        store.destroy("VIF", vif)
    for vif in store.children("VM", snapshot, "VIFs"):
        copy_vif(store, vif, vm, preserve_mac=True)
    drop_guest_metrics(store, vm)
    store.update("VM", vm, guest_metrics=copy_guest_metrics(store, snapshot))
    store.destroy("VM_metrics", store.get("VM", vm)["metrics"])
    store.update("VM", vm, metrics=copy_metrics(store, snapshot), parent=snapshot)
    set_stopped(engine, vm, snap["power_state"])
    set_overhead(store, vm)


@api("VM.revert", "r")
def vm_revert(call: Call, snapshot: str) -> Plan:
    """message_forwarding.ml revert: when snapshot_of is not a live VM the VM is
    recreated first, before any operation check. For a VM that is not a snapshot
    (snapshot_of NULL, no snapshot_metadata) that recreation fails, so real xapi
    answers VM_REVERT_FAILED [vm; snapshot_of] rather than
    REVERT_ONLY_ALLOWED_ON_SNAPSHOT (that check in xapi_vm_lifecycle.ml is only reached
    for a non-snapshot whose snapshot_of is a live VM)."""
    engine, store = call.engine, call.store
    snap = store.get("VM", snapshot)
    vm = snap["snapshot_of"]
    if not store.exists("VM", vm):
        if "_metadata" not in snap:
            raise XapiError("VM_REVERT_FAILED", snapshot, vm)
        vm = recreate_vm(store, snapshot)
    done_snapshot = begin_operation(store, snapshot, "revert", call.op_key)
    try:
        done_vm = begin_operation(store, vm, "reverting", call.op_key)
    except XapiError:
        done_snapshot()
        raise
    apply = lambda: revert_vm(engine, snapshot, vm)  # noqa: E731
    return Plan(apply, done_snapshot, cleanups=[done_vm])


def parse_provision(text: str) -> list[dict[str, str]]:
    """disks_of_xml in xapi_templates.ml; any deviation is Parse_failure."""
    failure = XapiError("INTERNAL_ERROR", "Xapi_templates.Parse_failure")
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        raise failure from None
    if root.tag != "provision" or root.attrib:
        raise failure
    disks = []
    for disk in root:
        attrs = disk.attrib
        if (
            disk.tag != "disk"
            or len(disk)
            or not {"device", "size", "sr", "bootable"} <= set(attrs)
        ):
            raise failure
        if not attrs["size"].lstrip("-").isdigit():
            raise failure
        disks.append(dict(attrs))
    return disks


def provision(engine: Engine, vm: str) -> None:
    store = engine.store
    store.update("VM", vm, is_a_template=False)
    metrics = store.get("VM", vm)["metrics"]
    if store.exists("VM_metrics", metrics):
        store.update("VM_metrics", metrics, install_time=now())
    spec = store.get("VM", vm)["other_config"].get("disks")
    made: list[tuple[str, str]] = []
    try:
        for disk in parse_provision(spec) if spec else []:
            sr = next((r for r, s in store.all("SR").items() if s["uuid"] == disk["sr"]), None)
            if sr is None:
                raise XapiError("UUID_INVALID", "sr", disk["sr"])
            kind = disk.get("type", "system")
            if kind not in ("system", "user", "ephemeral", "suspend", "crashdump"):
                kind = "system"
            vdi = create_vdi(
                store,
                {
                    "name_label": "",
                    "name_description": "Created by template provisioner",
                    "SR": sr,
                    "virtual_size": int(disk["size"]),
                    "type": kind,
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                    "xenstore_data": {},
                    "sm_config": {"vmhint": store.get("VM", vm)["uuid"]},
                    "tags": [],
                },
            )
            made.append(("VDI", vdi))
            vbd = create_vbd(
                store,
                {
                    "VM": vm,
                    "VDI": vdi,
                    "device": "",
                    "userdevice": disk["device"],
                    "bootable": disk["bootable"] == "true",
                    "mode": "RW",
                    "type": "Disk",
                    "unpluggable": kind != "system",
                    "empty": False,
                    "other_config": {"owner": ""},
                    "currently_attached": False,
                    "qos_algorithm_type": "",
                    "qos_algorithm_params": {},
                },
            )
            made.append(("VBD", vbd))
            store.update("VDI", vdi, name_label=store.get("VBD", vbd)["userdevice"])
    except XapiError:
        for cls, ref in reversed(made):
            if store.exists(cls, ref):
                (destroy_vdi(store, ref) if cls == "VDI" else store.destroy(cls, ref))
        raise
    if made or "postinstall" in store.get("VM", vm)["other_config"]:
        # Xapi_templates.post_install runs only when there was something to install.
        other = dict(store.get("VM", vm)["other_config"])
        other.pop("disks", None)
        other.pop("postinstall", None)
        store.update("VM", vm, other_config=other)
    update_allowed_operations(store, vm)


@api("VM.provision", "r")
def vm_provision(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "provision", lambda: provision(call.engine, vm))


def destroy_vm(store: Store, vm: str) -> None:
    record = store.get("VM", vm)
    if truthy(record["other_config"].get("default_template")):
        raise XapiError("VM_CANNOT_DELETE_DEFAULT_TEMPLATE")
    for child in store.children("VM", vm, "children"):
        store.update("VM", child, parent=record["parent"])
    for cls, field in (("VBD", "VBDs"), ("VIF", "VIFs"), ("console", "consoles")):
        for ref in store.children("VM", vm, field):
            store.destroy(cls, ref)
    store.destroy("VM_metrics", record["metrics"])
    store.destroy("VM_guest_metrics", record["guest_metrics"])
    store.destroy("VM", vm)


@api("VM.destroy", "r")
def vm_destroy(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "destroy", lambda: destroy_vm(call.store, vm), timed=False)
