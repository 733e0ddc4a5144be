"""What is free on the hosts a user may use: each host's CPUs and memory (asked of the
hypervisor at most once a minute) less what its running VMs are given."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from dockvisor.errors import DockvisorError
from dockvisor.services.admin import Administration
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import VmRow

__all__ = ["HostCapacity", "host_capacities"]

_SIZE_TTL = 60.0  # a host's size (CPUs, memory) hardly changes: asked once a minute


@dataclass(frozen=True)
class HostCapacity:
    id: int
    name: str
    state: str
    cpus: int | None  # None: the host did not answer
    memory: int | None
    used_vcpus: int  # by its running VMs
    used_memory: int
    acceleration: str | None

    @property
    def free_vcpus(self) -> int | None:
        return None if self.cpus is None else self.cpus - self.used_vcpus

    @property
    def free_memory(self) -> int | None:
        return None if self.memory is None else self.memory - self.used_memory


_sizes: dict[int, tuple[float, int, int, str | None]] = {}
_sizes_lock = threading.Lock()


def _host_size(cp: ControlPlane, host_id: int) -> tuple[int, int, str | None] | None:
    now = time.monotonic()
    with _sizes_lock:
        known = _sizes.get(host_id)
    if known and now - known[0] < _SIZE_TTL:
        return known[1], known[2], known[3]
    if cp.hosts.health(host_id).state == "unreachable":
        return None
    try:
        info = cp.hosts.driver(host_id).host_info()
    except DockvisorError:
        return None
    with _sizes_lock:
        _sizes[host_id] = (now, info.cpus, info.memory, info.acceleration)
    return info.cpus, info.memory, info.acceleration


def host_capacities(cp: ControlPlane, admin: Administration, who: Principal) -> list[HostCapacity]:
    """The hosts `who` may see (as GET /hosts) with what is free on each."""
    hosts = admin.list_hosts(who)
    if not hosts:
        return []
    with cp.db.read() as session:
        used = {
            host_id: (int(vcpus), int(memory))
            for host_id, vcpus, memory in session.execute(
                select(VmRow.host_id, func.sum(VmRow.vcpus), func.sum(VmRow.memory))
                .where(VmRow.state == "running")
                .group_by(VmRow.host_id)
            )
        }
    result = []
    for host in hosts:
        size = _host_size(cp, host["id"])
        vcpus, memory = used.get(host["id"], (0, 0))
        result.append(
            HostCapacity(
                host["id"],
                host["name"],
                host["state"],
                size[0] if size else None,
                size[1] if size else None,
                vcpus,
                memory,
                size[2] if size else None,
            )  # fmt: skip
        )
    return result
