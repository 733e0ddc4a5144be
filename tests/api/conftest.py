"""Fixtures for the server: a control plane on SQLite or PostgreSQL, served for real by
uvicorn on 127.0.0.1, with libvirt's test driver as its host and a set of users.

PostgreSQL comes from Debian's packages: a throwaway cluster is started on loopback for
the session (as the `postgres` system user) and each test gets a fresh database.
"""

from __future__ import annotations

import glob
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dockvisor.api.app import create_app
from dockvisor.domain.model import TemplateSpec
from dockvisor.domain.sizes import MiB
from dockvisor.services import identity
from dockvisor.services.runtime import ControlPlane, Settings
from dockvisor.store.models import AclEntryRow

TEMPLATE = "docker-ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for this test session: its base URL."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        raise RuntimeError("PostgreSQL is not installed (make test installs it: postgresql)")
    bindir = bindirs[-1]
    root = Path(tempfile.mkdtemp(prefix="dockvisor-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def as_postgres(*argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, text=True
        )

    as_postgres(f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres(
        f"{bindir}/pg_ctl",
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200",
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{bindir}/pg_ctl",
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_postgres_database(base: str) -> str:
    import psycopg

    name = f"dv_{secrets.token_hex(4)}"
    dsn = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dockvisor.db'}"
    return fresh_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dockvisor.db'}"


# -- the server ---------------------------------------------------------------------------


# A private instance of libvirt's test driver: test:///default is one per process, shared.
NODE = """<node><cpu><mhz>2000</mhz><model>x86_64</model><active>16</active><nodes>1</nodes>
<sockets>1</sockets><cores>16</cores><threads>1</threads></cpu><memory>67108864</memory></node>
"""


def make_control_plane(data: Path, database_url: str) -> ControlPlane:
    """A control plane whose one host is a private test-driver node (16 CPUs, 64 GiB) with
    a template."""
    node = data / "node.xml"
    node.write_text(NODE)
    settings = Settings(
        data_dir=data,
        database_url=database_url,
        default_host=("local", f"test://{node}"),
        reconcile_every=3600,
        test_host_files=data,
    )
    cp = ControlPlane(settings)
    cp.start(follow=False)
    disk = data / "blank.qcow2"
    if not disk.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    driver = cp.hosts.driver(1)
    if TEMPLATE not in [t.name for t in driver.list_templates()]:
        driver.register_template(TemplateSpec(name=TEMPLATE, disk=str(disk), docker_port=None))
    return cp


@dataclass
class Server:
    cp: ControlPlane
    url: str
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, int] = field(default_factory=dict)

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=60, trust_env=False
        )

    def add_user(
        self, name: str, *, role: str | None = None, path: str = "/", password: str | None = None
    ) -> httpx.Client:
        """A user with an API token and, if `role`, that role on `path`."""
        with self.cp.db.session() as session:
            user = identity.create_user(session, name, password or f"{name}-password")
            if role:
                session.add(
                    AclEntryRow(
                        subject_kind="user",
                        subject_id=user.id,
                        path=path,
                        role=role,
                        propagate=True,
                    )
                )
            _, secret = identity.create_token(session, user, "tests")
            self.user_ids[name] = user.id
        self.cp.access.invalidate()
        self.tokens[name] = secret
        return self.client(name)

    def wait(self, client: httpx.Client, task: dict[str, object]) -> dict[str, object]:
        """The task once ended (it must be visible to `client`)."""
        deadline = time.monotonic() + 60
        while True:
            done = client.get(f"/tasks/{task['id']}/wait", params={"timeout": 10}).json()
            if done["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return dict(done)


def serve(cp: ControlPlane) -> tuple[uvicorn.Server, threading.Thread, str]:
    """`cp` served by uvicorn on 127.0.0.1, with the settings `dockvisor serve` gives it
    for who the client is (its trusted proxies: none unless the test's Settings say)."""
    from dockvisor.api.security import client_address_options

    port = free_port()
    config = uvicorn.Config(
        create_app(cp),
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="off",
        **client_address_options(cp.settings.trusted_proxies),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    """A live server on SQLite and on PostgreSQL, with user `admin` (Admin on /)."""
    yield from _server(tmp_path, database_url)


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> Iterator[Server]:
    """A live server on SQLite only (for tests whose subject is not the store)."""
    yield from _server(tmp_path, sqlite_url)


def _server(tmp_path: Path, url: str) -> Iterator[Server]:
    cp = make_control_plane(tmp_path, url)
    uv, thread, base = serve(cp)
    srv = Server(cp, base)
    srv.add_user("admin", role="Admin")
    try:
        yield srv
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()


# -- helpers shared by the API tests ---------------------------------------------------------

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An application/problem+json error with this status and code (and never a 5xx)."""
    assert response.status_code < 500, (response.request.url, response.text)
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert (body["status"], body["code"]) == (status, code), body
    return dict(body)


def create_vm(server: Server, client: httpx.Client, name: str) -> str:
    """A running VM made through the API by `client`; its id."""
    response = client.post(
        "/vms", json={"name": name, "template": TEMPLATE, "vcpus": 1, "memory": 512 * MiB}
    )
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return str(task["object_id"])
