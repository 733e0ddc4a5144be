"""VBDs and VIFs: creation rules, destruction, plugging, copying for clones.

VBD.create: ocaml/xapi/xapi_vbd.ml create (VDI type must be a disk type, CDs are
read-only, only CDs may be empty, no RW VBD on a read-only VDI, device must be valid
and unused: INVALID_DEVICE / DEVICE_ALREADY_EXISTS [device], "autodetect" picks the
first free one). VBD.destroy: xapi_vbd_helpers.ml destroy refuses an attached VBD
with OPERATION_NOT_ALLOWED. VIF.create: xapi_vif_helpers.ml create (device is an
unsigned integer, an empty MAC is generated from the VM's mac_seed, MAC_INVALID,
DEVICE_ALREADY_EXISTS). VIF.destroy: refused while attached to a running VM.
plug/unplug are modelled (hotplug always succeeds on a running VM).
"""

from __future__ import annotations

import hashlib
from typing import Any

from .engine import Call
from .errors import XapiError, bad_power_state
from .registry import CTORS, REQUIRED, Ctor, api
from .storage import update_vdi_operations
from .store import Store
from .wire import NULL_REF

DISK_TYPES = {"system", "user", "ephemeral", "suspend", "crashdump", "metadata", "rrd", "pvs_cache"}
MAX_VBD_DEVICE = 16
MAX_VIF_DEVICE = 7

CTORS["VBD"] = Ctor(
    {
        "VM": ("r", REQUIRED),
        "VDI": ("r", REQUIRED),
        "device": ("s", ""),
        "userdevice": ("s", REQUIRED),
        "bootable": ("b", REQUIRED),
        "mode": ("e:vbd_mode", REQUIRED),
        "type": ("e:vbd_type", REQUIRED),
        "unpluggable": ("b", True),
        "empty": ("b", REQUIRED),
        "other_config": ("m", REQUIRED),
        "currently_attached": ("b", False),
        "qos_algorithm_type": ("s", REQUIRED),
        "qos_algorithm_params": ("m", REQUIRED),
    }
)
CTORS["VIF"] = Ctor(
    {
        "device": ("s", REQUIRED),
        "network": ("r", REQUIRED),
        "VM": ("r", REQUIRED),
        "MAC": ("s", REQUIRED),
        "MTU": ("i", REQUIRED),
        "other_config": ("m", REQUIRED),
        "currently_attached": ("b", False),
        "qos_algorithm_type": ("s", REQUIRED),
        "qos_algorithm_params": ("m", REQUIRED),
        "locking_mode": ("e:vif_locking_mode", "network_default"),
        "ipv4_allowed": ("ss", list),
        "ipv6_allowed": ("ss", list),
    }
)


def used_vbd_devices(store: Store, vm: str) -> set[int]:
    out = set()
    for vbd in store.children("VM", vm, "VBDs"):
        text = store.get("VBD", vbd)["userdevice"]
        if text.isdigit():
            out.add(int(text))
    return out


def used_vif_devices(store: Store, vm: str) -> set[int]:
    return {int(store.get("VIF", v)["device"]) for v in store.children("VM", vm, "VIFs")}


def linux_device(userdevice: str) -> str:
    """VBD.device once attached: xvda for userdevice 0 and so on (modelled)."""
    return "xvd" + chr(ord("a") + int(userdevice)) if userdevice.isdigit() else userdevice


def vbd_device_valid(text: str) -> bool:
    """valid_device in xapi_vbd_helpers.ml, reduced to numbers and xvd?/hd? names."""
    if text == "autodetect" or text.isdigit():
        return True
    return len(text) in (3, 4) and text[:-1] in ("xvd", "hd", "sd") and text[-1].isalpha()


