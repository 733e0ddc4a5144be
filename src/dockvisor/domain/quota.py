"""Quota arithmetic for resource sets. Pure: no I/O.

A resource set's usage is the configured size of its VMs (vCPUs, memory, disk, count),
the way Incus counts project limits: stopped VMs count, since they can be started.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dockvisor.domain.sizes import format_size
from dockvisor.errors import OutOfCapacity

__all__ = ["Limits", "Resources", "check_room"]


@dataclass(frozen=True)
class Resources:
    vcpus: int = 0
    memory: int = 0
    disk: int = 0
    vms: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Resources) -> Resources:
        return Resources(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Limits:
    """None means no limit."""

    vcpus: int | None = None
    memory: int | None = None
    disk: int | None = None
    vms: int | None = None


_LABEL = {"vcpus": "vCPUs", "memory": "memory", "disk": "disk", "vms": "VMs"}


def _show(name: str, value: int) -> str:
    return format_size(value) if name in ("memory", "disk") else str(value)


def check_room(set_name: str, limits: Limits, usage: Resources, request: Resources) -> None:
    """Raise OutOfCapacity naming the first limit that `request` on top of `usage` would
    exceed. Only positive requests count (giving back always fits)."""
    for f in fields(Resources):
        limit = getattr(limits, f.name)
        wanted = getattr(request, f.name)
        if limit is None or wanted <= 0:
            continue
        used = getattr(usage, f.name)
        if used + wanted > limit:
            raise OutOfCapacity(
                f"resource set {set_name!r} has {_show(f.name, max(limit - used, 0))} of "
                f"{_LABEL[f.name]} left ({_show(f.name, used)} of {_show(f.name, limit)} used); "
                f"this needs {_show(f.name, wanted)}"
            )
