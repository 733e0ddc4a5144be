"""VM power operations: start, shutdown, reboot, suspend/resume, pause, migrate.

Each call goes through with_vm_operation (lifecycle.begin_operation) with the op
named in ocaml/xapi/message_forwarding.ml; the state changes follow
ocaml/xapi/xapi_vm.ml and xapi_vm_lifecycle.ml force_state_reset (Halted or
Suspended: VBDs/VIFs detached, resident_on NULL, domid -1). VM.start needs the
VM_start feature (LICENCE_RESTRICTION ["VM_start"]) and host memory (memory.py);
hard_shutdown/hard_reboot cancel the clean operations in progress (message_forwarding
`cancel`); hard_shutdown of a suspended VM destroys its suspend VDI (xapi_vm.ml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .devices import set_devices_attached
from .engine import Call, Engine
from .errors import XapiError
from .guests import boot_guest
from .lifecycle import begin_operation, update_allowed_operations
from .memory import MIB, choose_host, free_for_start, refresh_host_metrics, start_need
from .registry import api
from .storage import assert_space, destroy_vdi, new_vdi, round_size
from .store import Store
from .tasks import Plan
from .wire import NULL_REF, now


def vm_plan(
    call: Call,
    vm: str,
    op: str,
    apply: Callable[[], Any],
    prepare: Callable[[], Callable[[], None] | None] | None = None,
    cancellable: bool = False,
    timed: bool = True,
) -> Plan:
    """Mark `op` on the VM now (checking it is allowed), run `prepare` (which may
    reserve something and return its release), and defer `apply` to the end."""
    store = call.store
    store.get("VM", vm)
    done = begin_operation(store, vm, op, call.op_key)
    cleanups: list[Callable[[], None]] = []
    try:
        if prepare is not None:
            release = prepare()
            if release is not None:
                cleanups.append(release)
    except XapiError:
        done()
        raise
    return Plan(apply, done, cancellable=cancellable, timed=timed, cleanups=cleanups)


def cancel_ops(engine: Engine, vm: str, ops: set[str]) -> None:
    """message_forwarding.ml `cancel`: cancel the tasks running these ops on the VM."""
    for key, op in engine.store.get("VM", vm)["current_operations"].items():
        if op in ops:
            engine.forced_cancels.add(key)


def _console(store: Store, vm: str) -> None:
    """An RFB console while the domain runs (modelled: xapi makes one per running
    domain; the location format here is not verified)."""
    if store.children("VM", vm, "consoles"):
        return
    record = store.get("VM", vm)
    host = store.all("host").get(record["resident_on"])
    address = host["address"] if host else "127.0.0.1"
    location = f"https://{address}/console?uuid={record['uuid']}"
    store.create("console", {"protocol": "rfb", "location": location, "VM": vm})


def set_running(
    engine: Engine, vm: str, host: str, paused: bool = False, boot: bool = True
) -> None:
    store = engine.store
    record = store.get("VM", vm)
    domain_type = "hvm" if record["HVM_boot_policy"] else "pv"
    store.update(
        "VM",
        vm,
        power_state="Paused" if paused else "Running",
        resident_on=host,
        scheduled_to_be_resident_on=NULL_REF,
        domid=engine.next_domid(),
        domain_type=record["domain_type"]
        if record["domain_type"] != "unspecified"
        else domain_type,
    )
    set_devices_attached(store, vm, True)
    metrics = record["metrics"]
    if store.exists("VM_metrics", metrics):
        store.update(
            "VM_metrics",
            metrics,
            VCPUs_number=record["VCPUs_at_startup"],
            memory_actual=record["memory_dynamic_max"],
            start_time=now() if boot else store.get("VM_metrics", metrics)["start_time"],
            last_updated=now(),
            current_domain_type=domain_type,
            hvm=domain_type == "hvm",
        )
    _console(store, vm)
    if boot:
        boot_guest(engine, vm)
    refresh_host_metrics(store)
    update_allowed_operations(store, vm)


def set_stopped(engine: Engine, vm: str, state: str = "Halted") -> None:
    """force_state_reset to Halted or Suspended."""
    store = engine.store
    store.update(
        "VM",
        vm,
        power_state=state,
        resident_on=NULL_REF,
        scheduled_to_be_resident_on=NULL_REF,
        domid=-1,
        requires_reboot=False,
    )
    set_devices_attached(store, vm, False)
    for console in store.children("VM", vm, "consoles"):
        store.destroy("console", console)
    metrics = store.get("VM", vm)["metrics"]
    if store.exists("VM_metrics", metrics):
        store.update("VM_metrics", metrics, memory_actual=0, last_updated=now())
    refresh_host_metrics(store)
    update_allowed_operations(store, vm)


def _reserve(store: Store, vm: str, host: str | None) -> Callable[[], Callable[[], None]]:
    """Check host memory and hold it (scheduled_to_be_resident_on) until the end."""

    def prepare() -> Callable[[], None]:
        record = store.get("VM", vm)
        if host is None:
            target = choose_host(store, record)
        else:
            store.get("host", host)
            available = free_for_start(store, host)
            if available < start_need(record):
                raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", start_need(record), available)
            target = host
        store.update("VM", vm, scheduled_to_be_resident_on=target)

        def release() -> None:
            if store.exists("VM", vm):
                store.update("VM", vm, scheduled_to_be_resident_on=NULL_REF)

        return release

    return prepare


def _start(call: Call, vm: str, paused: bool, host: str | None, op: str) -> Plan:
    engine = call.engine
    store = call.store
    if not engine.feature("VM_start"):
        raise XapiError("LICENCE_RESTRICTION", "VM_start")

    def apply() -> None:
        target = store.get("VM", vm)["scheduled_to_be_resident_on"]
        set_running(engine, vm, target, paused)

    return vm_plan(call, vm, op, apply, prepare=_reserve(store, vm, host))


@api("VM.start", "r", "b", "b")
def vm_start(call: Call, vm: str, start_paused: bool, force: bool) -> Plan:
    return _start(call, vm, start_paused, None, "start")


@api("VM.start_on", "r", "r", "b", "b")
def vm_start_on(call: Call, vm: str, host: str, start_paused: bool, force: bool) -> Plan:
    return _start(call, vm, start_paused, host, "start_on")


def _halt(engine: Engine, vm: str) -> None:
    store = engine.store
    record = store.all("VM").get(vm)
    if record is None or record["power_state"] == "Halted":
        return
    if record["power_state"] == "Suspended" and store.exists("VDI", record["suspend_VDI"]):
        destroy_vdi(store, record["suspend_VDI"])
    store.update("VM", vm, suspend_VDI=NULL_REF, ha_always_run=False)
    set_stopped(engine, vm)


@api("VM.clean_shutdown", "r")
def vm_clean_shutdown(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "clean_shutdown", lambda: _halt(call.engine, vm))


@api("VM.hard_shutdown", "r")
def vm_hard_shutdown(call: Call, vm: str) -> Plan:
    ops = {"clean_shutdown", "clean_reboot", "hard_reboot", "pool_migrate", "call_plugin"}
    ops |= {"shutdown", "suspend"}
    plan = vm_plan(call, vm, "hard_shutdown", lambda: _halt(call.engine, vm))
    cancel_ops(call.engine, vm, ops)
    return plan


@api("VM.shutdown", "r")
def vm_shutdown(call: Call, vm: str) -> Plan:
    """xapi_vm.ml shutdown: clean_shutdown, falling back to hard_shutdown; always Halted."""
    return vm_plan(call, vm, "shutdown", lambda: _halt(call.engine, vm))


def _reboot(engine: Engine, vm: str) -> None:
    record = engine.store.get("VM", vm)
    set_running(engine, vm, record["resident_on"], paused=False)


@api("VM.clean_reboot", "r")
def vm_clean_reboot(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "clean_reboot", lambda: _reboot(call.engine, vm))


@api("VM.hard_reboot", "r")
def vm_hard_reboot(call: Call, vm: str) -> Plan:
    ops = {"clean_shutdown", "clean_reboot", "pool_migrate", "call_plugin", "suspend"}
    plan = vm_plan(call, vm, "hard_reboot", lambda: _reboot(call.engine, vm))
    cancel_ops(call.engine, vm, ops)
    return plan


def suspend_sr(store: Store, engine: Engine, vm: dict[str, Any]) -> str:
    pool = store.get("pool", engine.pool)
    for sr in (vm["suspend_SR"], pool["suspend_image_SR"], pool["default_SR"]):
        if store.exists("SR", sr):
            return sr
    raise XapiError("VM_NO_SUSPEND_SR", NULL_REF)


def make_suspend_image(engine: Engine, vm: str) -> str:
    """A suspend VDI holding the VM's memory (size modelled as static_max + 8 MiB)."""
    store = engine.store
    record = store.get("VM", vm)
    sr = suspend_sr(store, engine, record)
    size = round_size(record["memory_static_max"] + 8 * MIB)
    assert_space(store, {sr: size})
    return new_vdi(
        store,
        {
            "name_label": "Suspend image",
            "name_description": "Suspend image",
            "SR": sr,
            "virtual_size": size,
            "physical_utilisation": size,
            "type": "suspend",
            "other_config": {},
        },
    )


