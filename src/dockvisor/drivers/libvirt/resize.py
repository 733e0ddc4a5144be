"""Changing a libvirt domain's vCPUs and memory: what applies now, what waits for the
next boot, and why (each reason is shown to the user)."""

from __future__ import annotations

import time
from collections.abc import Callable

import libvirt

from dockvisor.domain.sizes import KiB, MiB
from dockvisor.drivers.libvirt.domain_xml import DomainConfig

__all__ = ["Resized", "balloon_size", "resize_domain"]

Resized = tuple[dict[str, int], dict[str, int], list[str]]  # applied, pending, reasons


def resize_domain(
    dom: libvirt.virDomain,
    *,
    live: DomainConfig,
    next_boot: Callable[[], DomainConfig],
    balloon: Callable[[libvirt.virDomain], int | None],
    vcpus: int | None,
    memory: int | None,
) -> Resized:
    """Give `dom` `vcpus` and/or `memory` bytes: in its configuration always, and in the
    running guest where it can take them. `live` is the running configuration,
    `next_boot()` reads the persistent one, `balloon(dom)` the guest's memory now.
    libvirt errors are the caller's to translate."""
    running = bool(dom.isActive())
    applied: dict[str, int] = {}
    pending: dict[str, int] = {}
    reasons: list[str] = []
    cfg = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if vcpus is not None:
        nxt = next_boot()
        if vcpus > nxt.max_vcpus:
            dom.setVcpusFlags(vcpus, cfg | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        dom.setVcpusFlags(vcpus, cfg)
        if not running or vcpus == live.vcpus:
            applied["vcpus"] = vcpus
        elif vcpus < live.vcpus:
            pending["vcpus"] = vcpus
            reasons.append(
                f"vCPUs are added to a running VM, not removed (QEMU 7.2 crashed on "
                f"vCPU unplug in our tests): {vcpus} vCPUs apply at the next boot"
            )
        elif vcpus > live.max_vcpus:
            pending.update(vcpus=vcpus, max_vcpus=vcpus)
            reasons.append(
                f"{vcpus} vCPUs is above the {live.max_vcpus} this VM was booted with "
                "room for: applies at the next boot"
            )
        else:
            try:
                dom.setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                refused = None
            except libvirt.libvirtError as exc:
                refused = exc.get_error_message()
            if refused is None:
                applied["vcpus"] = vcpus
            else:
                pending["vcpus"] = vcpus
                reasons.append(
                    f"the running VM did not take {vcpus} vCPUs ({refused}): "
                    "applies at the next boot"
                )
    if memory is not None:
        kib = memory // KiB
        nxt = next_boot()
        if memory > nxt.max_memory:
            dom.setMemoryFlags(kib, cfg | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
        dom.setMemoryFlags(kib, cfg)
        if not running:
            applied["memory"] = memory
        elif memory > live.max_memory:
            pending.update(memory=memory, max_memory=memory)
            reasons.append(
                f"memory {memory // MiB}MiB is above the {live.max_memory // MiB}MiB "
                "this VM was booted with room for: applies at the next boot"
            )
        else:
            dom.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            applied["memory"] = memory
            if not _wait_balloon(dom, memory, balloon):
                reasons.append(
                    "the guest has not yet adjusted its memory (its balloon driver is "
                    "slow or missing); it will as it can"
                )
    return applied, pending, reasons


def _wait_balloon(
    dom: libvirt.virDomain,
    target: int,
    balloon: Callable[[libvirt.virDomain], int | None],
    timeout: float = 15.0,
) -> bool:
    """Wait for a running guest to reach `target` bytes of memory; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        actual = balloon(dom)
        if actual is None or abs(actual - target) < MiB:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def balloon_size(dom: libvirt.virDomain) -> int | None:
    """The memory a running QEMU guest has now (the balloon's actual size), in bytes.

    libvirt's own record lags behind after a revert: it learns the balloon size from
    QEMU events, and loading a snapshot into a paused QEMU changes it without one.
    """
    if not dom.isActive():
        return None
    try:
        actual = dom.memoryStats().get("actual")
    except libvirt.libvirtError:
        return None
    return int(actual) * KiB if actual else None
