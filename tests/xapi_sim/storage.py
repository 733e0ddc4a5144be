"""Storage: SR space accounting and the VDI calls.

VDI.create/destroy follow ocaml/xapi/xapi_vdi.ml (create: cbt_metadata refused with
VDI_INCOMPATIBLE_TYPE; destroy: VDI_IN_USE [vdi; "destroy"] while a VBD is attached,
then its VBDs are destroyed and suspend_VDI references cleared). Sizes follow the SM's
VHD rules (xapi-project/sm libs/sm/vhdutil.py validate_and_round_vhd_size: at least
2 MiB, rounded up to the 2 MiB VHD block, at most 2040 GiB, else VDISize, error 79).
No space gives SR_BACKEND_FAILURE_44 (see errors.sr_no_space).

Space, by how the SR allocates (sm.is_thin):
- thick (LVHDSR, "lvm" as XCP-ng installs its local storage): a new or copied disk
  takes its full size; a CoW clone or snapshot takes COW_BYTES (real thick LVHD
  inflates leaves; not modelled); growing a disk takes the bytes it grows by, checked
  first (LVHDVDI.resize: _ensureSpaceAvailable(lvSizeNew - lvSizeOld), SRNoSpace).
- thin (EXTSR/FileSR VHD files, LVHD with allocation=thin): a new disk takes nothing
  until written (its VHD metadata is not modelled), an upload takes what it writes, a
  copy what its source holds; growing a disk takes nothing and is not checked
  (FileVDI.resize and thin LVHDVDI.resize make no space check).

VDI.resize and VDI.resize_online: see resize_vdi below.
"""

from __future__ import annotations

from typing import Any

from .engine import Call
from .errors import XapiError, sr_no_space
from .registry import CTORS, REQUIRED, Ctor, api
from .sm import VDI_OPERATION_FEATURE, features_of_sr, is_thin, update_sr_operations
from .store import Store
from .tasks import Plan
from .wire import EPOCH, NULL_REF, now

MIB = 1024 * 1024
VHD_BLOCK = 2 * MIB
MAX_VHD_SIZE = 2040 * 1024 * MIB
COW_BYTES = 8 * MIB

CTORS["VDI"] = Ctor(
    {
        "name_label": ("s", ""),
        "name_description": ("s", ""),
        "SR": ("r", REQUIRED),
        "virtual_size": ("i", REQUIRED),
        "type": ("e:vdi_type", REQUIRED),
        "sharable": ("b", REQUIRED),
        "read_only": ("b", REQUIRED),
        "other_config": ("m", REQUIRED),
        "xenstore_data": ("m", dict),
        "sm_config": ("m", dict),
        "tags": ("ss", list),
    }
)


