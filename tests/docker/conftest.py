"""A real dockvisor server on qemu:///system with one real Docker-ready VM, its engine
gateway for the stock docker CLI, and users holding each role on that VM.

The VM boots once for the whole package (about 40 s under emulation); every test works
on its own containers in it and removes them. The server, its data directory (and so its
PKI) and the VM are this package's own, and are removed even when tests fail.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dockvisor.api.docker_routes import ServerGatewayPolicy
from dockvisor.api.engine_gateway import EngineGateway
from dockvisor.domain.sizes import MiB
from dockvisor.engines.docker import DockerEngine
from dockvisor.errors import DockvisorError
from dockvisor.services import identity
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import AclEntryRow, RoleRow
from tests.real_server import real_server, succeeded

pytestmark = pytest.mark.vm

# Who holds what on the VM (Admin holds everything on /).
ROLES = {
    "dev": "Developer",
    "operator": "Operator",
    "viewer": "Viewer",
    "vmonly": "VmOnly",  # a custom role: VM.View and nothing of Docker
    "execonly": "ExecOnly",  # a custom role: Docker.View and Docker.Exec, no Manage
    "manageonly": "ManageOnly",  # a custom role: Docker.View and Docker.Manage, no Exec
    "outsider": None,  # nothing anywhere
}
CUSTOM_ROLES = {
    "VmOnly": (["VM.View"], "sees the VM, not its containers"),
    "ExecOnly": (["VM.View", "Docker.View", "Docker.Exec"], "exec, not manage"),
    "ManageOnly": (["VM.View", "Docker.View", "Docker.Manage"], "manage, not exec"),
}


@dataclass
class DockerStack:
    cp: ControlPlane
    url: str
    gateway: str  # tcp://127.0.0.1:PORT
    vm_id: str
    vm_name: str
    stopped_vm_id: str  # a Docker-ready VM that is not running
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> str:
        """The server's data directory (its engine PKI): for the CLI on the host."""
        return str(self.cp.settings.data_dir)

    def client(self, user: str, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=kwargs.pop("timeout", 60),
            trust_env=False,
            **kwargs,
        )

    def docker(self, vm_id: str | None = None) -> str:
        return f"/vms/{vm_id or self.vm_id}/docker"

    def audit(self, action: str) -> list[dict[str, Any]]:
        """Audit entries with this action, newest first."""
        with self.client("admin") as c:
            entries = c.get("/audit", params={"limit": 500}).json()
        rows = entries if isinstance(entries, list) else entries["entries"]
        return [e for e in rows if e["action"] == action]


@pytest.fixture(scope="package")
def stack(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    """For this package only: its VMs are removed as soon as its last test is done."""
    with real_server(tmp_path_factory, "docker-server") as server:
        cp, url = server.cp, server.url
        gateway = EngineGateway(ServerGatewayPolicy(cp), port=0)
        gateway.start()
        cp.engine_gateway_url = f"tcp://127.0.0.1:{gateway.port}"
        try:
            tokens = _users(cp)
            admin = httpx.Client(
                base_url=f"{url}/api/v1",
                headers={"Authorization": f"Bearer {tokens['admin']}"},
                timeout=60,
                trust_env=False,
            )
            name = f"{run_prefix}dock-{secrets.token_hex(2)}"
            stopped = f"{run_prefix}dock-{secrets.token_hex(2)}"
            server.vms += [name, stopped]
            body = {"template": "docker-ready", "vcpus": 2, "memory": 1024 * MiB}
            first = admin.post("/vms", json={**body, "name": name}).json()
            second = admin.post("/vms", json={**body, "name": stopped, "start": False}).json()
            succeeded(admin, second)
            succeeded(admin, first)
            vm_id, stopped_id = first["object_id"], second["object_id"]
            _grant(cp, vm_id)
            _grant(cp, stopped_id)
            admin.close()
            yield DockerStack(cp, url, cp.engine_gateway_url, vm_id, name, stopped_id, tokens)
        finally:
            gateway.stop()


def _users(cp: ControlPlane) -> dict[str, str]:
    tokens = {}
    with cp.db.session() as session:
        for role, (privileges, description) in CUSTOM_ROLES.items():
            session.add(RoleRow(name=role, privileges=privileges, builtin=False,
                                description=description))  # fmt: skip
    with cp.db.session() as session:
        for user in ("admin", *ROLES):
            row = identity.create_user(session, user, f"{user}-password-1")
            if user == "admin":
                session.add(
                    AclEntryRow(
                        subject_kind="user",
                        subject_id=row.id,
                        path="/",
                        role="Admin",
                        propagate=True,
                    )  # fmt: skip
                )
            _, tokens[user] = identity.create_token(session, row, "tests")
    cp.access.invalidate()
    return tokens


def _grant(cp: ControlPlane, vm_id: str) -> None:
    with cp.db.session() as session:
        for user, role in ROLES.items():
            if role is None:
                continue
            row = identity.user_by_name(session, user)
            session.add(
                AclEntryRow(
                    subject_kind="user",
                    subject_id=row.id,
                    path=f"/vms/{vm_id}",
                    role=role,
                    propagate=True,
                )  # fmt: skip
            )
    cp.access.invalidate()


# Every container the engine-client tests make carries this label; each test's teardown
# removes them.
TEST_LABEL = "dockvisor.test"


@pytest.fixture
def engine(stack: DockerStack) -> Iterator[DockerEngine]:
    """dockvisor's own client of the VM's engine (mutual TLS, the engine's name checked);
    the test's labelled containers are removed after it."""
    client = stack.cp.docker.engine_of(stack.vm_id)
    yield client
    for container in client.containers(all=True, filters={"label": [TEST_LABEL]}):
        with suppress(DockvisorError):
            client.remove(container["Id"], force=True, volumes=True)


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.2)
