"""Rules for how big a VM may be, and how much room it gets to grow live.

A VM has a current size (vCPUs, memory) and a maximum it can reach without a reboot.
Memory beyond the current size is reserved address space that the balloon hands back
to the host, so the maximum costs little until it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from dockvisor.domain.model import HostInfo, Template
from dockvisor.domain.sizes import GiB, MiB, format_size
from dockvisor.errors import InvalidInput, OutOfCapacity

__all__ = [
    "MIN_MEMORY",
    "VCPU_OVERCOMMIT",
    "SizeRequest",
    "check_disk_growth",
    "check_resize",
    "check_storage_room",
    "check_template_minimums",
    "plan_disk",
    "plan_size",
    "plan_spare",
    "plan_vm",
]

MIN_MEMORY = 128 * MiB
# vCPUs are host threads: a VM may have more than the host has cores, up to this factor.
VCPU_OVERCOMMIT = 2


def vcpu_ceiling(cpus: int, hypervisor_max: int) -> int:
    """The most vCPUs one VM may have on a host with `cpus` logical CPUs."""
    return max(1, min(hypervisor_max, cpus * VCPU_OVERCOMMIT))


@dataclass(frozen=True)
class SizeRequest:
    vcpus: int
    memory: int
    max_vcpus: int
    max_memory: int


def plan_size(
    host: HostInfo,
    *,
    vcpus: int,
    memory: int,
    max_vcpus: int | None = None,
    max_memory: int | None = None,
) -> SizeRequest:
    """Check a requested size against the host; fill in the room to grow.

    By default a VM may grow live to twice its vCPUs and memory, within what the host
    allows. Raises InvalidInput for impossible values and OutOfCapacity for sizes the
    host cannot give.
    """
    _check_vcpus(host, vcpus, "vCPUs")
    _check_memory(host, memory, "memory")
    if max_vcpus is None:
        max_vcpus = max(vcpus, min(2 * vcpus, host.max_vcpus_per_vm))
    else:
        _check_vcpus(host, max_vcpus, "max vCPUs")
        if max_vcpus < vcpus:
            raise InvalidInput(f"max vCPUs ({max_vcpus}) is below vCPUs ({vcpus})")
    if max_memory is None:
        max_memory = max(memory, min(2 * memory, host.memory // MiB * MiB))
    else:
        _check_memory(host, max_memory, "max memory")
        if max_memory < memory:
            raise InvalidInput(
                f"max memory ({format_size(max_memory)}) is below memory ({format_size(memory)})"
            )
    return SizeRequest(vcpus, memory, max_vcpus, max_memory)


def check_resize(host: HostInfo, *, vcpus: int | None, memory: int | None) -> None:
    """Check a new size for an existing VM (the maximum moves with it if needed)."""
    if vcpus is None and memory is None:
        raise InvalidInput("nothing to change: give --vcpus, --memory and/or --disk")
    if vcpus is not None:
        _check_vcpus(host, vcpus, "vCPUs")
    if memory is not None:
        _check_memory(host, memory, "memory")


def _check_vcpus(host: HostInfo, count: int, what: str) -> None:
    if count < 1:
        raise InvalidInput(f"{what} must be at least 1 (got {count})")
    if count > host.max_vcpus_per_vm:
        raise OutOfCapacity(
            f"{what} {count} is more than host {host.hostname} allows per VM "
            f"({host.max_vcpus_per_vm}: {host.cpus} CPUs x {VCPU_OVERCOMMIT})"
        )


def _check_memory(host: HostInfo, size: int, what: str) -> None:
    if size < MIN_MEMORY:
        raise InvalidInput(f"{what} {format_size(size)} is below the minimum of 128MiB")
    if size % MiB:
        raise InvalidInput(f"{what} of {size} bytes is not a whole number of MiB")
    if size > host.memory:
        raise OutOfCapacity(
            f"{what} {format_size(size)} is more than host {host.hostname} has "
            f"({format_size(host.memory)})"
        )


@dataclass(frozen=True)
class VmPlan:
    """A new VM's size: vCPUs and memory with their room to grow, and its disk."""

    size: SizeRequest
    disk: int


