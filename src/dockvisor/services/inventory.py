"""The inventory: which VMs exist on which host, kept in step with the hypervisors.

Each host has one open driver. libvirt's domain events refresh a VM's row within a
second of a change; a periodic reconcile repairs whatever events missed, so a VM created
or deleted behind dockvisor's back appears or disappears. VM rows also carry what only
dockvisor knows: its pool, its resource set, who created it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dockvisor.domain.acl import normalize_path, vm_chain
from dockvisor.domain.host_uri import check_host_uri
from dockvisor.domain.model import VM, Capability, HostInfo
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.drivers.registry import HostCredentials, family_of
from dockvisor.errors import (
    AlreadyExists,
    DockvisorError,
    HypervisorUnreachable,
    InvalidInput,
    NotFound,
)
from dockvisor.services.events import Event, EventBroker
from dockvisor.services.host_secrets import CredentialVault
from dockvisor.store.db import Database
from dockvisor.store.models import AclEntryRow, HostRow, PoolRow, ResourceSetRow, VmRow

__all__ = [
    "VM_FIELDS",
    "DriverFactory",
    "HostHealth",
    "Hosts",
    "Inventory",
    "ReconcileReport",
    "apply_vm",
    "chain_of",
    "chain_of_path",
    "vm_data",
    "vm_ref",
]

DriverFactory = Callable[[str, HostCredentials | None], HypervisorDriver]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostHealth:
    """Whether a host answered the last time dockvisor asked it something."""

    state: str  # "connected", "unreachable", or "unknown" (not asked yet)
    since: datetime


def chain_of(row: VmRow) -> tuple[str, ...]:
    return vm_chain(row.id, row.host_id, row.pool_id)


VM_FIELDS = (
    "id", "name", "host_id", "pool_id", "resource_set_id", "state", "vcpus", "max_vcpus",
    "memory", "max_memory", "disk", "snapshots", "template", "docker_ready", "managed",
    "clean_snapshot",
)  # fmt: skip


def chain_of_path(session: Session, path: str) -> tuple[str, ...]:
    """The inheritance chain of an object path (normalised first): `/`, `/hosts/ID`,
    `/pools/ID`, `/vms/ID` or `/resource-sets/ID`. NotFound if the object does not
    exist, InvalidInput for any other path."""
    path = normalize_path(path)
    if path == "/":
        return ("/",)
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] not in ("hosts", "pools", "vms", "resource-sets"):
        raise InvalidInput(
            f"ACL path {path!r} is not one of /, /hosts/ID, /pools/ID, /vms/ID, /resource-sets/ID"
        )
    kind, key = parts
    if kind == "vms":
        row = session.get(VmRow, key)
        if row is None:
            raise NotFound(f"no VM {key}")
        return chain_of(row)
    model = {"hosts": HostRow, "pools": PoolRow, "resource-sets": ResourceSetRow}[kind]
    if not (key.isdigit() and 1 <= int(key) <= 2**31 - 1) or session.get(model, int(key)) is None:
        raise NotFound(f"no {kind[:-1].replace('-', ' ')} {key}")
    return ("/", path)


def vm_ref(row: VmRow) -> str:
    """How a service names the row's VM to its driver: the hypervisor's id once known
    (names need not be unique on the hypervisor), else the name it is being made with."""
    return row.hv_uuid or row.name


def _row_for(rows: list[VmRow], vm_id: str, name: str) -> VmRow | None:
    """The row of the VM with hypervisor id `vm_id`; failing that, a row of that name
    that has no id yet (being created)."""
    for row in rows:
        if row.hv_uuid == vm_id:
            return row
    return next((r for r in rows if r.hv_uuid is None and r.name == name), None)


def _follow_name(row: VmRow, vm: VM, rows: list[VmRow]) -> bool:
    """Give the row the VM's name if the VM was renamed on the hypervisor and no other
    row has that name; True if it changed."""
    base = row.name.split("~", 1)[0] if row.name.endswith(f"~{vm.uuid[:8]}") else row.name
    if base == vm.name or any(r.name == vm.name for r in rows if r is not row):
        return False
    row.name = vm.name
    return True


def vm_data(row: VmRow) -> dict[str, Any]:
    """A VM row as the API and events show it."""
    return {field: getattr(row, field) for field in VM_FIELDS}


def apply_vm(row: VmRow, vm: VM) -> bool:
    """Copy what the hypervisor says into the row; True if anything changed. Sizes are
    the configured ones (a pending change counts: quotas reserve it)."""
    values = {
        "hv_uuid": vm.uuid,
        "state": vm.power_state.value,
        "vcpus": vm.pending_vcpus or vm.vcpus,
        "max_vcpus": vm.pending_max_vcpus or vm.max_vcpus,
        "memory": vm.pending_memory or vm.memory,
        "max_memory": vm.pending_max_memory or vm.max_memory,
        "disk": vm.disk_size,
        "snapshots": vm.snapshot_count,
        "template": vm.template,
        "docker_ready": vm.docker_ready,
        "managed": vm.managed,
    }
    changed = any(getattr(row, key) != value for key, value in values.items())
    for key, value in values.items():
        setattr(row, key, value)
    if changed:
        row.updated = datetime.now(UTC)
    return changed


@dataclass
class ReconcileReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


class Hosts:
    """The hypervisor hosts this server manages, each with one open driver."""

    def __init__(
        self,
        db: Database,
        factory: DriverFactory,
        vault: CredentialVault,
        *,
        test_files: Path | None = None,
    ) -> None:
        self._db = db
        self._factory = factory
        self._vault = vault
        self._test_files = test_files
        self._drivers: dict[int, HypervisorDriver] = {}
        self._health: dict[int, HostHealth] = {}
        self._infos: dict[int, tuple[float, HostInfo]] = {}  # (when asked, what it said)
        self._lock = threading.Lock()
        self.on_connect: Callable[[int, HypervisorDriver], None] | None = None

    def add(
        self, session: Session, name: str, uri: str, credentials: HostCredentials | None = None
    ) -> HostRow:
        """Connect to the host and record it (its credentials sealed); InvalidInput for a
        URI of another shape or credentials its family does not take (or lacks)."""
        if session.scalar(select(HostRow).where(HostRow.name == name)) is not None:
            raise AlreadyExists(f"a host named {name!r} already exists")
        if session.scalar(select(HostRow).where(HostRow.uri == uri)) is not None:
            raise AlreadyExists(f"host URI {uri} is already registered")
        if not name or len(name) > 64:
            raise InvalidInput("a host name has 1 to 64 characters")
        test_files = PurePosixPath(self._test_files.resolve()) if self._test_files else None
        check_host_uri(uri, test_files=test_files)
        family = family_of(uri)
        if family.needs_credentials and credentials is None:
            raise InvalidInput(f"{uri} is a {family.name} host: give its user and password")
        if not family.needs_credentials and credentials is not None:
            raise InvalidInput(f"{uri} is a {family.name} host: it takes no user or password")
        try:
            driver = self._factory(uri, credentials)
        except InvalidInput:
            raise
        except DockvisorError as exc:
            log.warning("host.connect-failed", extra={"uri": uri, "error": str(exc)})
            if family.plain_errors:
                raise HypervisorUnreachable(str(exc)) from None
            # libvirt's own words stay in the log: they can quote what it read.
            raise HypervisorUnreachable(
                f"cannot connect to {uri}: it refused, did not answer or failed to start "
                "(the server's log has the hypervisor's message)"
            ) from None
        try:
            self._refuse_twice(session, name, driver)
            sealed = self._vault.seal(credentials) if credentials is not None else None
            row = HostRow(name=name, uri=uri, credentials=sealed)
            session.add(row)
            session.flush()
        except BaseException:
            driver.close()  # no connection (nor event follower) is left for a host not added
            raise
        with self._lock:
            self._drivers[row.id] = driver
        if self.on_connect:
            self.on_connect(row.id, driver)
        return row

    def _refuse_twice(self, session: Session, name: str, driver: HypervisorDriver) -> None:
        """AlreadyExists if the hypervisor `driver` reaches is a host already (a pool's
        member added after its master: one pool, two addresses)."""
        try:
            identity = driver.host_info().identity
        except DockvisorError:
            identity = None
        if identity is None:
            return
        for other_id, other_name in session.execute(select(HostRow.id, HostRow.name)).all():
            info = self.info(other_id)
            if info is not None and info.identity == identity:
                raise AlreadyExists(
                    f"{driver.uri} is the hypervisor host {other_name!r} already is "
                    f"({identity}); {name!r} is not added"
                )

    def driver(self, host_id: int) -> HypervisorDriver:
        with self._lock:
            if host_id in self._drivers:
                return self._drivers[host_id]
        with self._db.read() as session:
            row = session.get(HostRow, host_id)
            if row is None:
                raise NotFound(f"no host {host_id}")
            uri, sealed, name = row.uri, row.credentials, row.name
        try:
            credentials = self._vault.open(sealed, name) if sealed else None
            driver = self._factory(uri, credentials)
        except DockvisorError as exc:
            self.answered(host_id, exc)
            raise
        with self._lock:
            existing = self._drivers.setdefault(host_id, driver)
        if existing is driver and self.on_connect:
            self.on_connect(host_id, driver)
        return existing

    def name(self, host_id: int) -> str:
        """The host's name as the admin gave it ("" if there is no such host)."""
        with self._db.read() as session:
            row = session.get(HostRow, host_id)
            return row.name if row is not None else ""

    def health(self, host_id: int) -> HostHealth:
        with self._lock:
            return self._health.get(host_id) or HostHealth("unknown", datetime.now(UTC))

    def info(self, host_id: int, max_age: float = 60.0) -> HostInfo | None:
        """The host's size and kind, asked at most once in `max_age` seconds (it hardly
        changes); None if it does not answer (or did not, last time)."""
        with self._lock:
            known = self._infos.get(host_id)
        if known and time.monotonic() - known[0] < max_age:
            return known[1]
        if self.health(host_id).state == "unreachable":
            return None
        try:
            info = self.driver(host_id).host_info()
        except DockvisorError as exc:
            self.answered(host_id, exc)
            return None
        with self._lock:
            self._infos[host_id] = (time.monotonic(), info)
        return info

    def answered(self, host_id: int, error: BaseException | None = None) -> None:
        """Record how the host answered; log when it stops or starts answering."""
        state = "connected" if error is None else "unreachable"
        with self._lock:
            before = self._health.get(host_id)
            if before is not None and before.state == state:
                return
            self._health[host_id] = HostHealth(state, datetime.now(UTC))
        if error is not None:
            log.warning("host.unreachable", extra={"host": host_id, "error": str(error)})
        elif before is not None and before.state == "unreachable":
            log.info("host.reachable", extra={"host": host_id})

    def ids(self) -> list[int]:
        with self._db.read() as session:
            return list(session.scalars(select(HostRow.id).order_by(HostRow.id)))

    def close(self) -> None:
        with self._lock:
            drivers, self._drivers = list(self._drivers.values()), {}
        for driver in drivers:
            driver.close()


