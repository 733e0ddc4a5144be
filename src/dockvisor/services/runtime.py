"""The control plane: the services of a dockvisor server, wired together.

One `ControlPlane` per server process: the database (migrated on start), the access
policy, the audit log, the event broker, the task runner, the hosts with their drivers,
the inventory and the VM operations. `start` first repairs what a previous process left
(interrupted tasks, half-made VMs, stale locks), then reconciles the inventory with the
hypervisors and follows their events.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from dockvisor.drivers.base import HypervisorDriver
from dockvisor.paths import data_dir
from dockvisor.services.access import AccessPolicy, ensure_builtin_roles
from dockvisor.services.audit import AuditLog
from dockvisor.services.docker import DockerOperations
from dockvisor.services.engines import EngineAccess
from dockvisor.services.events import EventBroker
from dockvisor.services.identity import LoginThrottle, RecentTokens
from dockvisor.services.inventory import Hosts, Inventory
from dockvisor.services.operations import Operations
from dockvisor.services.tasks import TaskRunner
from dockvisor.store.db import Database, default_url
from dockvisor.store.models import HostRow

__all__ = ["ControlPlane", "Settings"]


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    default_host: tuple[str, str] | None = None  # (name, URI) registered if none is
    reconcile_every: float = 30.0
    acl_ttl: float = 1.0

    @staticmethod
    def from_environment(
        *,
        data: str | None = None,
        database_url: str | None = None,
        default_host: tuple[str, str] | None = None,
    ) -> Settings:
        directory = Path(data) if data else data_dir()
        url = database_url or os.environ.get("DOCKVISOR_DATABASE_URL") or default_url(directory)
        return Settings(directory, url, default_host)


def _libvirt_factory(uri: str) -> HypervisorDriver:
    from dockvisor.drivers.libvirt import LibvirtDriver
    from dockvisor.drivers.libvirt.events import start_event_loop

    start_event_loop()
    return LibvirtDriver(uri)


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        *,
        driver_factory: Callable[[str], HypervisorDriver] = _libvirt_factory,
    ) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.db = Database(settings.database_url)
        self.db.migrate()
        with self.db.session() as session:
            ensure_builtin_roles(session)
        self.broker = EventBroker()
        self.audit = AuditLog(self.db)
        self.access = AccessPolicy(self.db, ttl=settings.acl_ttl)
        self.recent_tokens = RecentTokens(settings.acl_ttl)
        self.access.on_invalidate.append(self.recent_tokens.clear)
        self.tasks = TaskRunner(self.db, self.broker, self.audit)
        self.hosts = Hosts(self.db, driver_factory)
        self.inventory = Inventory(self.db, self.hosts, self.broker)
        self.engines = EngineAccess.at(settings.data_dir)
        self.ops = Operations(
            self.db, self.hosts, self.inventory, self.access, self.tasks, self.audit, self.engines
        )
        self.docker = DockerOperations(self.ops, self.engines, self.broker)
        self.throttle = LoginThrottle()
        # "tcp://HOST:PORT" of the engine gateway for the docker CLI, once one listens.
        self.engine_gateway_url: str | None = None

    def start(self, *, follow: bool = True) -> None:
        if self.settings.default_host is not None:
            with self.db.session() as session:
                if session.scalar(select(HostRow.id).limit(1)) is None:
                    name, uri = self.settings.default_host
                    self.hosts.add(session, name, uri)
        self.tasks.recover()
        self.ops.recover()
        self.inventory.reconcile()
        if follow:
            self.inventory.start(self.settings.reconcile_every)

    def stop(self) -> None:
        self.docker.close()
        self.inventory.stop()
        self.tasks.shutdown()
        self.hosts.close()
        self.db.dispose()
