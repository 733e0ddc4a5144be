"""VM settings: vCPUs, memory, template flag, blocked operations and the like.

vCPUs: ocaml/xapi/xapi_vm.ml set_VCPUs_max (op changing_VCPUs, so Halted only;
1 <= n and n >= VCPUs_at_startup else INVALID_VALUE), set_VCPUs_at_startup (no
power-state check at all, despite its doc string "for a halted VM"; 1..VCPUs_max),
set_VCPUs_number_live (op changing_VCPUs_live; feature Live_set_vcpus else
LICENCE_RESTRICTION; xapi_xenops.ml set_vcpus: INVALID_VALUE unless
0 < n <= VCPUs_max; sets VCPUs_at_startup and VM_metrics.VCPUs_number).
Memory: xapi_vm.ml set_memory_dynamic_range (op changing_dynamic_range: Halted or
Running; target := min), set_memory_static_range (op changing_static_range),
set_memory_limits and set_memory (op changing_memory_limits); message_forwarding.ml
turns set_memory_dynamic_min/max into dynamic_range and static_min/max into
static_range, and reserves host memory when a running VM's dynamic_min grows
(HOST_NOT_ENOUGH_FREE_MEMORY in KiB there).
"""

from __future__ import annotations

from typing import Any

from .devices import MAX_VIF_DEVICE, used_vbd_devices, used_vif_devices
from .engine import Call
from .errors import XapiError, handle_invalid
from .lifecycle import assert_operation_valid, begin_operation, update_allowed_operations
from .memory import assert_constraints, free_for_start, refresh_host_metrics, set_overhead
from .registry import api
from .schema import ENUMS
from .wire import now, parse_enum

VCPU_ORDER = "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max"
VCPU_LIVE = "VCPU values must satisfy: 0 < VCPUs ≤ VCPUs_max"


def _with_op(call: Call, vm: str, op: str) -> Any:
    call.store.get("VM", vm)
    return begin_operation(call.store, vm, op, call.op_key)


@api("VM.set_VCPUs_max", "r", "i")
def set_vcpus_max(call: Call, vm: str, value: int) -> None:
    done = _with_op(call, vm, "changing_VCPUs")
    try:
        record = call.store.get("VM", vm)
        if value < 1 or value < record["VCPUs_at_startup"]:
            raise XapiError("INVALID_VALUE", VCPU_ORDER, value)
        call.store.update("VM", vm, VCPUs_max=value)
        set_overhead(call.store, vm)
    finally:
        done()


@api("VM.set_VCPUs_at_startup", "r", "i")
def set_vcpus_at_startup(call: Call, vm: str, value: int) -> None:
    record = call.store.get("VM", vm)
    if record["is_control_domain"] and record["domid"] == 0:
        raise XapiError("OPERATION_NOT_ALLOWED", "set_VCPUs_at_startup is not allowed on dom0")
    if value < 1 or value > record["VCPUs_max"]:
        raise XapiError("INVALID_VALUE", VCPU_ORDER, value)
    call.store.update("VM", vm, VCPUs_at_startup=value)
    set_overhead(call.store, vm)


@api("VM.set_VCPUs_number_live", "r", "i")
def set_vcpus_number_live(call: Call, vm: str, nvcpu: int) -> None:
    done = _with_op(call, vm, "changing_VCPUs_live")
    try:
        if not call.engine.feature("Live_set_vcpus"):
            raise XapiError("LICENCE_RESTRICTION", "Live_set_vcpus")
        record = call.store.get("VM", vm)
        if nvcpu < 1 or nvcpu > record["VCPUs_max"]:
            raise XapiError("INVALID_VALUE", VCPU_LIVE, nvcpu)
        call.store.update("VM", vm, VCPUs_at_startup=nvcpu)
        if call.store.exists("VM_metrics", record["metrics"]):
            call.store.update("VM_metrics", record["metrics"], VCPUs_number=nvcpu)
    finally:
        done()


