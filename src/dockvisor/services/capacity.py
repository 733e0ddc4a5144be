"""What is free on the hosts a user may use: each host's CPUs and memory (asked of the
hypervisor at most once a minute: Hosts.info) less what its running VMs are given."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from dockvisor.services.admin import Administration
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import VmRow

__all__ = ["HostCapacity", "host_capacities"]


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
    hypervisor: str | None = None  # "QEMU 7.2.0", "XCP-ng 8.3.0"...

    @property
    def free_vcpus(self) -> int | None:
        return None if self.cpus is None else self.cpus - self.used_vcpus

    @property
    def free_memory(self) -> int | None:
        return None if self.memory is None else self.memory - self.used_memory


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
        info = cp.hosts.info(host["id"])
        vcpus, memory = used.get(host["id"], (0, 0))
        result.append(
            HostCapacity(
                host["id"],
                host["name"],
                host["state"],
                info.cpus if info else None,
                info.memory if info else None,
                vcpus,
                memory,
                info.acceleration if info else None,
                f"{info.hypervisor} {info.version}".strip() if info else None,
            )
        )
    return result