def plan_vm(
    host: HostInfo,
    template: Template,
    *,
    vcpus: int | None,
    memory: int | None,
    max_vcpus: int | None = None,
    max_memory: int | None = None,
    disk: int | None = None,
) -> VmPlan:
    """Check a new VM's size against the host and its template; what is not given is
    the template's default (vCPUs, memory: its publisher's; disk: its default, else its
    own disk's size). Raises InvalidInput or OutOfCapacity naming what does not fit."""
    vcpus = vcpus if vcpus is not None else template.sizes.default_vcpus
    memory = memory if memory is not None else template.sizes.default_memory
    if vcpus is None or memory is None:
        missing = "vCPUs" if vcpus is None else "memory"
        raise InvalidInput(f"say how much {missing}: template {template.name!r} has no default")
    size = plan_size(host, vcpus=vcpus, memory=memory, max_vcpus=max_vcpus,
                     max_memory=max_memory)  # fmt: skip
    check_template_minimums(template, vcpus=vcpus, memory=memory)
    planned = plan_disk(template.name, template.disk_size, template.sizes.default_disk, disk)
    check_storage_room(host, planned)
    return VmPlan(size, planned)


def plan_spare(host: HostInfo, template: Template) -> VmPlan:
    """A warm spare's size: the template's fewest vCPUs and its default memory (the least
    a VM it serves has: it serves VMs whose maximum memory covers the spare's), room to
    grow live to the host's most vCPUs per VM and twice the default memory, and the
    template's default disk."""
    sizes = template.sizes
    low = max(sizes.min_memory or 0, MIN_MEMORY)
    default = sizes.default_memory or max(low, GiB)
    most = min(host.memory // MiB * MiB, max(2 * default, low))
    size = plan_size(host, vcpus=sizes.min_vcpus or 1, memory=min(max(default, low), most),
                     max_vcpus=host.max_vcpus_per_vm, max_memory=most)  # fmt: skip
    return VmPlan(size, plan_disk(template.name, template.disk_size, sizes.default_disk, None))


def check_template_minimums(template: Template, *, vcpus: int, memory: int) -> None:
    """InvalidInput if a VM of this size is below what `template` says its VMs need."""
    need = template.sizes
    if vcpus < need.min_vcpus:
        raise InvalidInput(
            f"template {template.name!r} needs at least {need.min_vcpus} vCPUs (asked {vcpus})"
        )
    if memory < need.min_memory:
        raise InvalidInput(
            f"template {template.name!r} needs at least {format_size(need.min_memory)} "
            f"of memory (asked {format_size(memory)})"
        )


def _check_disk_unit(size: int, what: str) -> None:
    if size % MiB:
        raise InvalidInput(f"{what} of {size} bytes is not a whole number of MiB")


def plan_disk(template: str, template_disk: int, default_disk: int | None,
              size: int | None) -> int:  # fmt: skip
    """The root disk a new VM of `template` gets: `size` if given (at least the
    template's disk), else the template's default (else its disk's own size)."""
    if size is None:
        return max(template_disk, default_disk or 0)
    _check_disk_unit(size, "a disk")
    if size < template_disk:
        raise InvalidInput(
            f"a {format_size(size)} disk is smaller than the {format_size(template_disk)} "
            f"disk of template {template!r}; give at least {format_size(template_disk)}"
        )
    return size


def check_disk_growth(vm: str, current: int, size: int) -> int:
    """How many bytes growing `vm`'s disk from `current` to `size` adds (0: same size).
    Disks only grow: a smaller size is refused, since the guest's filesystem fills it."""
    _check_disk_unit(size, "a disk")
    if size < current:
        raise InvalidInput(
            f"VM {vm!r} has a {format_size(current)} disk; disks can only grow "
            f"(shrinking would cut its filesystem), so {format_size(size)} is refused"
        )
    return size - current


def check_storage_room(host: HostInfo, needed: int) -> None:
    """OutOfCapacity if the host's storage cannot hold `needed` more bytes of disk."""
    if host.storage_free is not None and needed > host.storage_free:
        raise OutOfCapacity(
            f"host {host.hostname}'s storage has {format_size(host.storage_free)} free; "
            f"this needs {format_size(needed)} more"
        )