def suspend_now(engine: Engine, vm: str) -> None:
    vdi = make_suspend_image(engine, vm)
    engine.store.update("VM", vm, suspend_VDI=vdi)
    set_stopped(engine, vm, "Suspended")


@api("VM.suspend", "r")
def vm_suspend(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "suspend", lambda: suspend_now(call.engine, vm))


def _resume(call: Call, vm: str, paused: bool, host: str | None, op: str) -> Plan:
    engine, store = call.engine, call.store

    def apply() -> None:
        record = store.get("VM", vm)
        target = record["scheduled_to_be_resident_on"]
        if store.exists("VDI", record["suspend_VDI"]):
            destroy_vdi(store, record["suspend_VDI"])
        store.update("VM", vm, suspend_VDI=NULL_REF)
        set_running(engine, vm, target, paused, boot=False)

    return vm_plan(call, vm, op, apply, prepare=_reserve(store, vm, host))


@api("VM.resume", "r", "b", "b")
def vm_resume(call: Call, vm: str, start_paused: bool, force: bool) -> Plan:
    return _resume(call, vm, start_paused, None, "resume")


@api("VM.resume_on", "r", "r", "b", "b")
def vm_resume_on(call: Call, vm: str, host: str, start_paused: bool, force: bool) -> Plan:
    return _resume(call, vm, start_paused, host, "resume_on")


