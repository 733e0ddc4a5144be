"""Privileges and the built-in roles, in one table.

Privileges are fine-grained in the Proxmox style: rolling back a snapshot is not taking
one, opening a console is not powering on. A role is a named set of privileges; the
built-in roles are derived from the table below, so a new privilege lands in the right
roles by its tier.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BUILTIN_ROLES", "Privilege", "Role", "parse_privileges"]


class Privilege(enum.StrEnum):
    # VMs
    VM_VIEW = "VM.View"
    VM_POWER_MGMT = "VM.PowerMgmt"
    VM_CONSOLE = "VM.Console"
    VM_SNAPSHOT = "VM.Snapshot"
    VM_SNAPSHOT_ROLLBACK = "VM.Snapshot.Rollback"
    VM_CLONE = "VM.Clone"
    VM_CONFIG_CPU = "VM.Config.CPU"
    VM_CONFIG_MEMORY = "VM.Config.Memory"
    VM_CONFIG_DISK = "VM.Config.Disk"  # grow the VM's disk
    VM_DELETE = "VM.Delete"
    VM_ALLOCATE = "VM.Allocate"
    # Docker engines inside VMs
    DOCKER_VIEW = "Docker.View"
    DOCKER_OPERATE = "Docker.Operate"
    DOCKER_MANAGE = "Docker.Manage"
    DOCKER_EXEC = "Docker.Exec"
    # The system
    PERMISSIONS_MODIFY = "Permissions.Modify"
    SYS_AUDIT = "Sys.Audit"
    SYS_MODIFY = "Sys.Modify"  # users, groups, hosts, templates, resource sets


P = Privilege
# Tier of each privilege: view < operate < develop < admin. A built-in role holds every
# privilege up to its tier, minus the exceptions spelled out in ROLE_EXCLUDES.
TIERS: dict[Privilege, int] = {
    P.VM_VIEW: 0, P.DOCKER_VIEW: 0,
    P.VM_POWER_MGMT: 1, P.VM_CONSOLE: 1, P.DOCKER_OPERATE: 1,
    P.VM_SNAPSHOT: 2, P.VM_SNAPSHOT_ROLLBACK: 2, P.VM_CLONE: 2, P.DOCKER_MANAGE: 2,
    P.DOCKER_EXEC: 2, P.VM_CONFIG_CPU: 2, P.VM_CONFIG_MEMORY: 2, P.VM_CONFIG_DISK: 2,
    P.VM_DELETE: 3, P.VM_ALLOCATE: 3,
    P.PERMISSIONS_MODIFY: 3, P.SYS_AUDIT: 3, P.SYS_MODIFY: 3,
}  # fmt: skip


@dataclass(frozen=True)
class Role:
    name: str
    privileges: frozenset[Privilege]
    builtin: bool = False
    description: str = ""


def _role(name: str, tier: int, description: str) -> Role:
    privs = frozenset(p for p, t in TIERS.items() if t <= tier)
    return Role(name, privs, builtin=True, description=description)


BUILTIN_ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role("NoAccess", frozenset(), builtin=True, description="Nothing, not even view"),
        _role("Viewer", 0, "See VMs and their containers"),
        _role("Operator", 1, "Viewer, plus power, console and starting/stopping containers"),
        _role(
            "Developer",
            2,
            "Operator, plus snapshots, rollback, clone, growing the VM within what it may "
            "grow to, and full Docker use: the sandbox role a VM's creator gets (no delete)",
        ),
        _role("Admin", 3, "Everything"),
    )
}


def parse_privileges(names: list[str] | tuple[str, ...]) -> frozenset[Privilege]:
    """Privileges from their names; ValueError naming the first unknown one."""
    known = {p.value: p for p in Privilege}
    result = set()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown privilege {name!r} (known: {', '.join(sorted(known))})")
        result.add(known[name])
    return frozenset(result)