def _dynamic_range(call: Call, vm: str, low: int, high: int) -> None:
    store = call.store
    done = _with_op(call, vm, "changing_dynamic_range")
    try:
        record = store.get("VM", vm)
        smin, smax = record["memory_static_min"], record["memory_static_max"]
        assert_constraints(call.engine, record, smin, low, high, smax)
        if record["power_state"] == "Running":
            available = free_for_start(store, record["resident_on"])
            growth = low - record["memory_dynamic_min"]
            if available - growth < 0:
                raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", growth // 1024, available // 1024)
        store.update("VM", vm, memory_target=low, memory_dynamic_min=low, memory_dynamic_max=high)
        if record["power_state"] == "Running" and store.exists("VM_metrics", record["metrics"]):
            # Modelled: the balloon reaches dynamic_max when the host has room.
            store.update("VM_metrics", record["metrics"], memory_actual=high, last_updated=now())
            refresh_host_metrics(store)
    finally:
        done()


@api("VM.set_memory_dynamic_range", "r", "i", "i")
def set_memory_dynamic_range(call: Call, vm: str, low: int, high: int) -> None:
    _dynamic_range(call, vm, low, high)


@api("VM.set_memory_dynamic_min", "r", "i")
def set_memory_dynamic_min(call: Call, vm: str, value: int) -> None:
    _dynamic_range(call, vm, value, call.store.get("VM", vm)["memory_dynamic_max"])


@api("VM.set_memory_dynamic_max", "r", "i")
def set_memory_dynamic_max(call: Call, vm: str, value: int) -> None:
    _dynamic_range(call, vm, call.store.get("VM", vm)["memory_dynamic_min"], value)


def _static_range(call: Call, vm: str, low: int, high: int) -> None:
    done = _with_op(call, vm, "changing_static_range")
    try:
        record = call.store.get("VM", vm)
        dmin, dmax = record["memory_dynamic_min"], record["memory_dynamic_max"]
        assert_constraints(call.engine, record, low, dmin, dmax, high)
        call.store.update("VM", vm, memory_static_min=low, memory_static_max=high)
        set_overhead(call.store, vm)
    finally:
        done()


@api("VM.set_memory_static_range", "r", "i", "i")
def set_memory_static_range(call: Call, vm: str, low: int, high: int) -> None:
    _static_range(call, vm, low, high)


@api("VM.set_memory_static_min", "r", "i")
def set_memory_static_min(call: Call, vm: str, value: int) -> None:
    _static_range(call, vm, value, call.store.get("VM", vm)["memory_static_max"])


@api("VM.set_memory_static_max", "r", "i")
def set_memory_static_max(call: Call, vm: str, value: int) -> None:
    _static_range(call, vm, call.store.get("VM", vm)["memory_static_min"], value)


def _limits(call: Call, vm: str, smin: int, smax: int, dmin: int, dmax: int) -> None:
    done = _with_op(call, vm, "changing_memory_limits")
    try:
        assert_constraints(call.engine, call.store.get("VM", vm), smin, dmin, dmax, smax)
        call.store.update(
            "VM",
            vm,
            memory_static_min=smin,
            memory_static_max=smax,
            memory_dynamic_min=dmin,
            memory_dynamic_max=dmax,
            memory_target=dmin,
        )
        set_overhead(call.store, vm)
    finally:
        done()


@api("VM.set_memory_limits", "r", "i", "i", "i", "i")
def set_memory_limits(call: Call, vm: str, smin: int, smax: int, dmin: int, dmax: int) -> None:
    _limits(call, vm, smin, smax, dmin, dmax)


@api("VM.set_memory", "r", "i")
def set_memory(call: Call, vm: str, value: int) -> None:
    """xapi_vm.ml set_memory: static_max = dynamic_min = dynamic_max = value."""
    smin = call.store.get("VM", vm)["memory_static_min"]
    _limits(call, vm, smin, value, value, value)


@api("VM.set_is_a_template", "r", "b")
def set_is_a_template(call: Call, vm: str, value: bool) -> None:
    """message_forwarding.ml: making a template is op make_into_template (Halted)."""
    store = call.store
    store.get("VM", vm)
    done = begin_operation(store, vm, "make_into_template", call.op_key) if value else None
    try:
        if value:
            store.update("VM", vm, ha_always_run=False)
        else:
            metrics = store.get("VM", vm)["metrics"]
            if store.exists("VM_metrics", metrics):
                store.update("VM_metrics", metrics, install_time=now())
        store.update("VM", vm, is_a_template=value)
        update_allowed_operations(store, vm)
    finally:
        if done:
            done()