def round_size(size: int) -> int:
    return max(VHD_BLOCK, -(-size // VHD_BLOCK) * VHD_BLOCK)


def invalid_size(detail: str = "") -> XapiError:
    """The SM's VDISize (error 79, "VDI Invalid size"), as sm_exec.ml passes it on."""
    reason = f"VDI Invalid size [opterr={detail}]" if detail else "VDI Invalid size"
    return XapiError("SR_BACKEND_FAILURE_79", "", reason, "")


def vhd_size(size: int) -> int:
    """vhdutil.validate_and_round_vhd_size."""
    if size < 0 or size > MAX_VHD_SIZE:
        raise invalid_size(f"VDI size must be between 1 MB and {MAX_VHD_SIZE // MIB} MB")
    return round_size(size)


def sr_free(store: Store, sr: str) -> int:
    record = store.get("SR", sr)
    used = sum(v["physical_utilisation"] for v in store.all("VDI").values() if v["SR"] == sr)
    return record["physical_size"] - used


def refresh_sr(store: Store, sr: str) -> None:
    """SR.virtual_allocation / physical_utilisation after VDIs changed (xapi refreshes
    these from SM scans; the simulator keeps them exact)."""
    if not store.exists("SR", sr):
        return
    vdis = [v for v in store.all("VDI").values() if v["SR"] == sr]
    virtual = sum(v["virtual_size"] for v in vdis)
    physical = sum(v["physical_utilisation"] for v in vdis)
    record = store.get("SR", sr)
    if (record["virtual_allocation"], record["physical_utilisation"]) != (virtual, physical):
        store.update("SR", sr, virtual_allocation=virtual, physical_utilisation=physical)
    update_sr_operations(store, sr)


def assert_space(store: Store, needs: dict[str, int]) -> None:
    for sr, amount in needs.items():
        if amount > sr_free(store, sr):
            raise sr_no_space()


def attached_vbds(store: Store, vdi: str) -> list[str]:
    return [
        r for r in store.children("VDI", vdi, "VBDs") if store.get("VBD", r)["currently_attached"]
    ]


_IDLE_OPS = [
    "clone",
    "copy",
    "destroy",
    "forget",
    "generate_config",
    "resize",
    "resize_online",
    "snapshot",
    "update",
]
_LIVE_OPS = ["clone", "snapshot", "resize_online"]


def update_vdi_operations(store: Store, vdi: str) -> None:
    """VDI.allowed_operations, simplified from xapi_vdi.ml check_operation_error: while
    attached only what can be done live (operation_can_be_performed_live), and only
    what the SR's SM has the feature for (check_sm_feature_error)."""
    if not store.exists("VDI", vdi):
        return
    record = store.get("VDI", vdi)
    if store.get("SR", record["SR"])["content_type"] == "iso":
        ops = ["forget", "update"]
    else:
        features = features_of_sr(store, record["SR"])
        ops = [
            op
            for op in (_LIVE_OPS if attached_vbds(store, vdi) else _IDLE_OPS)
            if VDI_OPERATION_FEATURE[op] is None or VDI_OPERATION_FEATURE[op] in features
        ]
    if record["allowed_operations"] != ops:
        store.update("VDI", vdi, allowed_operations=list(ops))


def new_vdi(store: Store, fields: dict[str, Any]) -> str:
    base = {"managed": True, "on_boot": "persist", "snapshot_time": EPOCH}
    base.update(fields)
    ref = store.create("VDI", base)
    store.update("VDI", ref, location=store.get("VDI", ref)["uuid"])
    update_vdi_operations(store, ref)
    refresh_sr(store, base["SR"])
    return ref


def create_vdi(store: Store, fields: dict[str, Any]) -> str:
    """VDI.create with the SR's checks; returns the new ref."""
    sr = fields["SR"]
    sr_record = store.get("SR", sr)
    if fields["type"] == "cbt_metadata":
        raise XapiError("VDI_INCOMPATIBLE_TYPE", "", "cbt_metadata")
    if sr_record["content_type"] == "iso":
        # The tools SR: xapi_sr_operations.ml check_sm_features takes VDI_CREATE away.
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if fields["virtual_size"] < 0:
        raise invalid_size()
    size = vhd_size(fields["virtual_size"])
    used = 0 if is_thin(store, sr) else size
    assert_space(store, {sr: used})
    return new_vdi(store, {**fields, "virtual_size": size, "physical_utilisation": used})


def derive_vdi(store: Store, vdi: str, mode: str, sr: str | None = None) -> str:
    """A copy of `vdi`: mode "clone" (CoW, writable), "snapshot" (CoW, is_a_snapshot)
    or "copy" (full copy into `sr`). The caller has checked the space."""
    src = store.get("VDI", vdi)
    target = sr or src["SR"]
    fields = {
        "name_label": src["name_label"],
        "name_description": src["name_description"],
        "SR": target,
        "virtual_size": src["virtual_size"],
        "physical_utilisation": _taken(store, src, mode, target),
        "type": src["type"],
        "sharable": src["sharable"],
        "read_only": src["read_only"] if mode == "snapshot" else False,
        "other_config": dict(src["other_config"]),
        "sm_config": dict(src["sm_config"]),
        "xenstore_data": dict(src["xenstore_data"]),
        "tags": list(src["tags"]),
    }
    if mode == "snapshot":
        fields.update(is_a_snapshot=True, snapshot_of=vdi, snapshot_time=now())
    return new_vdi(store, fields)


def _taken(store: Store, src: dict[str, Any], mode: str, target: str) -> int:
    """What a copy ("copy") or CoW child ("clone", "snapshot") of `src` takes in `target`."""
    if mode != "copy":
        return COW_BYTES
    return int(src["physical_utilisation"]) if is_thin(store, target) else int(src["virtual_size"])


def space_needed(store: Store, vdis: list[str], mode: str, sr: str | None = None) -> dict[str, int]:
    needs: dict[str, int] = {}
    for vdi in vdis:
        record = store.get("VDI", vdi)
        target = sr or record["SR"]
        needs[target] = needs.get(target, 0) + _taken(store, record, mode, target)
    return needs


def destroy_vdi(store: Store, vdi: str) -> None:
    """VDI.destroy (destroy_and_data_destroy_common in xapi_vdi.ml)."""
    record = store.get("VDI", vdi)
    if attached_vbds(store, vdi):
        raise XapiError("VDI_IN_USE", vdi, "destroy")
    for vbd in store.children("VDI", vdi, "VBDs"):
        store.destroy("VBD", vbd)
    store.destroy("VDI", vdi)
    for vm_ref, vm in list(store.all("VM").items()):
        if vm["suspend_VDI"] == vdi:
            store.update("VM", vm_ref, suspend_VDI=NULL_REF)
    refresh_sr(store, record["SR"])


@api("VDI.create", "rec:VDI")
def vdi_create(call: Call, record: dict[str, Any]) -> str:
    return create_vdi(call.store, record)


@api("VDI.destroy", "r")
def vdi_destroy(call: Call, vdi: str) -> None:
    call.store.get("VDI", vdi)
    destroy_vdi(call.store, vdi)


def _derive_plan(call: Call, vdi: str, mode: str, sr: str | None, timed: bool) -> Plan:
    store = call.store
    store.get("VDI", vdi)
    if sr is not None:
        store.get("SR", sr)

    def apply() -> str:
        rw = [v for v in attached_vbds(store, vdi) if store.get("VBD", v)["mode"] == "RW"]
        if mode == "copy" and rw:
            raise XapiError("VDI_IN_USE", vdi, mode)
        assert_space(store, space_needed(store, [vdi], mode, sr))
        return derive_vdi(store, vdi, mode, sr)

    return Plan(apply, cancellable=True, timed=timed)


@api("VDI.clone", "r", optional=(("driver_params", {}),))
def vdi_clone(call: Call, vdi: str, *_: Any) -> Plan:
    return _derive_plan(call, vdi, "clone", None, timed=False)


@api("VDI.snapshot", "r", optional=(("driver_params", {}),))
def vdi_snapshot(call: Call, vdi: str, *_: Any) -> Plan:
    return _derive_plan(call, vdi, "snapshot", None, timed=False)


@api("VDI.copy", "r", "r", optional=(("base_vdi", NULL_REF), ("into_vdi", NULL_REF)))
def vdi_copy(call: Call, vdi: str, sr: str, *_: Any) -> Plan:
    return _derive_plan(call, vdi, "copy", sr, timed=True)


def resize_vdi(store: Store, vdi: str, size: int, *, online: bool) -> None:
    """VDI.resize (online=False) or VDI.resize_online, checked in the order xapi checks.

    message_forwarding.ml resize/resize_online: with_sr_andor_vdi marks the SR for
    `vdi_resize` first (xapi_sr_operations.ml: SR_OPERATION_NOT_SUPPORTED [sr] unless
    the SM has VDI_RESIZE, for both calls), then the VDI for `resize` or
    `resize_online` (xapi_vdi.ml check_operation_error: `resize` wants an attached PBD,
    SR_NO_PBDS [sr], and no attached VBD, VDI_IN_USE [vdi; "resize"];
    `resize_online` may be done live, so a running VM's disk is not in use for it;
    then the SM feature of the op, VDI_RESIZE or VDI_RESIZE_ONLINE,
    SR_OPERATION_NOT_SUPPORTED [sr]; a cbt_metadata VDI, VDI_INCOMPATIBLE_TYPE).
    xapi_vdi.ml resize (resize_online is the same function): assert_managed
    (VDI_NOT_MANAGED [vdi]), then the SM's resize: LVHDVDI.resize and FileVDI.resize
    refuse a smaller size before rounding ("shrinking not allowed", VDISize), round it
    (vhd_size), change nothing for the same size, and check the space a thick SR needs
    (see the module's docstring). The SM sets virtual_size and physical_utilisation.
    """
    record = store.get("VDI", vdi)
    sr = record["SR"]
    features = features_of_sr(store, sr)
    if "VDI_RESIZE" not in features:
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if not online:
        plugged = any(p["SR"] == sr and p["currently_attached"] for p in store.all("PBD").values())
        if not plugged:
            raise XapiError("SR_NO_PBDS", sr)
        if attached_vbds(store, vdi):
            raise XapiError("VDI_IN_USE", vdi, "resize")
    if online and "VDI_RESIZE_ONLINE" not in features:
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if record["type"] == "cbt_metadata":
        raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")
    if not record["managed"]:
        raise XapiError("VDI_NOT_MANAGED", vdi)
    if size < record["virtual_size"]:
        raise invalid_size("shrinking not allowed")
    new_size = vhd_size(size)
    if new_size == record["virtual_size"]:
        return
    grow = 0 if is_thin(store, sr) else new_size - record["virtual_size"]
    assert_space(store, {sr: grow})
    store.update(
        "VDI",
        vdi,
        virtual_size=new_size,
        physical_utilisation=record["physical_utilisation"] + grow,
    )
    refresh_sr(store, sr)


@api("VDI.resize", "r", "i")
def vdi_resize(call: Call, vdi: str, size: int) -> None:
    resize_vdi(call.store, vdi, size, online=False)


@api("VDI.resize_online", "r", "i")
def vdi_resize_online(call: Call, vdi: str, size: int) -> None:
    resize_vdi(call.store, vdi, size, online=True)


@api("SR.scan", "r")
def sr_scan(call: Call, sr: str) -> None:
    """Nothing to discover: the simulator's SRs hold only what the API made."""
    call.store.get("SR", sr)
    refresh_sr(call.store, sr)
