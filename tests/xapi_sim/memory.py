"""Memory rules: VM memory constraints and host free-memory accounting.

Constraints: ocaml/xapi/xapi_vm_memory_constraints.ml assert_valid_for_current_context
(no DMC feature, a control domain or nested virt: pinned at static_max, else
MEMORY_CONSTRAINT_VIOLATION_MAXPIN [reason]; otherwise static_min <= dynamic_min <=
dynamic_max <= static_max, else MEMORY_CONSTRAINT_VIOLATION_ORDER []).
Host memory: ocaml/xapi/xapi_vm_helpers.ml assert_enough_memory_available (VM.start
needs dynamic_min plus overhead; HOST_NOT_ENOUGH_FREE_MEMORY [needed; available] in
bytes) with other VMs counted at dynamic_min ("maximum compression",
memory_check.ml). The overhead formula is a model, not xapi's (memory.ml there
depends on domain type and shadow multiplier).
"""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .errors import XapiError
from .store import Store
from .wire import NULL_REF

MIB = 1024 * 1024
GIB = 1024 * MIB


def overhead(vm: dict[str, Any]) -> int:
    """Modelled virtualisation overhead: 1/128 of static_max + 1 MiB per vCPU + 1 MiB,
    rounded up to whole MiB. Not xapi's formula."""
    raw = vm["memory_static_max"] // 128 + (vm["VCPUs_max"] + 1) * MIB
    return -(-raw // MIB) * MIB


def set_overhead(store: Store, ref: str) -> None:
    """update_memory_overhead in xapi_vm_helpers.ml, with the model formula."""
    vm = store.get("VM", ref)
    value = overhead(vm)
    if vm["memory_overhead"] != value:
        store.update("VM", ref, memory_overhead=value)


def assert_constraints(
    engine: Engine, vm: dict[str, Any], smin: int, dmin: int, dmax: int, smax: int
) -> None:
    """Vm_memory_constraints.assert_valid_for_current_context."""
    reason = None
    if not engine.feature("DMC"):
        reason = "DMC disabled"
    elif vm["is_control_domain"]:
        reason = "control domain"
    elif vm["platform"].get("nested-virt", "").lower() in ("1", "true"):
        reason = "nested virt"
    ordered = smin <= dmin <= dmax <= smax
    if reason is not None:
        if not (smin <= dmin and dmin == dmax == smax):
            raise XapiError("MEMORY_CONSTRAINT_VIOLATION_MAXPIN", reason)
    elif not ordered:
        raise XapiError("MEMORY_CONSTRAINT_VIOLATION_ORDER")


def _residents(store: Store, host: str) -> list[dict[str, Any]]:
    return [
        vm
        for vm in store.all("VM").values()
        if vm["resident_on"] == host or vm["scheduled_to_be_resident_on"] == host
    ]


def host_total(store: Store, host: str) -> int:
    metrics = store.get("host", host)["metrics"]
    return store.get("host_metrics", metrics)["memory_total"]


def free_for_start(store: Store, host: str) -> int:
    """Host memory with every resident VM squeezed to dynamic_min (plus overheads)."""
    used = sum(vm["memory_dynamic_min"] + vm["memory_overhead"] for vm in _residents(store, host))
    return host_total(store, host) - used


def start_need(vm: dict[str, Any]) -> int:
    return vm["memory_dynamic_min"] + overhead(vm)


def choose_host(store: Store, vm: dict[str, Any]) -> str:
    """A host that can take the VM: its affinity if it fits, else the one with most free
    memory; HOST_NOT_ENOUGH_FREE_MEMORY [needed; available] when none fits."""
    need = start_need(vm)
    hosts = list(store.all("host"))
    if vm["affinity"] in hosts and free_for_start(store, vm["affinity"]) >= need:
        return vm["affinity"]
    best = max(hosts, key=lambda h: free_for_start(store, h))
    available = free_for_start(store, best)
    if available < need:
        raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", need, available)
    return best


def refresh_host_metrics(store: Store) -> None:
    """host_metrics.memory_free as Xen would report it: total minus what resident
    domains actually hold (VM_metrics.memory_actual plus overhead)."""
    for host_ref, host in store.all("host").items():
        used = 0
        for vm in store.all("VM").values():
            if vm["resident_on"] != host_ref:
                continue
            metrics = store.all("VM_metrics").get(vm["metrics"])
            used += (metrics["memory_actual"] if metrics else 0) + vm["memory_overhead"]
        metrics_ref = host["metrics"]
        if metrics_ref == NULL_REF:
            continue
        free = store.get("host_metrics", metrics_ref)["memory_total"] - used
        if store.get("host_metrics", metrics_ref)["memory_free"] != free:
            store.update("host_metrics", metrics_ref, memory_free=free)