@api("VM.set_HVM_boot_policy", "r", "s")
def set_hvm_boot_policy(call: Call, vm: str, value: str) -> None:
    """xapi_vm.ml set_HVM_boot_policy also derives domain_type (hvm unless empty)."""
    call.store.get("VM", vm)
    call.store.update("VM", vm, HVM_boot_policy=value, domain_type="hvm" if value else "pv")


@api("VM.set_HVM_shadow_multiplier", "r", "f")
def set_hvm_shadow_multiplier(call: Call, vm: str, value: float) -> None:
    done = _with_op(call, vm, "changing_shadow_memory")
    try:
        call.store.update("VM", vm, HVM_shadow_multiplier=value)
    finally:
        done()


@api("VM.set_NVRAM", "r", "m")
def set_nvram(call: Call, vm: str, value: dict[str, str]) -> None:
    done = _with_op(call, vm, "changing_NVRAM")
    try:
        call.store.update("VM", vm, NVRAM=value)
    finally:
        done()


def _blocked(call: Call, vm: str, value: dict[str, str]) -> None:
    call.store.update("VM", vm, blocked_operations=value)
    update_allowed_operations(call.store, vm)


@api("VM.set_blocked_operations", "r", "m")
def set_blocked_operations(call: Call, vm: str, value: dict[str, str]) -> None:
    call.store.get("VM", vm)
    for key in value:
        parse_enum(key, ENUMS["vm_operations"], "vm_operations")
    _blocked(call, vm, dict(value))


@api("VM.add_to_blocked_operations", "r", "e:vm_operations", "s")
def add_to_blocked_operations(call: Call, vm: str, key: str, value: str) -> None:
    current = dict(call.store.get("VM", vm)["blocked_operations"])
    if key in current:
        raise XapiError("MAP_DUPLICATE_KEY", "VM", "blocked_operations", vm, key)
    current[key] = value
    _blocked(call, vm, current)


@api("VM.remove_from_blocked_operations", "r", "e:vm_operations")
def remove_from_blocked_operations(call: Call, vm: str, key: str) -> None:
    current = dict(call.store.get("VM", vm)["blocked_operations"])
    current.pop(key, None)
    _blocked(call, vm, current)


@api("VM.assert_operation_valid", "r", "e:vm_operations")
def vm_assert_operation_valid(call: Call, vm: str, op: str) -> None:
    call.store.get("VM", vm)
    assert_operation_valid(call.store, vm, op)


@api("VM.update_allowed_operations", "r")
def vm_update_allowed_operations(call: Call, vm: str) -> None:
    call.store.get("VM", vm)
    update_allowed_operations(call.store, vm)


@api("VM.get_allowed_VBD_devices", "r", async_ok=False)
def vm_allowed_vbd_devices(call: Call, vm: str) -> list[str]:
    """Unused userdevice numbers (the simulator offers 0..15 for every domain type)."""
    used = used_vbd_devices(call.store, vm)
    return [str(n) for n in range(16) if n not in used]


@api("VM.get_allowed_VIF_devices", "r", async_ok=False)
def vm_allowed_vif_devices(call: Call, vm: str) -> list[str]:
    used = used_vif_devices(call.store, vm)
    return [str(n) for n in range(MAX_VIF_DEVICE) if n not in used]


@api("VM.compute_memory_overhead", "r")
def vm_compute_memory_overhead(call: Call, vm: str) -> int:
    from .memory import overhead

    return overhead(call.store.get("VM", vm))


@api("host.compute_free_memory", "r")
def host_compute_free_memory(call: Call, host: str) -> int:
    call.store.get("host", host)
    metrics = call.store.get("host", host)["metrics"]
    if not call.store.exists("host_metrics", metrics):
        raise handle_invalid("host_metrics", metrics)
    return call.store.get("host_metrics", metrics)["memory_free"]
