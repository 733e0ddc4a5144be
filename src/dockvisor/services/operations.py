"""VM operations for a multi-user server: where permissions, quotas, tasks, audit and the
hypervisor drivers meet, one function per thing a user does.

Each mutating operation checks the caller's privilege on the VM's path, reserves quota
in its resource set, records a task that holds the VM's lock, and returns at once; the
hypervisor work runs in the background (services/vms.py does it). A VM the caller cannot
view does not exist for them: they get NotFound, exactly as for an id that never was.
Every request that changes something is audited, refused or not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dockvisor.domain.acl import vm_chain
from dockvisor.domain.model import VM, Capability, DockerEndpoint, PowerState, Snapshot
from dockvisor.domain.naming import validate_snapshot_name, validate_vm_name
from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege
from dockvisor.domain.quota import Resources
from dockvisor.domain.sizes import format_size
from dockvisor.domain.sizing import (
    check_disk_growth,
    check_resize,
    check_storage_room,
    plan_vm,
)
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.errors import (
    AlreadyExists,
    DockvisorError,
    Forbidden,
    HypervisorUnreachable,
    InvalidInput,
    NotFound,
    Unsupported,
)
from dockvisor.services import quotas, warm
from dockvisor.services import vms as vm_service
from dockvisor.services.access import AccessPolicy
from dockvisor.services.audit import AuditLog
from dockvisor.services.engines import EngineAccess
from dockvisor.services.identity import Principal, principal_for
from dockvisor.services.inventory import (
    VM_FIELDS,
    Hosts,
    Inventory,
    apply_vm,
    chain_of,
    vm_data,
    vm_ref,
)
from dockvisor.services.tasks import TaskContext, TaskInfo, TaskRunner
from dockvisor.store.db import Database
from dockvisor.store.models import AclEntryRow, HostRow, PoolRow, ResourceSetRow, UserRow, VmRow

__all__ = ["POWER_ACTIONS", "Operations"]


class _NameTaken(Exception):
    """The name is taken on the host (said to the caller as AlreadyExists)."""


P = Privilege
POWER_ACTIONS = ("start", "stop", "kill", "reboot")


class Operations:
    def __init__(
        self,
        db: Database,
        hosts: Hosts,
        inventory: Inventory,
        access: AccessPolicy,
        tasks: TaskRunner,
        audit: AuditLog,
        engines: EngineAccess,
    ) -> None:
        self.engines = engines
        self.db = db
        self.hosts = hosts
        self.inventory = inventory
        self.access = access
        self.tasks = tasks
        self.audit = audit
        self.refiller = warm.Refiller(hosts.driver, engines)

    # -- shared steps ----------------------------------------------------------------

    @contextmanager
    def audited(self, who: Principal, action: str, obj: str) -> Iterator[None]:
        """Record the request in the audit log: accepted, or how it was refused."""
        try:
            yield
        except DockvisorError as exc:
            self.audit.append(who.name, action, obj, f"refused:{exc.code}", str(exc))
            raise
        self.audit.append(who.name, action, obj, "accepted")

    def _visible_row(
        self, session: Session, who: Principal, vm_id: str, privilege: Privilege
    ) -> VmRow:
        row = session.get(VmRow, vm_id)
        if row is None or not self.access.allows(who, P.VM_VIEW, chain_of(row)):
            raise NotFound(f"no VM {vm_id}")
        if privilege is not P.VM_VIEW:
            self.access.require(who, privilege, chain_of(row))
        return row

    def vm_row(self, who: Principal, vm_id: str, privilege: Privilege = P.VM_VIEW) -> VmRow:
        with self.db.read() as session:
            return self._visible_row(session, who, vm_id, privilege)

    def _grant_creator(self, session: Session, who: Principal, row: VmRow) -> None:
        """The creator gets the Developer role on their new VM, unless they already hold
        all of it there (an admin: an entry at the VM would narrow what they inherit)."""
        held = self.access.privileges(who, chain_of(row))
        if BUILTIN_ROLES["Developer"].privileges <= held:
            return
        session.add(
            AclEntryRow(
                subject_kind="user",
                subject_id=who.user_id,
                path=f"/vms/{row.id}",
                role="Developer",
                propagate=True,
            )
        )

    def _submit(
        self,
        who: Principal,
        kind: str,
        row: VmRow,
        work: Callable[[TaskContext], dict[str, Any] | None],
        undo: Callable[[], None] | None = None,
        *,
        locks: list[str] | None = None,
    ) -> TaskInfo:
        """Run `work` as a task holding the VM's lock (and `locks`). `undo` gives back
        what the request reserved: if the task fails, or if it cannot even start (the VM
        is busy). A host that stopped answering during the task is marked unreachable."""

        def failed(exc: BaseException) -> None:
            if isinstance(exc, HypervisorUnreachable):
                self.hosts.answered(row.host_id, exc)
            if undo is not None:
                undo()

        try:
            return self.tasks.submit(
                kind=kind,
                object_type="vm",
                object_id=row.id,
                chain=chain_of(row),
                requester=who,
                locks=[f"vm:{row.id}", *(locks or [])],
                work=work,
                on_failure=failed,
            )
        except BaseException:
            if undo is not None:
                undo()
            raise

    def _able(self, row: VmRow, capability: Capability, what: str) -> HypervisorDriver:
        """The driver of the VM's host, if that host can do `what`; Unsupported naming
        the host otherwise (said before any task starts)."""
        driver = self.hosts.driver(row.host_id)
        if capability not in driver.capabilities:
            raise Unsupported(f"host {row.host_id} ({driver.uri}) cannot {what}")
        return driver

    def _refresh(self, row: VmRow) -> None:
        """The row as the hypervisor has it now, announced even if unchanged: what a
        task reserved was written when it began, and pages wait for its end."""
        self.inventory.refresh_vm(row.host_id, vm_ref(row), always=True)

    # -- reading ---------------------------------------------------------------------

    def list_vms(self, who: Principal) -> list[dict[str, Any]]:
        """The VMs `who` may view, and no others, as the API shows them (read as plain
        rows, not ORM objects: an admin's list has thousands)."""
        candidates = self.access.vm_candidates(who)
        columns = [VmRow.__table__.c[k] for k in VM_FIELDS]
        with self.db.read() as session:
            query = select(*columns).order_by(VmRow.name, VmRow.id)
            if candidates is not None:
                if not candidates:
                    return []
                query = query.where(VmRow.id.in_(candidates))
            rows = [dict(r) for r in session.execute(query).mappings()]
        chains = [vm_chain(r["id"], r["host_id"], r["pool_id"]) for r in rows]
        visible = self.access.allowed_many(who, P.VM_VIEW, chains)
        return [r for r, ok in zip(rows, visible, strict=True) if ok]

    def visible_task(self, who: Principal, task_id: str) -> TaskInfo:
        """A task `who` may see: their own, or one on a VM they can view (else NotFound,
        as for a task that never was)."""
        task = self.tasks.get(task_id)
        if task.requester_id != who.user_id and not self._views_vm(who, task.object_id):
            raise NotFound(f"no task {task_id}")
        return task

    def cancel_task(self, who: Principal, task_id: str) -> TaskInfo:
        """Ask a running task to stop: its requester may, and whoever holds Sys.Modify
        on /. The work stops at its next progress report and undoes what it made (on a
        XAPI pool, the pool's task is cancelled). NotFound for a task `who` cannot see."""
        with self.audited(who, "task.cancel", f"task:{task_id}"):
            task = self.visible_task(who, task_id)
            if task.requester_id != who.user_id:
                self.access.require(who, P.SYS_MODIFY, ("/",))
            return self.tasks.request_cancel(task_id)

    def visible_tasks(self, who: Principal, limit: int) -> list[TaskInfo]:
        """The newest tasks `who` may see (as `visible_task`), newest first."""
        return [
            t
            for t in self.tasks.recent(limit * 4)
            if t.requester_id == who.user_id or self._views_vm(who, t.object_id)
        ][:limit]

    def _views_vm(self, who: Principal, vm_id: str) -> bool:
        try:
            self.vm_row(who, vm_id)
        except DockvisorError:
            return False
        return True

    def list_snapshots(self, who: Principal, vm_id: str) -> list[Snapshot]:
        row = self.vm_row(who, vm_id)
        return self.hosts.driver(row.host_id).list_snapshots(vm_ref(row))

    def docker_endpoint(self, who: Principal, vm_id: str) -> DockerEndpoint:
        row = self.vm_row(who, vm_id, P.DOCKER_VIEW)
        return self.hosts.driver(row.host_id).docker_endpoint(vm_ref(row))

    # -- create and clone --------------------------------------------------------------

    def _placement(
        self,
        session: Session,
        who: Principal,
        *,
        template: str,
        host_id: int | None,
        resource_set_id: int | None,
        pool_id: int | None,
    ) -> tuple[int, ResourceSetRow | None]:
        """Where a new VM may go, or why not: (host id, locked resource set or None)."""
        if pool_id is not None:
            if session.get(PoolRow, pool_id) is None:
                raise NotFound(f"no pool {pool_id}")
            self.access.require(who, P.VM_ALLOCATE, ("/", f"/pools/{pool_id}"))
        if resource_set_id is None:
            if host_id is None:
                host_id = session.scalar(select(HostRow.id).order_by(HostRow.id).limit(1))
                if host_id is None:
                    raise NotFound("this server has no host yet")
            elif session.get(HostRow, host_id) is None:
                raise NotFound(f"no host {host_id}")
            self.access.require(who, P.VM_ALLOCATE, ("/", f"/hosts/{host_id}"))
            return host_id, None
        visible = resource_set_id in self.access.resource_sets_of(who) or self.access.allows(
            who, P.VM_VIEW, ("/", f"/resource-sets/{resource_set_id}")
        )
        if not visible and not self.access.may_allocate_in(who, resource_set_id):
            raise NotFound(f"no resource set {resource_set_id}")
        if not self.access.may_allocate_in(who, resource_set_id):
            raise Forbidden(f"{who.name} may not create VMs in resource set {resource_set_id}")
        set_row = quotas.lock_set(session, resource_set_id)
        if template not in set_row.templates:
            raise Forbidden(
                f"template {template!r} is not allowed in resource set {set_row.name!r} "
                f"(allowed: {', '.join(set_row.templates) or 'none'})"
            )
        if host_id is None:
            if not set_row.host_ids:
                raise Forbidden(f"resource set {set_row.name!r} allows no host")
            host_id = set_row.host_ids[0]
        elif host_id not in set_row.host_ids:
            raise Forbidden(f"host {host_id} is not allowed in resource set {set_row.name!r}")
        return host_id, set_row

    def create_vm(
        self,
        who: Principal,
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
        host_id: int | None = None,
        resource_set_id: int | None = None,
        pool_id: int | None = None,
        cold: bool = False,
    ) -> tuple[VmRow, TaskInfo]:
        with self.audited(who, "vm.create", f"vm-name:{name}"):
            validate_vm_name(name)
            with self.db.session() as session:
                host_id, _ = self._placement(
                    session,
                    who,
                    template=template,
                    host_id=host_id,
                    resource_set_id=resource_set_id,
                    pool_id=pool_id,
                )
            driver = self.hosts.driver(host_id)
            tmpl = driver.get_template(template)
            plan = plan_vm(driver.host_info(), tmpl, vcpus=vcpus, memory=memory,
                           max_vcpus=max_vcpus, max_memory=max_memory, disk=disk)  # fmt: skip
            size = plan.size
            row = VmRow(
                id=str(uuid.uuid4()),
                host_id=host_id,
                name=name,
                state="creating",
                pool_id=pool_id,
                resource_set_id=resource_set_id,
                created_by=who.user_id,
                template=template,
                vcpus=size.vcpus,
                max_vcpus=size.max_vcpus,
                memory=size.memory,
                max_memory=size.max_memory,
                disk=plan.disk,
                docker_ready=tmpl.docker_ready,
                managed=True,
                updated=datetime.now(UTC),
            )
            self._reserve_new(who, row)
            task = self._submit(
                who,
                "vm.create",
                row,
                self._create_work(
                    who,
                    row,
                    size,
                    full,
                    start,
                    cold=cold,
                    sized=(max_vcpus, max_memory) != (None, None),
                ),  # fmt: skip
                undo=lambda: self._drop(row.id),
            )
        return row, task

    def _reserve_new(self, who: Principal, row: VmRow) -> None:
        """Insert the row that holds the quota, checking the set's room in the same
        transaction; AlreadyExists if the host has a VM of that name.

        Names are unique per host, so a taken name is taken for everyone; but the
        refusal says no more than that to a caller who cannot view the VM that has it
        (not that it is a VM, nor its id)."""
        taken: str | None = None
        try:
            with self.db.session() as session:
                if row.resource_set_id is not None:
                    set_row = quotas.lock_set(session, row.resource_set_id)
                    quotas.reserve(session, set_row, Resources(row.vcpus, row.memory, row.disk, 1))
                other = session.scalar(
                    select(VmRow).where(VmRow.host_id == row.host_id, VmRow.name == row.name)
                )
                if other is not None:
                    taken = other.id if self.access.allows(who, P.VM_VIEW, chain_of(other)) else ""
                    raise _NameTaken()
                session.add(row)
        except (IntegrityError, _NameTaken):
            if taken:
                raise AlreadyExists(
                    f"a VM named {row.name!r} already exists on this host ({taken})"
                ) from None
            raise AlreadyExists(
                f"the name {row.name!r} is not available on this host; choose another"
            ) from None

    def _drop(self, vm_id: str) -> None:
        with self.db.session() as session:
            row = session.get(VmRow, vm_id)
            if row is not None:
                session.execute(delete(AclEntryRow).where(AclEntryRow.path == f"/vms/{vm_id}"))
                session.delete(row)
        self.access.invalidate()

    def _adopt(self, who: Principal, row_id: str, vm: VM) -> None:
        with self.db.session() as session:
            row = session.get(VmRow, row_id)
            assert row is not None
            apply_vm(row, vm)
            self._grant_creator(session, who, row)
        self.access.invalidate()
        with self.db.session() as session:
            row = session.get(VmRow, row_id)
            if row is not None:
                self.inventory.publish(row, "created")

    def _create_work(
        self, who: Principal, row: VmRow, size: Any, full: bool, start: bool, *,
        cold: bool = False, sized: bool = False,
    ) -> Callable[[TaskContext], dict[str, Any]]:  # fmt: skip
        driver = self.hosts.driver(row.host_id)

        def work(ctx: TaskContext) -> dict[str, Any]:
            vm = vm_service.create_vm_from_template(
                driver,
                name=row.name,
                template=row.template or "",
                vcpus=size.vcpus,
                memory=size.memory,
                max_vcpus=size.max_vcpus if sized else None,
                max_memory=size.max_memory if sized else None,
                disk=row.disk,
                full=full,
                start=start,
                progress=ctx.progress,
                engines=self.engines,
                cold=cold,
            )
            self._adopt(who, row.id, vm)
            if not cold and row.template:
                self.refiller.request(row.host_id, row.template)
            return {"vm": row.id}

        return work

    def clone_vm(
        self, who: Principal, vm_id: str, *, name: str, full: bool = False, start: bool = False
    ) -> tuple[VmRow, TaskInfo]:
        with self.audited(who, "vm.clone", f"vm:{vm_id}"):
            validate_vm_name(name)
            source = self.vm_row(who, vm_id, P.VM_CLONE)
            if source.state != PowerState.STOPPED.value:
                self._able(source, Capability.CLONE_RUNNING, "clone a running VM")
            if source.resource_set_id is None:
                self.access.require(who, P.VM_ALLOCATE, ("/", f"/hosts/{source.host_id}"))
            row = VmRow(
                id=str(uuid.uuid4()),
                host_id=source.host_id,
                name=name,
                state="creating",
                pool_id=source.pool_id,
                resource_set_id=source.resource_set_id,
                created_by=who.user_id,
                template=source.template,
                vcpus=source.vcpus,
                max_vcpus=source.max_vcpus,
                memory=source.memory,
                max_memory=source.max_memory,
                disk=source.disk,
                docker_ready=source.docker_ready,
                managed=True,
                updated=datetime.now(UTC),
            )
            self._reserve_new(who, row)
            driver = self.hosts.driver(row.host_id)

            def work(ctx: TaskContext) -> dict[str, Any]:
                vm = vm_service.clone_vm(
                    driver,
                    vm_ref(source),
                    name,
                    full=full,
                    start=start,
                    progress=ctx.progress,
                    engines=self.engines,
                )
                self._adopt(who, row.id, vm)
                return {"vm": row.id}

            # The clone's task holds the source's lock too: no revert under its feet.
            task = self._submit(
                who,
                "vm.clone",
                row,
                work,
                undo=lambda: self._drop(row.id),
                locks=[f"vm:{source.id}"],
            )
        return row, task

    # -- changes to an existing VM ---------------------------------------------------

    def set_power(self, who: Principal, vm_id: str, action: str) -> TaskInfo:
        with self.audited(who, f"vm.{action}", f"vm:{vm_id}"):
            if action not in POWER_ACTIONS:
                raise InvalidInput(f"unknown action {action!r} (use {', '.join(POWER_ACTIONS)})")
            row = self.vm_row(who, vm_id, P.VM_POWER_MGMT)
            driver = self.hosts.driver(row.host_id)
            steps: dict[str, Callable[[TaskContext], object]] = {
                "start": lambda ctx: vm_service.start_vm(
                    driver, vm_ref(row), progress=ctx.progress, engines=self.engines
                ),
                "stop": lambda ctx: vm_service.stop_vm(driver, vm_ref(row)),
                "kill": lambda ctx: vm_service.kill_vm(driver, vm_ref(row)),
                "reboot": lambda ctx: vm_service.reboot_vm(
                    driver, vm_ref(row), engines=self.engines
                ),
            }

            def work(ctx: TaskContext) -> dict[str, Any]:
                try:
                    steps[action](ctx)
                finally:
                    self._refresh(row)
                return {"vm": row.id}

            return self._submit(who, f"vm.{action}", row, work)

    def delete_vm(self, who: Principal, vm_id: str, *, force: bool = False) -> TaskInfo:
        with self.audited(who, "vm.delete", f"vm:{vm_id}"):
            row = self.vm_row(who, vm_id, P.VM_DELETE)
            driver = self.hosts.driver(row.host_id)

            def work(ctx: TaskContext) -> dict[str, Any]:
                vm_service.delete_vm(driver, vm_ref(row), force=force)
                self._drop(row.id)
                self.inventory.publish(row, "deleted")
                return {"vm": row.id}

            return self._submit(who, "vm.delete", row, work)

    def resize_vm(
        self,
        who: Principal,
        vm_id: str,
        *,
        vcpus: int | None = None,
        memory: int | None = None,
        disk: int | None = None,
    ) -> TaskInfo:
        with self.audited(who, "vm.resize", f"vm:{vm_id}"):
            row = self.vm_row(who, vm_id)
            if vcpus is not None:
                self.access.require(who, P.VM_CONFIG_CPU, chain_of(row))
            if memory is not None:
                self.access.require(who, P.VM_CONFIG_MEMORY, chain_of(row))
            if disk is not None:
                self.access.require(who, P.VM_CONFIG_DISK, chain_of(row))
            self._check_growth(who, row, vcpus, memory)
            driver = self.hosts.driver(row.host_id)
            host = driver.host_info()
            if disk is None or vcpus is not None or memory is not None:
                check_resize(host, vcpus=vcpus, memory=memory)
            if disk is not None:
                growth = check_disk_growth(row.name, row.disk, disk)
                if growth:
                    self._able(row, Capability.DISK_GROWTH, "grow disks")
                    if row.state != PowerState.STOPPED.value:
                        self._able(row, Capability.LIVE_DISK_GROWTH,
                                   "grow the disk of a running VM (stop it first)")  # fmt: skip
                    self._check_disk_growth(who, row)
                    check_storage_room(host, growth)
            # The growth, reserved before doing it.
            undo = self._reserve_size(row, vcpus, memory, disk)

            def work(ctx: TaskContext) -> dict[str, Any]:
                result = vm_service.resize_vm(
                    driver, vm_ref(row), vcpus=vcpus, memory=memory, disk=disk
                )
                self._refresh(row)
                return {
                    "vm": row.id,
                    "applied": result.applied,
                    "pending": result.pending,
                    "reasons": result.reasons,
                }

            return self._submit(who, "vm.resize", row, work, undo=undo)

    def _check_growth(
        self, who: Principal, row: VmRow, vcpus: int | None, memory: int | None
    ) -> None:
        """Growing a VM within its maximums (the room its creator gave it) is the
        resize privileges' to do. Beyond them the host gives more than was planned for
        the VM: that takes what creating a VM there takes (VM.Allocate on the host), or,
        for a VM of a resource set, being able to allocate in the set (its quota bounds
        it)."""
        beyond = (vcpus is not None and vcpus > row.max_vcpus) or (
            memory is not None and memory > row.max_memory
        )
        if not beyond:
            return
        if row.resource_set_id is not None and self.access.may_allocate_in(
            who, row.resource_set_id
        ):
            return
        if not self.access.allows(who, P.VM_ALLOCATE, ("/", f"/hosts/{row.host_id}")):
            raise Forbidden(
                f"{who.name} lacks VM.Allocate on /hosts/{row.host_id}: {row.name} may grow "
                f"to {row.max_vcpus} vCPUs and {format_size(row.max_memory)} without it"
            )

    def _check_disk_growth(self, who: Principal, row: VmRow) -> None:
        """A larger disk takes from a quota or from the host's storage, never given back
        but by a revert: for a VM of a resource set it takes being able to allocate in
        the set (its subjects; a delegate of one VM may not spend the set's quota), and
        outside any set, where nothing bounds it but the host's storage, VM.Allocate on
        the host."""
        if row.resource_set_id is not None:
            if self.access.may_allocate_in(who, row.resource_set_id):
                return
            raise Forbidden(
                f"{who.name} may not allocate in the resource set of {row.name}: growing its "
                "disk takes from the set's quota"
            )
        if not self.access.allows(who, P.VM_ALLOCATE, ("/", f"/hosts/{row.host_id}")):
            raise Forbidden(
                f"{who.name} lacks VM.Allocate on /hosts/{row.host_id}: {row.name} is in no "
                f"resource set, so only who may allocate on its host can grow its disk"
            )

    def snapshot_vm(
        self, who: Principal, vm_id: str, name: str, description: str = "", *, clean: bool = False
    ) -> TaskInfo:
        """Take a snapshot; `clean` also marks it as the VM's clean state once taken."""
        with self.audited(who, "vm.snapshot", f"vm:{vm_id}"):
            validate_snapshot_name(name)
            row = self.vm_row(who, vm_id, P.VM_SNAPSHOT)
            driver = self._able(row, Capability.SNAPSHOTS, "take snapshots")
            with self.db.session() as session:  # a snapshot's disk counts if the set says so
                locked = session.get(VmRow, row.id)
                assert locked is not None
                if locked.resource_set_id is not None:
                    set_row = quotas.lock_set(session, locked.resource_set_id)
                    if set_row.count_snapshots:
                        quotas.reserve(session, set_row, Resources(disk=locked.disk))
                locked.snapshots += 1

            def work(ctx: TaskContext) -> dict[str, Any]:
                snap = vm_service.snapshot_vm(driver, vm_ref(row), name, description=description)
                if clean:
                    with self.db.session() as session:
                        locked = session.get(VmRow, row.id)
                        if locked is not None:
                            locked.clean_snapshot = snap.name
                self._refresh(row)
                return {"vm": row.id, "snapshot": snap.name}

            return self._submit(who, "vm.snapshot", row, work, undo=lambda: self._refresh(row))

    def revert_vm(self, who: Principal, vm_id: str, snapshot: str) -> TaskInfo:
        with self.audited(who, "vm.revert", f"vm:{vm_id}"):
            row = self.vm_row(who, vm_id, P.VM_SNAPSHOT_ROLLBACK)
            driver = self._able(row, Capability.SNAPSHOTS, "revert to snapshots")
            snaps = {s.name: s for s in driver.list_snapshots(vm_ref(row))}
            if snapshot not in snaps:
                raise NotFound(f"VM {row.name!r} has no snapshot {snapshot!r}")
            will_run = snaps[snapshot].power_state is PowerState.RUNNING
            if will_run and row.state != PowerState.RUNNING.value:
                # Reverting would power the VM on: that takes the power privilege too
                # (as Proxmox's rollback with "start").
                self.access.require(who, P.VM_POWER_MGMT, chain_of(row))
            taken = snaps[snapshot]
            undo = self._reserve_size(row, taken.vcpus, taken.memory, taken.disk_size)

            def work(ctx: TaskContext) -> dict[str, Any]:
                try:
                    vm_service.revert_to_snapshot(
                        driver, vm_ref(row), snapshot, progress=ctx.progress, engines=self.engines
                    )
                finally:
                    self._refresh(row)
                return {"vm": row.id, "snapshot": snapshot}

            return self._submit(who, "vm.revert", row, work, undo=undo)

    def _reserve_size(
        self, row: VmRow, vcpus: int | None, memory: int | None, disk: int | None = None
    ) -> Callable[[], None]:
        """Reserve what the VM is about to grow to, in its resource set in the same
        transaction, or refuse (QuotaExceeded) with nothing changed. The row holds the
        larger of now and then for each resource until the work ends and the row is read
        back from the hypervisor: what shrinks (a revert to a smaller snapshot) is given
        back only once it has, never by a request that may yet be refused (Busy). What it
        returns puts the row back if the work then fails."""
        with self.db.session() as session:
            locked = session.get(VmRow, row.id)
            if locked is None:
                raise NotFound(f"no VM {row.id}")
            before = (locked.vcpus, locked.memory, locked.disk)
            after = (vcpus or locked.vcpus, memory or locked.memory, disk or locked.disk)
            held = tuple(max(a, b) for a, b in zip(after, before, strict=True))
            if locked.resource_set_id is not None:
                set_row = quotas.lock_set(session, locked.resource_set_id)
                growth = Resources(*(h - b for h, b in zip(held, before, strict=True)))
                if set_row.count_snapshots:  # the VM's snapshots count at its disk's size
                    growth += Resources(disk=growth.disk * locked.snapshots)
                quotas.reserve(session, set_row, growth)
            locked.vcpus, locked.memory, locked.disk = held

        def undo() -> None:
            with self.db.session() as session:
                again = session.get(VmRow, row.id)
                if again is not None:
                    again.vcpus, again.memory, again.disk = before
            self._refresh(row)

        return undo

    def delete_snapshot(self, who: Principal, vm_id: str, snapshot: str) -> TaskInfo:
        with self.audited(who, "vm.snapshot.delete", f"vm:{vm_id}"):
            row = self.vm_row(who, vm_id, P.VM_SNAPSHOT)
            driver = self.hosts.driver(row.host_id)
            if snapshot not in {s.name for s in driver.list_snapshots(vm_ref(row))}:
                raise NotFound(f"VM {row.name!r} has no snapshot {snapshot!r}")

            def work(ctx: TaskContext) -> dict[str, Any]:
                try:
                    vm_service.delete_snapshot(driver, vm_ref(row), snapshot)
                    with self.db.session() as session:  # a deleted snapshot is clean no more
                        locked = session.get(VmRow, row.id)
                        if locked is not None and locked.clean_snapshot == snapshot:
                            locked.clean_snapshot = None
                finally:
                    self._refresh(row)
                return {"vm": row.id, "snapshot": snapshot}

            return self._submit(who, "vm.snapshot.delete", row, work)

    def mark_clean(self, who: Principal, vm_id: str, snapshot: str | None) -> dict[str, Any]:
        """Name `snapshot` as the VM's clean state (None: no clean state), the one its
        users roll back to after breaking the VM. Needs VM.Snapshot."""
        with self.audited(who, "vm.clean-snapshot", f"vm:{vm_id}"):
            row = self.vm_row(who, vm_id, P.VM_SNAPSHOT)
            if snapshot is not None:
                driver = self.hosts.driver(row.host_id)
                if snapshot not in {s.name for s in driver.list_snapshots(vm_ref(row))}:
                    raise NotFound(f"VM {row.name!r} has no snapshot {snapshot!r}")
            with self.db.session() as session:
                locked = session.get(VmRow, row.id)
                if locked is None:
                    raise NotFound(f"no VM {vm_id}")
                locked.clean_snapshot = snapshot
                data = vm_data(locked)
                event = self.inventory.event(locked, "updated")
            self.inventory.announce([event])  # once committed
            return data

    def live_vm(self, who: Principal, vm_id: str) -> VM:
        """The VM as its hypervisor has it now, with what waits for its next boot."""
        row = self.vm_row(who, vm_id)
        return vm_service.get_vm(self.hosts.driver(row.host_id), vm_ref(row))

    # -- after a restart ---------------------------------------------------------------

    def recover(self) -> None:
        """After the tasks of a dead server were failed: rows still "creating" belong to
        creates that never finished. Keep the VM if the hypervisor has it, else drop the
        row (and with it the quota it held)."""
        with self.db.read() as session:
            rows = list(session.scalars(select(VmRow).where(VmRow.state == "creating")))
        for row in rows:
            try:
                vm = self.hosts.driver(row.host_id).get_vm(vm_ref(row))
            except NotFound:
                self._drop(row.id)
                continue
            except DockvisorError:
                continue  # host unreachable: decide at the next start
            with self.db.session() as session:
                current = session.get(VmRow, row.id)
                if current is None:
                    continue
                apply_vm(current, vm)
                creator = session.get(UserRow, current.created_by) if current.created_by else None
                if creator is not None:  # as a create that finished would have
                    self._grant_creator(session, principal_for(session, creator, "local"), current)
            self.access.invalidate()
