"""Storage: SR space accounting and the VDI calls.

VDI.create/destroy follow ocaml/xapi/xapi_vdi.ml (create: cbt_metadata refused with
VDI_INCOMPATIBLE_TYPE; destroy: VDI_IN_USE [vdi; "destroy"] while a VBD is attached,
then its VBDs are destroyed and suspend_VDI references cleared). Space and size
rules are those of an SM LVHD ("lvm") SR, modelled: sizes round up to the 2 MiB VHD
block, a new or copied disk takes its full size (thick), a CoW clone or snapshot
takes COW_BYTES (real thick LVHD inflates leaves; not modelled); no space gives
SR_BACKEND_FAILURE_44 (see errors.sr_no_space); shrinking gives
SR_BACKEND_FAILURE_79 as LVHDSR's resize does (VDISize, opterr "shrinking not allowed").
"""

from __future__ import annotations

from typing import Any

from .engine import Call
from .errors import XapiError, sr_no_space
from .registry import CTORS, REQUIRED, Ctor, api
from .store import Store
from .tasks import Plan
from .wire import EPOCH, NULL_REF, now

MIB = 1024 * 1024
VHD_BLOCK = 2 * MIB
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
    return -(-size // VHD_BLOCK) * VHD_BLOCK


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
    "snapshot",
    "update",
]
_LIVE_OPS = ["clone", "snapshot"]


def update_vdi_operations(store: Store, vdi: str) -> None:
    """VDI.allowed_operations, simplified from xapi_vdi.ml check_operation_error: only the
    live-capable clone/snapshot while attached. Which ops an SR offers is not modelled."""
    if not store.exists("VDI", vdi):
        return
    record = store.get("VDI", vdi)
    if store.get("SR", record["SR"])["content_type"] == "iso":
        ops = ["forget", "update"]
    else:
        ops = _LIVE_OPS if attached_vbds(store, vdi) else _IDLE_OPS
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
        # Modelled: the ISO SM driver lacks VDI_CREATE (error text not verified).
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if fields["virtual_size"] < 0:
        raise XapiError("SR_BACKEND_FAILURE_79", "", "VDI Invalid size", "")
    size = round_size(fields["virtual_size"])
    assert_space(store, {sr: size})
    return new_vdi(store, {**fields, "virtual_size": size, "physical_utilisation": size})


def derive_vdi(store: Store, vdi: str, mode: str, sr: str | None = None) -> str:
    """A copy of `vdi`: mode "clone" (CoW, writable), "snapshot" (CoW, is_a_snapshot)
    or "copy" (full copy into `sr`). The caller has checked the space."""
    src = store.get("VDI", vdi)
    target = sr or src["SR"]
    full = mode == "copy"
    fields = {
        "name_label": src["name_label"],
        "name_description": src["name_description"],
        "SR": target,
        "virtual_size": src["virtual_size"],
        "physical_utilisation": src["virtual_size"] if full else COW_BYTES,
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


def space_needed(store: Store, vdis: list[str], mode: str, sr: str | None = None) -> dict[str, int]:
    needs: dict[str, int] = {}
    for vdi in vdis:
        record = store.get("VDI", vdi)
        target = sr or record["SR"]
        amount = record["virtual_size"] if mode == "copy" else COW_BYTES
        needs[target] = needs.get(target, 0) + amount
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


@api("VDI.resize", "r", "i")
def vdi_resize(call: Call, vdi: str, size: int) -> None:
    store = call.store
    record = store.get("VDI", vdi)
    if attached_vbds(store, vdi):
        raise XapiError("VDI_IN_USE", vdi, "resize")
    new_size = round_size(size)
    if new_size < record["virtual_size"]:
        raise XapiError(
            "SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", ""
        )
    grow = new_size - record["virtual_size"]
    assert_space(store, {record["SR"]: grow})
    store.update(
        "VDI",
        vdi,
        virtual_size=new_size,
        physical_utilisation=record["physical_utilisation"] + grow,
    )
    refresh_sr(store, record["SR"])


@api("SR.scan", "r")
def sr_scan(call: Call, sr: str) -> None:
    """Nothing to discover: the simulator's SRs hold only what the API made."""
    call.store.get("SR", sr)
    refresh_sr(call.store, sr)
