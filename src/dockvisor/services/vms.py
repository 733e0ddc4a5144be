"""The VM use cases: one function per thing a user does to a VM.

This is the layer that checks input against the domain rules and then calls the
hypervisor adapter (and, where a VM's Docker engine matters, waits for it). The control
plane adds permissions, quotas, tasks and audit here, not in the shells.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from dataclasses import replace

from dockvisor.domain.model import (
    VM,
    Capability,
    DiskMode,
    DockerEndpoint,
    HostInfo,
    PowerState,
    ResizeResult,
    Snapshot,
    VMSpec,
)
from dockvisor.domain.naming import validate_snapshot_name, validate_vm_name
from dockvisor.domain.sizing import (
    check_disk_growth,
    check_resize,
    check_storage_room,
    plan_vm,
)
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.errors import BadPowerState, DockvisorError, GuestTimeout, WarmStartUnavailable
from dockvisor.services.engines import EngineAccess

__all__ = [
    "COLD_START",
    "DOCKER_TIMEOUT",
    "WARM_START",
    "clone_vm",
    "create_vm_from_template",
    "delete_snapshot",
    "delete_vm",
    "docker_endpoint",
    "get_vm",
    "host_info",
    "kill_vm",
    "list_vms",
    "list_snapshots",
    "reboot_vm",
    "resize_vm",
    "revert_to_snapshot",
    "snapshot_vm",
    "start_vm",
    "stop_vm",
    "wait_for_docker",
]

# How long a boot may take to bring up the guest's Docker API (software emulation is slow).
DOCKER_TIMEOUT = float(os.environ.get("DOCKVISOR_DOCKER_TIMEOUT", "150"))


def _docker_reachable(driver: HypervisorDriver, vm: VM) -> bool:
    """Whether to wait for this VM's engine: it has one, and the hypervisor can say where."""
    reach = Capability.LOOPBACK_FORWARD | Capability.GUEST_ADDRESSES
    return vm.docker_ready and bool(driver.capabilities & reach)


def _scaled(progress: Progress, low: float, high: float) -> Progress:
    return lambda step, fraction: progress(step, low + (high - low) * fraction)


def host_info(driver: HypervisorDriver) -> HostInfo:
    return driver.host_info()


def list_vms(driver: HypervisorDriver) -> list[VM]:
    return driver.list_vms()


def get_vm(driver: HypervisorDriver, name: str) -> VM:
    return driver.get_vm(name)