class Inventory:
    def __init__(self, db: Database, hosts: Hosts, broker: EventBroker) -> None:
        self._db = db
        self._hosts = hosts
        self._broker = broker
        self._events: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        hosts.on_connect = self._watch

    # -- events ----------------------------------------------------------------------

    def _watch(self, host_id: int, driver: HypervisorDriver) -> None:
        if Capability.EVENTS not in driver.capabilities:
            return  # the periodic reconcile alone keeps the rows in step
        try:
            driver.watch(lambda vm_id, _what: self._events.put((host_id, vm_id)))
        except DockvisorError as exc:  # the periodic reconcile covers it, later
            log.warning("host.no-events", extra={"host": host_id, "error": str(exc)})

    def start(self, reconcile_every: float = 30.0) -> None:
        """Follow domain events, and reconcile every `reconcile_every` seconds."""
        self._worker = threading.Thread(target=self._follow, name="inventory", daemon=True)
        self._worker.start()
        threading.Thread(
            target=self._periodic, args=(reconcile_every,), name="reconcile", daemon=True
        ).start()
        for host_id in self._hosts.ids():
            with suppress(DockvisorError):  # recorded as the host's state, and logged
                self._hosts.driver(host_id)  # connects, and so subscribes to its events

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)

    def _follow(self) -> None:
        while (item := self._events.get()) is not None:
            host_id, vm_ref = item
            try:  # one bad event must not end the follower; it is logged
                self.refresh_vm(host_id, vm_ref)
            except DockvisorError as exc:
                self._hosts.answered(host_id, exc)
                log.warning("vm.refresh-failed", extra={"host": host_id, "vm": vm_ref,
                                                        "error": str(exc)})  # fmt: skip
            except Exception:
                log.exception("vm.refresh-failed", extra={"host": host_id, "vm": vm_ref})

    def _periodic(self, every: float) -> None:
        while not self._stop.wait(every):
            try:  # nor one failed round the reconciling
                self.reconcile()
            except Exception:
                log.exception("inventory.reconcile-failed")

    def publish(self, row: VmRow, action: str) -> None:
        """Tell subscribers about the row as it is. Only once it is committed: a page
        that hears of a change reads the row at once (use `event` inside a transaction,
        and `announce` after it)."""
        self._broker.publish(self.event(row, action))

    @staticmethod
    def event(row: VmRow, action: str) -> Event:
        return Event("vm", action, f"/vms/{row.id}", chain_of(row), None, vm_data(row))

    def announce(self, events: list[Event]) -> None:
        for event in events:
            self._broker.publish(event)

    # -- reading the hypervisor ------------------------------------------------------

    def refresh_vm(self, host_id: int, vm_ref: str, *, always: bool = False) -> VmRow | None:
        """Bring one VM's row up to date (or remove it if the VM is gone), and say so
        once committed; with `always`, say "updated" even if the row did not change
        (a task ended on it: what it reserved was written when it began).

        `vm_ref` is the VM's id on the hypervisor (its stable UUID), or its name for a
        VM whose id the row does not know yet."""
        driver = self._hosts.driver(host_id)
        try:
            vm: VM | None = driver.get_vm(vm_ref)
        except NotFound:
            vm = None
        events: list[Event] = []
        with self._db.session() as session:
            rows = list(session.scalars(select(VmRow).where(VmRow.host_id == host_id)))
            row = _row_for(rows, vm.uuid if vm else vm_ref, vm.name if vm else vm_ref)
            if row is not None and row.state == "creating":
                return row  # its create task owns it until it ends
            if vm is None:
                if row is not None:
                    events.append(self._forget(session, row))
            else:
                action = "updated"
                if row is None:
                    if any(r.state == "creating" and r.name == vm.name for r in rows):
                        return None  # being made: its create task adopts it
                    row = self._new_row(session, host_id, vm, rows)
                    action = "created"
                renamed = _follow_name(row, vm, rows)
                if apply_vm(row, vm) or renamed or action == "created" or always:
                    session.flush()
                    events.append(self.event(row, action))
        self.announce(events)
        return row if vm is not None else None

    @staticmethod
    def _new_row(session: Session, host_id: int, vm: VM, rows: list[VmRow]) -> VmRow:
        """A row for a VM found on the hypervisor. Its name is the VM's, unless another
        VM of the host has it already (XAPI names are not unique): then the name is
        followed by the start of its id, so each row keeps a handle of its own."""
        taken = {r.name for r in rows}
        name = vm.name if vm.name not in taken else f"{vm.name[:54]}~{vm.uuid[:8]}"
        row = VmRow(
            id=str(uuid.uuid4()), host_id=host_id, name=name, state="", updated=datetime.now(UTC)
        )
        apply_vm(row, vm)
        session.add(row)
        rows.append(row)
        return row

    def _forget(self, session: Session, row: VmRow) -> Event:
        session.execute(delete(AclEntryRow).where(AclEntryRow.path == f"/vms/{row.id}"))
        session.delete(row)
        return self.event(row, "deleted")

    def reconcile(self, host_id: int | None = None) -> ReconcileReport:
        """Make the rows match the hypervisors: add VMs created behind our back, drop the
        ones deleted behind it, update sizes, states and names. Rows and VMs are matched
        by the hypervisor's id, so a VM renamed behind our back keeps its row (and its
        grants), and two VMs sharing a name (XAPI allows it) keep a row each."""
        report = ReconcileReport()
        for hid in [host_id] if host_id is not None else self._hosts.ids():
            try:
                vms = {vm.uuid: vm for vm in self._hosts.driver(hid).list_vms()}
            except DockvisorError as exc:
                self._hosts.answered(hid, exc)
                report.unreachable.append(str(hid))
                continue
            self._hosts.answered(hid)
            events: list[Event] = []
            with self._db.session() as session:
                rows = list(session.scalars(select(VmRow).where(VmRow.host_id == hid)))
                creating = {r.name for r in rows if r.state == "creating"}
                matched: set[str] = set()
                for row in [r for r in rows if r.state != "creating"]:
                    vm = vms.get(row.hv_uuid or "")
                    if vm is None:
                        events.append(self._forget(session, row))
                        rows.remove(row)
                        report.removed.append(row.name)
                        continue
                    matched.add(vm.uuid)
                    renamed = _follow_name(row, vm, rows)
                    if apply_vm(row, vm) or renamed:
                        events.append(self.event(row, "updated"))
                        report.updated.append(row.name)
                for vm in vms.values():
                    if vm.uuid not in matched and vm.name not in creating:
                        row = self._new_row(session, hid, vm, rows)
                        session.flush()
                        events.append(self.event(row, "created"))
                        report.added.append(row.name)
            self.announce(events)
        return report