def create_vbd(store: Store, record: dict[str, Any]) -> str:
    vm = store.get("VM", record["VM"])
    if not record["empty"]:
        vdi = store.get("VDI", record["VDI"])
        if vdi["type"] not in DISK_TYPES:
            raise XapiError("VDI_INCOMPATIBLE_TYPE", record["VDI"], vdi["type"])
        if record["mode"] == "RW" and vdi["read_only"]:
            raise XapiError("VDI_READONLY", record["VDI"])
    if record["type"] == "CD" and record["mode"] != "RO":
        raise XapiError("VBD_CDS_MUST_BE_READONLY")
    if record["type"] != "CD" and record["empty"]:
        raise XapiError("VBD_NOT_REMOVABLE_MEDIA", "in constructor")
    device = record["userdevice"]
    if not vbd_device_valid(device):
        raise XapiError("INVALID_DEVICE", device)
    used = used_vbd_devices(store, record["VM"])
    if device == "autodetect":
        free = [n for n in range(MAX_VBD_DEVICE) if n not in used]
        if not free:
            raise XapiError("INVALID_DEVICE", device)
        device = str(free[0])
    elif device.isdigit() and int(device) in used:
        raise XapiError("DEVICE_ALREADY_EXISTS", device)
    suspended = vm["power_state"] == "Suspended"
    fields = {
        **record,
        "userdevice": device,
        "device": record["device"] if suspended else "",
        "currently_attached": record["currently_attached"] if suspended else False,
        "VDI": NULL_REF if record["empty"] else record["VDI"],
        "allowed_operations": ["attach"],
    }
    ref = store.create("VBD", fields)
    if not record["empty"]:
        update_vdi_operations(store, record["VDI"])
    return ref


def copy_vbd(store: Store, vbd: str, vm: str, vdi: str, owner: bool) -> str:
    """Xapi_vbd_helpers.copy; a clone's disks get other_config owner="" (CA-58405)."""
    src = store.get("VBD", vbd)
    other = dict(src["other_config"])
    if owner and src["type"] == "Disk":
        other.setdefault("owner", "")
    fields = {
        k: v
        for k, v in src.items()
        if k not in ("uuid", "VM", "VDI", "currently_attached", "allowed_operations")
        and k not in ("current_operations", "metrics")
    }
    fields.update(
        VM=vm,
        VDI=vdi,
        empty=src["empty"] or vdi == NULL_REF,
        other_config=other,
        currently_attached=False,
        allowed_operations=["attach"],
    )
    return store.create("VBD", fields)


def mac_from_seed(seed: str, device: int) -> str:
    """A MAC derived from the VM's mac_seed (xapi's gen_mac hashes seed and device; the
    exact bytes here differ), locally administered and unicast."""
    digest = hashlib.md5(f"{seed}/{device}".encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{b:02x}" for b in octets)


def valid_mac(mac: str) -> bool:
    """Helpers.is_valid_MAC: six colon-separated pairs of hex digits."""
    parts = mac.split(":")
    hexdigits = set("0123456789abcdefABCDEF")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= hexdigits for p in parts)


def create_vif(store: Store, record: dict[str, Any]) -> str:
    vm = store.get("VM", record["VM"])
    store.get("network", record["network"])
    device = record["device"]
    if not device.isdigit():
        raise XapiError("INVALID_DEVICE", device)
    mac, generated = record["MAC"], False
    seed = vm["other_config"].get("mac_seed")
    if seed is not None and mac == "":
        mac, generated = mac_from_seed(seed, int(device)), True
    if not valid_mac(mac):
        raise XapiError("MAC_INVALID", mac)
    if int(device) in used_vif_devices(store, record["VM"]):
        raise XapiError("DEVICE_ALREADY_EXISTS", device)
    fields = {
        **record,
        "MAC": mac,
        "MAC_autogenerated": generated,
        "currently_attached": False,
        "ipv4_configuration_mode": "None",
        "ipv6_configuration_mode": "None",
        "allowed_operations": ["attach"],
    }
    return store.create("VIF", fields)


