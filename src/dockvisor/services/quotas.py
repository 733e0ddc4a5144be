"""Resource sets: who may create VMs, from which templates, on which hosts, up to how much.

Usage is not a counter that can drift: it is the sum of the configured sizes of the
set's VMs in the inventory, computed inside the same transaction that reserves a new
VM, a clone or a resize. Under SQLite that transaction holds the write lock from its
start; under PostgreSQL the set's row is locked FOR UPDATE. So concurrent requests see
each other's reservations, and exactly as many fit as the limits allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dockvisor.domain.naming import validate_vm_name
from dockvisor.domain.quota import Limits, Resources, check_room
from dockvisor.errors import AlreadyExists, InvalidInput, NotFound
from dockvisor.store.models import HostRow, ResourceSetRow, ResourceSetSubject, VmRow

__all__ = ["ResourceSetView", "lock_set", "reserve", "set_view", "usage_of", "write_set"]


@dataclass(frozen=True)
class ResourceSetView:
    id: int
    name: str
    limits: Limits
    usage: Resources
    templates: list[str]
    host_ids: list[int]
    subjects: list[str]
    count_snapshots: bool


def limits_of(row: ResourceSetRow) -> Limits:
    return Limits(row.max_vcpus, row.max_memory, row.max_disk, row.max_vms)


def usage_of(session: Session, row: ResourceSetRow) -> Resources:
    """What the set's VMs take now (configured sizes; snapshots' disks if the set says)."""
    totals = session.execute(
        select(
            func.coalesce(func.sum(VmRow.vcpus), 0),
            func.coalesce(func.sum(VmRow.memory), 0),
            func.coalesce(func.sum(VmRow.disk), 0),
            func.coalesce(func.sum(VmRow.disk * VmRow.snapshots), 0),
            func.count(VmRow.id),
        ).where(VmRow.resource_set_id == row.id)
    ).one()
    vcpus, memory, disk, snapshot_disk, count = (int(v) for v in totals)
    if row.count_snapshots:
        disk += snapshot_disk
    return Resources(vcpus=vcpus, memory=memory, disk=disk, vms=count)


def lock_set(session: Session, set_id: int) -> ResourceSetRow:
    """The set's row, locked for the rest of the transaction."""
    row = session.scalar(
        select(ResourceSetRow).where(ResourceSetRow.id == set_id).with_for_update()
    )
    if row is None:
        raise NotFound(f"no resource set {set_id}")
    return row


def reserve(session: Session, row: ResourceSetRow, request: Resources) -> None:
    """OutOfCapacity unless `request` fits in the set now. The caller then writes the rows
    that hold the reservation in the same transaction."""
    check_room(row.name, limits_of(row), usage_of(session, row), request)


def write_set(
    session: Session,
    row: ResourceSetRow | None,
    *,
    name: str,
    limits: Limits,
    templates: list[str],
    host_ids: list[int],
    subjects: list[tuple[str, int]],
    count_snapshots: bool,
) -> ResourceSetRow:
    """Create (row None) or replace a set's definition."""
    validate_vm_name(name, what="resource set name")
    for label, value in (
        ("vCPUs", limits.vcpus),
        ("memory", limits.memory),
        ("disk", limits.disk),
        ("VMs", limits.vms),
    ):
        if value is not None and value < 0:
            raise InvalidInput(f"the {label} limit cannot be negative")
    for host_id in host_ids:
        if session.get(HostRow, host_id) is None:
            raise NotFound(f"no host {host_id}")
    other = session.scalar(select(ResourceSetRow).where(ResourceSetRow.name == name))
    if other is not None and other is not row:
        raise AlreadyExists(f"a resource set named {name!r} already exists")
    if row is None:
        row = ResourceSetRow(name=name)
        session.add(row)
    row.name = name
    row.max_vcpus, row.max_memory, row.max_disk, row.max_vms = (
        limits.vcpus,
        limits.memory,
        limits.disk,
        limits.vms,
    )
    row.templates, row.host_ids, row.count_snapshots = (
        sorted(set(templates)),
        sorted(set(host_ids)),
        count_snapshots,
    )
    session.flush()
    session.execute(delete(ResourceSetSubject).where(ResourceSetSubject.set_id == row.id))
    for kind, subject_id in sorted(set(subjects)):
        session.add(ResourceSetSubject(set_id=row.id, subject_kind=kind, subject_id=subject_id))
    session.flush()
    return row


def set_view(session: Session, row: ResourceSetRow, subject_names: list[str]) -> ResourceSetView:
    return ResourceSetView(
        id=row.id,
        name=row.name,
        limits=limits_of(row),
        usage=usage_of(session, row),
        templates=list(row.templates),
        host_ids=list(row.host_ids),
        subjects=subject_names,
        count_snapshots=row.count_snapshots,
    )
