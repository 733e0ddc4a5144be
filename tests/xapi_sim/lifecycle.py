"""Which VM operation is allowed when: the rules of ocaml/xapi/xapi_vm_lifecycle.ml.

check_operation_error below follows that file's check_operation_error in order
(blocked, power state, concurrency, template, snapshot, provision/revert,
mobility, nested virt, control domain, guest features, quiesce, VDI on_boot);
checks for hardware the simulator has no model of (PCI, vGPU, VUSB, appliance,
protection policy, rolling upgrade, vTPM) are left out.
allowed_operations is computed the same way as update_allowed_operations there:
every vm_operation minus `ignored_ops`, checked with strict=true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import XapiError, bad_power_state
from .schema import ENUMS
from .store import Store

ALL_STATES = ["Halted", "Paused", "Suspended", "Running"]

_POWER: dict[str, list[str]] = {}
for _op in ("changing_shadow_memory", "changing_NVRAM", "make_into_template", "provision"):
    _POWER[_op] = ["Halted"]
for _op in ("start", "start_on", "create_vtpm"):
    _POWER[_op] = ["Halted"]
_POWER["unpause"] = ["Paused"]
for _op in ("csvm", "resume", "resume_on"):
    _POWER[_op] = ["Suspended"]
for _op in (
    "awaiting_memory_live",
    "call_plugin",
    "clean_reboot",
    "clean_shutdown",
    "changing_memory_live",
    "changing_shadow_memory_live",
    "changing_VCPUs_live",
    "data_source_op",
    "pause",
    "pool_migrate",
    "send_sysrq",
    "send_trigger",
    "snapshot_with_quiesce",
    "sysprep",
    "suspend",
):
    _POWER[_op] = ["Running"]
_POWER["changing_dynamic_range"] = ["Halted", "Running"]
for _op in ("create_template", "destroy", "export"):
    _POWER[_op] = ["Halted", "Suspended"]
_POWER["hard_reboot"] = ["Paused", "Running"]
for _op in ("checkpoint", "get_boot_record", "shutdown", "hard_shutdown"):
    _POWER[_op] = ["Paused", "Suspended", "Running"]
_POWER["migrate_send"] = ["Halted", "Suspended", "Running"]
for _op in (
    "assert_operation_valid",
    "metadata_export",
    "power_state_reset",
    "revert",
    "reverting",
    "snapshot",
    "update_allowed_operations",
    "query_services",
):
    _POWER[_op] = list(ALL_STATES)
_POWER["import"] = []

IGNORED_OPS = {
    "create_template",
    "power_state_reset",
    "csvm",
    "get_boot_record",
    "send_sysrq",
    "send_trigger",
    "query_services",
    "shutdown",
    "call_plugin",
    "changing_memory_live",
    "awaiting_memory_live",
    "changing_memory_limits",
    "changing_shadow_memory_live",
    "changing_VCPUs",
    "assert_operation_valid",
    "data_source_op",
    "update_allowed_operations",
    "import",
    "reverting",
}
ALLOWABLE_OPS = [op for op in ENUMS["vm_operations"] if op not in IGNORED_OPS]

_TEMPLATE_OPS = {
    "changing_dynamic_range",
    "changing_static_range",
    "changing_memory_limits",
    "changing_shadow_memory",
    "changing_VCPUs",
    "changing_NVRAM",
    "clone",
    "copy",
    "export",
    "metadata_export",
    "provision",
}
_SNAPSHOT_OPS = {"revert", "clone", "copy", "export", "destroy", "hard_shutdown", "metadata_export"}
_CONTROL_DOMAIN_OPS = {
    "data_source_op",
    "changing_memory_live",
    "awaiting_memory_live",
    "metadata_export",
    "changing_dynamic_range",
    "changing_memory_limits",
    "changing_static_range",
    "start",
    "start_on",
    "changing_VCPUs",
    "destroy",
}


def truthy(value: str | None) -> bool:
    """bool_of_assoc in xapi_vm_lifecycle.ml: "1" or "true" (any case)."""
    return value is not None and (value == "1" or value.lower() == "true")


def allowed_power_states(vm: dict[str, Any], op: str) -> list[str]:
    """allowed_power_states in xapi_vm_lifecycle.ml."""
    if op in ("changing_VCPUs", "changing_static_range", "changing_memory_limits"):
        return ["Halted", "Running"] if vm["is_control_domain"] else ["Halted"]
    if op in ("clone", "copy"):
        return ["Halted", "Suspended"] if vm["is_a_snapshot"] else ["Halted"]
    return _POWER[op]


def is_allowed_concurrently(op: str, current: list[str]) -> bool:
    """is_allowed_concurrently in xapi_vm_lifecycle.ml."""

    def aux(ops: set[str]) -> bool:
        return op in ops and all(o in ops for o in current)

    if aux({"clone", "copy", "export"}) or aux({"snapshot", "checkpoint"}):
        return True
    if aux({"get_boot_record"}):
        return True
    if op == "hard_shutdown":
        return "hard_shutdown" not in current
    if op == "hard_reboot":
        return not any(o in ("hard_shutdown", "hard_reboot") for o in current)
    pairs = [
        (["snapshot_with_quiesce"], "snapshot"),
        (["migrate_send"], "metadata_export"),
        (["migrate_send"], "clean_shutdown"),
        (["migrate_send"], "clean_reboot"),
    ]
    return any(state == current and transition == op for state, transition in pairs)


def is_default_template(vm: dict[str, Any]) -> bool:
    return vm["is_default_template"] or truthy(vm["other_config"].get("default_template"))


def is_dom0(vm: dict[str, Any]) -> bool:
    return vm["is_control_domain"] and vm["domid"] == 0


def _guest(store: Store, vm: dict[str, Any]) -> dict[str, Any] | None:
    return store.all("VM_guest_metrics").get(vm["guest_metrics"])


def has_pv_drivers(gm: dict[str, Any] | None) -> bool:
    """Xapi_pv_driver_version.of_guest_metrics: known iff PV_drivers_version has
    integer major and minor."""
    if gm is None:
        return False
    version = gm["PV_drivers_version"]
    try:
        int(version["major"])
        int(version["minor"])
    except (KeyError, ValueError):
        return False
    return True


def _feature_error(
    store: Store, ref: str, vm: dict[str, Any], op: str, strict: bool
) -> XapiError | None:
    """check_op_for_feature in xapi_vm_lifecycle.ml."""
    gm = _guest(store, vm)
    other = gm["other"] if gm else {}
    live = vm["power_state"] in ("Running", "Paused")
    metrics = store.all("VM_metrics").get(vm["metrics"])
    booted_pv = bool(metrics) and metrics["current_domain_type"] in ("pv", "pvh", "pv_in_pvh")
    implicit = not live or booted_pv or has_pv_drivers(gm)

    def lacks(feature: str) -> bool:
        return other.get(feature) != "1"

    if op in ("suspend", "checkpoint", "pool_migrate", "migrate_send") and live:
        reason = other.get("data-cant-suspend-reason")
        if reason is not None:
            return XapiError("VM_NON_SUSPENDABLE", ref, reason)
        if not implicit and strict and lacks("feature-suspend"):
            return XapiError("VM_LACKS_FEATURE", ref)
        return None
    if implicit:
        return None
    alternative = {"clean_shutdown": "feature-poweroff", "clean_reboot": "feature-reboot"}
    if op in alternative and strict and lacks("feature-shutdown") and lacks(alternative[op]):
        return XapiError("VM_LACKS_FEATURE", ref)
    if op == "changing_VCPUs_live" and lacks("feature-vcpu-hotplug"):
        return XapiError("VM_LACKS_FEATURE", ref)
    return None


def _platform_flag(vm: dict[str, Any], key: str) -> bool:
    return truthy(vm["platform"].get(key))


def check_operation_error(store: Store, ref: str, op: str, strict: bool = True) -> XapiError | None:
    """The first reason `op` may not run on VM `ref` now, or None."""
    vm = store.get("VM", ref)
    if op in vm["blocked_operations"]:
        return XapiError("OPERATION_BLOCKED", ref, vm["blocked_operations"][op])
    if vm["power_state"] not in allowed_power_states(vm, op):
        return bad_power_state(ref, allowed_power_states(vm, op), vm["power_state"])
    current = vm["current_operations"]
    if current and not is_allowed_concurrently(op, list(current.values())):
        items = list(current.items())
        if len(items) == 1:
            task, running = items[0]
        else:
            task = "{" + ",".join(k for k, _ in items) + "}"
            running = "{" + ",".join(v for _, v in items) + "}"
        return XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", ref, running, task)
    if vm["is_a_template"] and not vm["is_a_snapshot"]:
        allowed = op in _TEMPLATE_OPS or (
            op in ("destroy", "migrate_send") and not is_default_template(vm)
        )
        if not allowed:
            return XapiError("VM_IS_TEMPLATE", ref, op)
    if vm["is_a_snapshot"] and op not in _SNAPSHOT_OPS:
        return XapiError("VM_IS_SNAPSHOT", ref, op)
    if op == "provision" and not vm["is_a_template"]:
        return XapiError("PROVISION_ONLY_ALLOWED_ON_TEMPLATE")
    if op == "revert" and not vm["is_a_snapshot"]:
        return XapiError("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
    immobile = _platform_flag(vm, "nomigrate") or _platform_flag(vm, "nested-virt")
    if op in ("suspend", "checkpoint", "pool_migrate", "migrate_send") and immobile and strict:
        return XapiError("VM_IS_IMMOBILE", ref)
    if op == "changing_dynamic_range" and _platform_flag(vm, "nested-virt") and strict:
        return XapiError("VM_IS_USING_NESTED_VIRT", ref)
    if op in ("changing_VCPUs", "destroy") and is_dom0(vm):
        return XapiError("OPERATION_NOT_ALLOWED", "This operation is not allowed on dom0")
    if vm["is_control_domain"] and op not in _CONTROL_DOMAIN_OPS:
        return XapiError(
            "OPERATION_NOT_ALLOWED", "This operation is not allowed on a control domain"
        )
    error = _feature_error(store, ref, vm, op, strict)
    if error:
        return error
    if op == "snapshot_with_quiesce":
        return XapiError("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED", ref)
    if op in ("checkpoint", "snapshot", "suspend", "snapshot_with_quiesce"):
        for vbd_ref in store.children("VM", ref, "VBDs"):
            vdi = store.all("VDI").get(store.get("VBD", vbd_ref)["VDI"])
            if vdi and vdi["on_boot"] == "reset":
                return XapiError("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")
    return None


def assert_operation_valid(store: Store, ref: str, op: str, strict: bool = True) -> None:
    error = check_operation_error(store, ref, op, strict)
    if error:
        raise error


def update_allowed_operations(store: Store, ref: str) -> None:
    """update_allowed_operations in xapi_vm_lifecycle.ml (only writes on change)."""
    if not store.exists("VM", ref):
        return
    allowed = [op for op in ALLOWABLE_OPS if check_operation_error(store, ref, op) is None]
    if store.get("VM", ref)["allowed_operations"] != allowed:
        store.update("VM", ref, allowed_operations=allowed)


def begin_operation(
    store: Store, ref: str, op: str, key: str, strict: bool = True
) -> Callable[[], None]:
    """with_vm_operation in ocaml/xapi/xapi_vm_helpers.ml: assert the operation is valid,
    add it to current_operations under the task's key; the returned function undoes that."""
    assert_operation_valid(store, ref, op, strict)
    current = dict(store.get("VM", ref)["current_operations"])
    current[key] = op
    store.update("VM", ref, current_operations=current)
    update_allowed_operations(store, ref)

    def done() -> None:
        if store.exists("VM", ref):
            ops = dict(store.get("VM", ref)["current_operations"])
            ops.pop(key, None)
            store.update("VM", ref, current_operations=ops)
            update_allowed_operations(store, ref)

    return done