def copy_vif(store: Store, vif: str, vm: str, preserve_mac: bool) -> str:
    """Xapi_vif_helpers.copy: a clone gets a new MAC from its own mac_seed."""
    src = store.get("VIF", vif)
    mac = src["MAC"]
    if not preserve_mac:
        seed = store.get("VM", vm)["other_config"].get("mac_seed", vm)
        mac = mac_from_seed(seed, int(src["device"]))
    fields = {
        k: v
        for k, v in src.items()
        if k not in ("uuid", "VM", "currently_attached", "current_operations", "metrics")
    }
    fields.update(VM=vm, MAC=mac, currently_attached=False, allowed_operations=["attach"])
    return store.create("VIF", fields)


def _mark_attached(store: Store, cls: str, ref: str, attached: bool) -> None:
    """A VBD or VIF (`cls`) becomes attached or detached: currently_attached, its
    allowed_operations, a VBD's device name and its VDI's allowed_operations."""
    record = store.get(cls, ref)
    extra = {}
    if cls == "VBD":
        extra["device"] = linux_device(record["userdevice"]) if attached else record["device"]
    ops = ["unplug", "unplug_force"] if attached else ["attach"]
    store.update(cls, ref, currently_attached=attached, allowed_operations=ops, **extra)
    if cls == "VBD" and record["VDI"] != NULL_REF:
        update_vdi_operations(store, record["VDI"])


def set_devices_attached(store: Store, vm: str, attached: bool) -> None:
    """Attach (start/resume) or detach (force_state_reset to Halted/Suspended) all VBDs
    and VIFs of a VM, as xapi_vm_lifecycle.ml force_state_reset does for detach."""
    for vbd in store.children("VM", vm, "VBDs"):
        if attached and store.get("VBD", vbd)["empty"]:
            continue
        _mark_attached(store, "VBD", vbd, attached)
    for vif in store.children("VM", vm, "VIFs"):
        _mark_attached(store, "VIF", vif, attached)


@api("VBD.create", "rec:VBD")
def vbd_create(call: Call, record: dict[str, Any]) -> str:
    return create_vbd(call.store, record)


@api("VBD.destroy", "r")
def vbd_destroy(call: Call, vbd: str) -> None:
    store = call.store
    record = store.get("VBD", vbd)
    if record["currently_attached"]:
        vm_uuid = store.get("VM", record["VM"])["uuid"]
        raise XapiError(
            "OPERATION_NOT_ALLOWED",
            f"VBD '{record['uuid']}' still attached to '{vm_uuid}'",
        )
    store.destroy("VBD", vbd)
    if store.exists("VDI", record["VDI"]):
        update_vdi_operations(store, record["VDI"])


def _plug(call: Call, cls: str, ref: str, attach: bool) -> None:
    store = call.store
    record = store.get(cls, ref)
    vm = store.get("VM", record["VM"])
    if vm["power_state"] != "Running":
        raise bad_power_state(record["VM"], ["Running"], vm["power_state"])
    if record["currently_attached"] == attach:
        raise XapiError("DEVICE_ALREADY_ATTACHED" if attach else "DEVICE_ALREADY_DETACHED", ref)
    _mark_attached(store, cls, ref, attach)


@api("VBD.plug", "r")
def vbd_plug(call: Call, vbd: str) -> None:
    _plug(call, "VBD", vbd, True)


@api("VBD.unplug", "r")
def vbd_unplug(call: Call, vbd: str) -> None:
    _plug(call, "VBD", vbd, False)


@api("VIF.create", "rec:VIF")
def vif_create(call: Call, record: dict[str, Any]) -> str:
    return create_vif(call.store, record)


@api("VIF.destroy", "r")
def vif_destroy(call: Call, vif: str) -> None:
    store = call.store
    record = store.get("VIF", vif)
    vm = store.all("VM").get(record["VM"])
    if vm and vm["power_state"] == "Running" and record["currently_attached"]:
        raise XapiError("OPERATION_NOT_ALLOWED", "VIF currently attached to a running VM")
    store.destroy("VIF", vif)


@api("VIF.plug", "r")
def vif_plug(call: Call, vif: str) -> None:
    _plug(call, "VIF", vif, True)


@api("VIF.unplug", "r")
def vif_unplug(call: Call, vif: str) -> None:
    _plug(call, "VIF", vif, False)
