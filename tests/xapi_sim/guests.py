"""Guest tools: VM_guest_metrics and the timer that makes a booted guest report.

Source: ocaml/xapi/xapi_vm.ml start (deletes the old guest_metrics, since a clone
inherits stale addresses), ocaml/xapi/xapi_xenops.ml update_vm
(create_guest_metrics_if_needed makes a record as soon as the domain runs; a
record older than the domain's start time is deleted and recreated, which is what
a reboot does) and xapi_guest_agent.ml (networks keys "N/ip", "N/ipv4/M" from the
VIF device N). A halted VM keeps its last guest_metrics (nothing deletes them on
shutdown). The moment the agent reports (`guest_boot_seconds` after boot) is a model.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from .engine import Engine
from .lifecycle import update_allowed_operations
from .store import Store
from .wire import NULL_REF, now

# What the simulated guest agent reports (values modelled on xe-guest-utilities).
PV_DRIVERS_VERSION = {"major": "7", "minor": "30", "micro": "0", "build": "1"}
OS_VERSION = {
    "name": "Debian GNU/Linux 12 (bookworm)",
    "distro": "debian",
    "major": "12",
    "minor": "0",
    "uname": "6.1.0-sim-amd64",
}
FEATURES = {
    "feature-shutdown": "1",
    "feature-poweroff": "1",
    "feature-reboot": "1",
    "feature-suspend": "1",
    "feature-vcpu-hotplug": "1",
    "has-vendor-device": "0",
    "platform-feature-multiprocessor-suspend": "1",
}


class Scheduler:
    """Runs callbacks later, holding the store lock, unless the simulator stopped.
    While the pool has vanished nothing fires."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.counter = itertools.count()
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="xapi-sim timers", daemon=True)
        self.thread.start()

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        with self.wake:
            heapq.heappush(self.heap, (time.monotonic() + delay, next(self.counter), fn))
            self.wake.notify()

    def stop(self) -> None:
        with self.wake:
            self.wake.notify()
        self.thread.join(timeout=1)

    def _run(self) -> None:
        while not self.engine.stopping:
            with self.wake:
                delay = self.heap[0][0] - time.monotonic() if self.heap else 0.1
                if delay > 0 or not self.engine.resumed.is_set():
                    self.wake.wait(min(max(delay, 0.01), 0.1))
                    continue
                _, _, fn = heapq.heappop(self.heap)
            with self.engine.store.lock:
                if not self.engine.stopping:
                    fn()


def drop_guest_metrics(store: Store, vm: str) -> None:
    """Xapi_vm_helpers.delete_guest_metrics."""
    gm = store.get("VM", vm)["guest_metrics"]
    store.update("VM", vm, guest_metrics=NULL_REF)
    store.destroy("VM_guest_metrics", gm)


def _tools_fields(engine: Engine, vm_uuid: str) -> dict[str, object]:
    networks = engine.guest_overrides.get(vm_uuid, engine.config.guest_networks)
    return {
        "os_version": dict(OS_VERSION),
        "PV_drivers_version": dict(PV_DRIVERS_VERSION),
        "PV_drivers_up_to_date": True,
        "PV_drivers_detected": True,
        "networks": dict(networks),
        "other": dict(FEATURES),
        "can_use_hotplug_vbd": "yes",
        "can_use_hotplug_vif": "yes",
        "last_updated": now(),
        "live": True,
    }


def boot_guest(engine: Engine, vm: str) -> None:
    """A domain (re)started: fresh, empty guest metrics, then the agent reports later."""
    store = engine.store
    drop_guest_metrics(store, vm)
    gm = store.create(
        "VM_guest_metrics",
        {"last_updated": now(), "live": True, "can_use_hotplug_vbd": "unspecified"},
    )
    boot = store.get("VM", vm).get("_boot", 0) + 1
    store.update("VM", vm, guest_metrics=gm, _boot=boot)
    delay = engine.config.guest_boot_seconds
    if delay is not None and engine.scheduler is not None:
        engine.scheduler.later(delay, lambda: _agent_reports(engine, vm, boot))


def _agent_reports(engine: Engine, vm: str, boot: int) -> None:
    store = engine.store
    record = store.all("VM").get(vm)
    if not record or record["power_state"] != "Running" or record.get("_boot") != boot:
        return
    report_tools(engine, vm)


def report_tools(engine: Engine, vm: str) -> None:
    """Fill (or create) the VM's guest metrics with what the tools report."""
    store = engine.store
    record = store.get("VM", vm)
    fields = _tools_fields(engine, record["uuid"])
    gm = record["guest_metrics"]
    if store.exists("VM_guest_metrics", gm):
        store.update("VM_guest_metrics", gm, **fields)
    else:
        gm = store.create("VM_guest_metrics", fields)
        store.update("VM", vm, guest_metrics=gm)
    update_allowed_operations(store, vm)


def copy_guest_metrics(store: Store, vm: str) -> str:
    """Xapi_vm_helpers.copy_guest_metrics: a copy of the record, or NULL."""
    gm = store.all("VM_guest_metrics").get(store.get("VM", vm)["guest_metrics"])
    if gm is None:
        return NULL_REF
    fields = {k: v for k, v in gm.items() if k != "uuid"}
    return store.create("VM_guest_metrics", fields)