def _set_power(engine: Engine, vm: str, state: str) -> None:
    engine.store.update("VM", vm, power_state=state)
    update_allowed_operations(engine.store, vm)


@api("VM.pause", "r")
def vm_pause(call: Call, vm: str) -> Plan:
    return vm_plan(call, vm, "pause", lambda: _set_power(call.engine, vm, "Paused"), timed=False)


@api("VM.unpause", "r")
def vm_unpause(call: Call, vm: str) -> Plan:
    apply = lambda: _set_power(call.engine, vm, "Running")  # noqa: E731
    return vm_plan(call, vm, "unpause", apply, timed=False)


@api("VM.pool_migrate", "r", "r", "m")
def vm_pool_migrate(call: Call, vm: str, host: str, options: dict[str, str]) -> Plan:
    """Live migration inside the pool (modelled: the VM moves to `host` if it has the
    memory)."""
    store = call.store
    store.get("host", host)

    def prepare() -> None:
        need = start_need(store.get("VM", vm))
        available = free_for_start(store, host)
        if store.get("VM", vm)["resident_on"] != host and available < need:
            raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", need, available)

    def apply() -> None:
        store.update("VM", vm, resident_on=host)
        refresh_host_metrics(store)

    return vm_plan(call, vm, "pool_migrate", apply, prepare=prepare)