def wait_for_docker(
    driver: HypervisorDriver,
    name: str,
    *,
    timeout: float = DOCKER_TIMEOUT,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> DockerEndpoint:
    """Wait until the VM's Docker engine answers; its endpoint. GuestTimeout (with the
    end of the guest's console) if it does not within `timeout` seconds."""
    endpoint = driver.docker_endpoint(name)
    with (engines or EngineAccess.default()).engine(endpoint) as engine:
        try:
            engine.wait_until_ready(
                timeout,
                on_wait=lambda waited: progress(
                    f"waiting for Docker ({waited:.0f} s)", min(0.95, waited / 40)
                ),
            )
        except GuestTimeout as exc:
            console = driver.console_log(name, lines=5).strip()
            lines = " | ".join(console.splitlines())
            tail = f"; guest console ends with: {lines}" if console else ""
            raise GuestTimeout(f"VM {driver.get_vm(name).name!r}: {exc}{tail}") from None
    progress("Docker is up", 1.0)
    return endpoint


def create_vm_from_template(
    driver: HypervisorDriver,
    *,
    name: str,
    template: str,
    vcpus: int | None = None,
    memory: int | None = None,
    max_vcpus: int | None = None,
    max_memory: int | None = None,
    disk: int | None = None,
    full: bool = False,
    start: bool = True,
    wait: bool = True,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
    cold: bool = False,
) -> VM:
    """Create a VM of exactly `vcpus` and `memory` from `template`, with a root disk of
    `disk` bytes (what is not given: the template's default), start it, and wait for
    its Docker engine. A Docker-ready template's VM gets an engine certificate of its own on its
    config drive. If any step fails, the VM and its disks are removed.

    Warm by default: where the host keeps warm spares of the template (warm.py: its
    Template.spares_kept), the VM is one of them resumed (its identity the spare's own,
    made when it booted) and the last progress step says so (WARM_START); where none
    can be (none left, another size, a spare that no longer matches) it boots and the
    last step says why (COLD_START); `cold`, or maximums asked for, boot it."""
    engines = engines or EngineAccess.default()
    validate_vm_name(name)
    tmpl = driver.get_template(template)
    plan = plan_vm(driver.host_info(), tmpl, vcpus=vcpus, memory=memory, max_vcpus=max_vcpus,
                   max_memory=max_memory, disk=disk)  # fmt: skip
    size = plan.size
    docker_ready = tmpl.docker_ready
    spec = VMSpec(
        name=name,
        template=template,
        vcpus=size.vcpus,
        memory=size.memory,
        max_vcpus=size.max_vcpus,
        max_memory=size.max_memory,
        disk_mode=DiskMode.FULL if full else DiskMode.LINKED,
        guest=engines.guest_config(name) if docker_ready else None,
        disk_size=plan.disk,
    )
    warm = not cold and start and max_vcpus is None and max_memory is None
    why_cold = None
    if warm and tmpl.spares_kept and Capability.WARM_SPARES in driver.capabilities:
        adopted = _adopt_spare(driver, replace(spec, guest=None), wait=wait, progress=progress,
                               engines=engines)  # fmt: skip
        if isinstance(adopted, VM):
            return adopted
        why_cold = adopted
    vm = driver.create_vm(spec, progress=_scaled(progress, 0.0, 0.15))
    if not start:
        progress("created", 1.0)
        return vm
    try:
        progress("booting", 0.15)
        vm = driver.start_vm(name)
        if wait and _docker_reachable(driver, vm):
            wait_for_docker(driver, name, progress=_scaled(progress, 0.2, 1.0), engines=engines)
    except BaseException:
        _remove_quietly(driver, name)
        raise
    if why_cold:
        progress(f"{COLD_START}: {why_cold}", 1.0)
    return driver.get_vm(name)


# How a create's last progress step says which way it went (the CLI shows it).
WARM_START = "warm start: resumed a spare"
COLD_START = "booted cold"


def _adopt_spare(driver: HypervisorDriver, spec: VMSpec, *, wait: bool, progress: Progress,
                 engines: EngineAccess) -> VM | str:  # fmt: skip
    """The VM made from a warm spare, its engine answering; else why no spare could be it
    (said in the progress too): the caller boots it cold."""
    try:
        vm = driver.adopt_spare(spec, progress=_scaled(progress, 0.0, 0.8))
    except WarmStartUnavailable as exc:
        progress(f"booting cold: {exc}", 0.0)
        return str(exc)
    progress("resumed a spare", 0.8)
    try:
        if wait and _docker_reachable(driver, vm):
            wait_for_docker(driver, spec.name, progress=_scaled(progress, 0.8, 1.0),
                            engines=engines, timeout=30.0)  # fmt: skip
    except DockvisorError as exc:
        _remove_quietly(driver, spec.name)
        why = f"the resumed spare's engine did not answer ({exc})"
        progress(f"booting cold: {why}", 0.0)
        return why
    progress(WARM_START, 1.0)
    return driver.get_vm(spec.name)


def _remove_quietly(driver: HypervisorDriver, name: str) -> None:
    with suppress(DockvisorError):
        if driver.get_vm(name).power_state is not PowerState.STOPPED:
            driver.force_off(name)
    with suppress(DockvisorError):
        driver.delete_vm(name)


def start_vm(
    driver: HypervisorDriver,
    name: str,
    *,
    wait: bool = True,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> VM:
    vm = driver.start_vm(name)
    if wait and _docker_reachable(driver, vm):
        wait_for_docker(driver, name, progress=progress, engines=engines)
    return driver.get_vm(name)


def stop_vm(driver: HypervisorDriver, name: str, *, timeout: float = 60.0) -> VM:
    return driver.shutdown_vm(name, timeout=timeout)


def kill_vm(driver: HypervisorDriver, name: str) -> VM:
    return driver.force_off(name)


def reboot_vm(
    driver: HypervisorDriver,
    name: str,
    *,
    wait: bool = False,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> VM:
    """Ask the guest to reboot. With `wait`, return once its Docker engine has gone down
    and come back (GuestTimeout if the guest never went down)."""
    endpoint = (
        driver.docker_endpoint(name)
        if wait and _docker_reachable(driver, driver.get_vm(name))
        else None
    )
    vm = driver.reboot_vm(name)
    if endpoint is None:
        return vm
    progress("waiting for the guest to go down", 0.05)
    engines = engines or EngineAccess.default()
    with engines.engine(endpoint) as engine:
        deadline = time.monotonic() + 60
        while engine.ping():
            if time.monotonic() > deadline:
                raise GuestTimeout(f"VM {vm.name!r} did not reboot within 60 s")
            time.sleep(0.25)
    wait_for_docker(driver, name, progress=_scaled(progress, 0.1, 1.0), engines=engines)
    return driver.get_vm(name)


def delete_vm(driver: HypervisorDriver, name: str, *, force: bool = False) -> None:
    """Delete a VM with its disks and snapshots. A running VM needs `force` (it is
    powered off first)."""
    vm = driver.get_vm(name)
    if vm.power_state is not PowerState.STOPPED:
        if not force:
            raise BadPowerState(
                f"VM {vm.name!r} is {vm.power_state}; stop it first "
                f"(dockvisor vm stop {vm.name}) "
                "or delete it with --force"
            )
        driver.force_off(name)
    driver.delete_vm(name)


def resize_vm(
    driver: HypervisorDriver,
    name: str,
    *,
    vcpus: int | None = None,
    memory: int | None = None,
    disk: int | None = None,
) -> ResizeResult:
    """Give the VM more (or fewer) vCPUs or memory: live within its maximums, else at
    its next boot, reported as pending; and a larger disk (live on a running VM, whose
    guest grows its filesystem). Everything is checked before anything changes."""
    host = driver.host_info()
    if disk is None or vcpus is not None or memory is not None:
        check_resize(host, vcpus=vcpus, memory=memory)
    vm = driver.get_vm(name)
    growth = check_disk_growth(vm.name, vm.disk_size, disk) if disk is not None else 0
    check_storage_room(host, growth)
    if growth:
        vm = driver.grow_disk(name, disk or 0)
    if vcpus is None and memory is None:
        return ResizeResult(vm=vm, applied={"disk": vm.disk_size} if growth else {})
    result = driver.set_resources(name, vcpus=vcpus, memory=memory)
    if growth:
        result.applied["disk"] = result.vm.disk_size
    return result


def snapshot_vm(
    driver: HypervisorDriver, name: str, snapshot: str, *, description: str = ""
) -> Snapshot:
    validate_snapshot_name(snapshot)
    return driver.create_snapshot(name, snapshot, description)


def list_snapshots(driver: HypervisorDriver, name: str) -> list[Snapshot]:
    return driver.list_snapshots(name)


def revert_to_snapshot(
    driver: HypervisorDriver,
    name: str,
    snapshot: str,
    *,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> VM:
    """Return the VM to `snapshot`. A snapshot with memory comes back running, its Docker
    engine answering at once; one taken stopped leaves the VM stopped."""
    progress("reverting", 0.1)
    vm = driver.revert_to_snapshot(name, snapshot)
    if vm.power_state is PowerState.RUNNING and _docker_reachable(driver, vm):
        wait_for_docker(driver, name, timeout=30.0, progress=_scaled(progress, 0.5, 1.0),
                        engines=engines)  # fmt: skip
    progress("reverted", 1.0)
    return vm


def delete_snapshot(driver: HypervisorDriver, name: str, snapshot: str) -> None:
    driver.delete_snapshot(name, snapshot)


def clone_vm(
    driver: HypervisorDriver,
    name: str,
    new_name: str,
    *,
    full: bool = False,
    start: bool = False,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> VM:
    """Copy a VM (running or not) under a new name; the clone is stopped unless `start`.
    A Docker-ready clone gets an engine certificate of its own. If starting the clone
    fails, the clone is removed."""
    validate_vm_name(new_name)
    engines = engines or EngineAccess.default()
    guest = engines.guest_config(new_name) if driver.get_vm(name).docker_ready else None
    clone = driver.clone_vm(
        name,
        new_name,
        linked=not full,
        guest=guest,
        progress=_scaled(progress, 0.0, 0.5 if start else 1.0),
    )
    if start:
        try:
            clone = start_vm(driver, new_name, progress=_scaled(progress, 0.5, 1.0),
                             engines=engines)  # fmt: skip
        except BaseException:
            _remove_quietly(driver, new_name)
            raise
    return clone


def docker_endpoint(driver: HypervisorDriver, name: str) -> DockerEndpoint:
    return driver.docker_endpoint(name)
