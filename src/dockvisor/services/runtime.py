"""The control plane: the services of a dockvisor server, wired together.

One `ControlPlane` per server process: the database (migrated on start), the access
policy, the audit log, the event broker, the task runner, the hosts with their drivers,
the inventory and the VM operations. `start` first repairs what a previous process left
(interrupted tasks, half-made VMs, stale locks), then reconciles the inventory with the
hypervisors and follows their events.

The data directory holds the SQLite database, the audit key and head file and the
engine CA keys: it is made 0700, and narrowed to that at start if an older version made
it wider (a note on stderr says so).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from dockvisor.drivers.registry import open_driver
from dockvisor.errors import InvalidInput
from dockvisor.paths import data_dir
from dockvisor.services.access import AccessPolicy, ensure_builtin_roles
from dockvisor.services.audit import AuditFiles, AuditLog
from dockvisor.services.consoles import Consoles
from dockvisor.services.docker import DockerOperations
from dockvisor.services.engines import EngineAccess
from dockvisor.services.events import EventBroker
from dockvisor.services.guard import Guard
from dockvisor.services.host_secrets import CredentialVault
from dockvisor.services.identity import RecentTokens
from dockvisor.services.inventory import DriverFactory, Hosts, Inventory
from dockvisor.services.login import LoginThrottle
from dockvisor.services.metrics import Metrics
from dockvisor.services.operations import Operations
from dockvisor.services.tasks import TaskRunner
from dockvisor.store.db import Database, default_url, restrict_mode
from dockvisor.store.models import HostRow

__all__ = ["ControlPlane", "Settings", "prepare_data_dir", "tell", "trusted_proxy_list"]


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    default_host: tuple[str, str] | None = None  # (name, URI) registered if none is
    reconcile_every: float = 30.0
    metrics_every: float = 10.0  # seconds between two samples of the VMs' graphs
    acl_ttl: float = 1.0
    # Tests only: the directory whose files may back `test:///FILE` hosts (none: no such
    # host can be added; see domain/host_uri.py).
    test_host_files: Path | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto
    # are believed. None by default: the client is whoever opened the TCP connection
    # (a guest reaching the host's loopback must not name another address).
    trusted_proxies: tuple[str, ...] = ()
    # The audit key and head file (services/audit.py); default: in the data directory.
    # Every process writing to one database needs the same two files.
    audit_key_file: Path | None = None
    audit_head_file: Path | None = None

    @property
    def audit_files(self) -> AuditFiles:
        return AuditFiles(
            self.audit_key_file or self.data_dir / "audit.key",
            self.audit_head_file or self.data_dir / "audit.head",
        )

    @property
    def template_images(self) -> Path:
        """Where template images added through the API must be (services/admin.py)."""
        return self.data_dir / "template-images"

    @staticmethod
    def from_environment(
        *,
        data: str | None = None,
        database_url: str | None = None,
        default_host: tuple[str, str] | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> Settings:
        """Settings from the arguments, else DOCKVISOR_DATABASE_URL,
        DOCKVISOR_TRUSTED_PROXIES (comma- or space-separated), DOCKVISOR_AUDIT_KEY_FILE,
        DOCKVISOR_AUDIT_HEAD_FILE, else the defaults."""
        directory = Path(data) if data else data_dir()
        url = database_url or os.environ.get("DOCKVISOR_DATABASE_URL") or default_url(directory)
        proxies = tuple(trusted_proxies) or tuple(
            os.environ.get("DOCKVISOR_TRUSTED_PROXIES", "").replace(",", " ").split()
        )
        key = os.environ.get("DOCKVISOR_AUDIT_KEY_FILE")
        head = os.environ.get("DOCKVISOR_AUDIT_HEAD_FILE")
        return Settings(
            directory,
            url,
            default_host,
            trusted_proxies=trusted_proxy_list(proxies),
            audit_key_file=Path(key) if key else None,
            audit_head_file=Path(head) if head else None,
        )


def trusted_proxy_list(values: Iterable[str]) -> tuple[str, ...]:
    """Each value an IP address or network (203.0.113.7, 10.1.0.0/16, ::1); InvalidInput
    otherwise (a host name or `*` would let anyone name their own address)."""
    checked = []
    for value in values:
        value = value.strip()
        try:
            if "/" in value:
                checked.append(str(ipaddress.ip_network(value, strict=False)))
            else:
                checked.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise InvalidInput(f"trusted proxy {value!r} is not an IP address or network") from None
    return tuple(checked)


def prepare_data_dir(directory: Path) -> list[str]:
    """The data directory exists with mode 0700; notes of what had to be narrowed."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    note = restrict_mode(directory, 0o700)
    return [note] if note else []


def tell(notes: Iterable[str]) -> None:
    """Tell the operator, on stderr, what start made or changed."""
    for note in notes:
        print(f"dockvisor: {note}", file=sys.stderr, flush=True)


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        *,
        driver_factory: DriverFactory = open_driver,
    ) -> None:
        notices = prepare_data_dir(settings.data_dir)
        self.settings = settings
        self.db = Database(settings.database_url)
        notices += self.db.notices
        self.db.migrate()
        with self.db.session() as session:
            ensure_builtin_roles(session)
        self.broker = EventBroker()
        self.audit = AuditLog(self.db, settings.audit_files)
        notices += self.audit.prepare()
        tell(notices)
        self.access = AccessPolicy(self.db, ttl=settings.acl_ttl)
        self.recent_tokens = RecentTokens(settings.acl_ttl)
        self.access.on_invalidate.append(self.recent_tokens.clear)
        self.tasks = TaskRunner(self.db, self.broker, self.audit)
        self.hosts = Hosts(
            self.db,
            driver_factory,
            CredentialVault(settings.data_dir / "host-credentials.key"),
            test_files=settings.test_host_files,
        )
        self.inventory = Inventory(self.db, self.hosts, self.broker)
        self.engines = EngineAccess.at(settings.data_dir)
        self.ops = Operations(
            self.db, self.hosts, self.inventory, self.access, self.tasks, self.audit, self.engines
        )
        self.docker = DockerOperations(self.ops, self.engines, self.broker)
        self.metrics = Metrics(self.ops, self.docker, period=settings.metrics_every)
        self.guard = Guard(self.db, self.access)
        self.throttle = LoginThrottle()
        # "tcp://HOST:PORT" of the engine gateway for the docker CLI, once one listens.
        self.engine_gateway_url: str | None = None
        # Set when the server begins to stop: streams and waits end by themselves then.
        self.stopping = threading.Event()
        # Console tickets and open consoles, the same for the API and the web pages.
        self.consoles = Consoles(self.ops, self.stopping)

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
            self.metrics.start()

    def begin_stopping(self) -> None:
        """The server has been asked to stop: streams and waits end now, by themselves."""
        self.stopping.set()
        self.tasks.wake_all()
        self.docker.end_streams()

    def stop(self) -> None:
        self.begin_stopping()
        self.docker.close()
        self.inventory.stop()
        self.metrics.stop()
        self.tasks.shutdown()
        self.hosts.close()
        self.db.dispose()
