"""What the store looks like after a crash, and how the next server repairs it; the
inventory following the hypervisor (reconcile and domain events); the audit log's chain
catching an edit made directly in the database. On SQLite and on PostgreSQL.

libvirt's test driver keeps its domains in the connection that made them: each open of
test:///FILE is a new, empty hypervisor. A real hypervisor outlives the dockvisor server
process, so the restart tests use `surviving_hypervisor`: one connection per URI for the
whole test, which a control plane's stop() leaves open (as a server's death leaves
libvirtd running).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

import dockvisor.drivers.libvirt
from dockvisor.domain.model import PowerState, VMSpec
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import AclEntryRow, AuditRow, LockRow, TaskRow, VmRow
from tests.api.conftest import TEMPLATE, Server, make_control_plane, serve

VENV_BIN = Path(sys.executable).parent


# -- helpers ------------------------------------------------------------------------------


class _SurvivingDriver(LibvirtDriver):
    """A LibvirtDriver whose connection stays open when a control plane closes it."""

    def close(self) -> None:
        pass  # the hypervisor outlives the server

    def really_close(self) -> None:
        super().close()


@pytest.fixture
def surviving_hypervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    opened: dict[str, _SurvivingDriver] = {}

    def open_driver(uri: str, **kwargs: Any) -> _SurvivingDriver:
        if uri not in opened:
            opened[uri] = _SurvivingDriver(uri, **kwargs)
        return opened[uri]

    # drivers/registry.py reads LibvirtDriver from this package when it connects.
    monkeypatch.setattr(dockvisor.drivers.libvirt, "LibvirtDriver", open_driver)
    yield
    for driver in opened.values():
        driver.really_close()


@contextmanager
def served(cp: ControlPlane, like: Server | None = None) -> Iterator[Server]:
    """`cp` served over HTTP; with the users and tokens of `like` if given (same store)."""
    uv, thread, url = serve(cp)
    srv = Server(cp, url)
    if like is not None:
        srv.tokens, srv.user_ids = dict(like.tokens), dict(like.user_ids)
    try:
        yield srv
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@contextmanager
def control_plane(data: Path, database_url: str) -> Iterator[ControlPlane]:
    cp = make_control_plane(data, database_url)
    try:
        yield cp
    finally:
        cp.stop()


def eventually(what: Callable[[], Any], expected: Any, within: float = 2.0) -> float:
    """Wait until what() == expected; the seconds it took. Fails after `within`."""
    start = time.monotonic()
    while True:
        value = what()
        if value == expected:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"after {within} s: {value!r}, expected {expected!r}")
        time.sleep(0.02)


def vms_by_name(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/vms")
    assert response.status_code == 200, response.text
    return {vm["name"]: vm for vm in response.json()}


def run(srv: Server, client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    task = srv.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return task


STRAY_XML = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


def running_task(
    session: Any, kind: str, vm_id: str, requester: tuple[int, str], instance: str
) -> str:
    """A task row and its lock as a server that died while running it leaves them."""
    task_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    session.add(
        TaskRow(
            id=task_id,
            kind=kind,
            object_type="vm",
            object_id=vm_id,
            requester_id=requester[0],
            requester=requester[1],
            state="running",
            progress=0.4,
            step="working",
            created=now,
            started=now,
            instance=instance,
        )
    )
    session.add(LockRow(object_key=f"vm:{vm_id}", task_id=task_id, acquired=now))
    return task_id


def creating_row(name: str, set_id: int, created_by: int, *, vcpus: int, memory: int) -> VmRow:
    """The row a create reserves quota with before the hypervisor has the VM."""
    return VmRow(
        id=str(uuid.uuid4()),
        host_id=1,
        name=name,
        state="creating",
        resource_set_id=set_id,
        created_by=created_by,
        template=TEMPLATE,
        vcpus=vcpus,
        max_vcpus=2 * vcpus,
        memory=memory,
        max_memory=2 * memory,
        disk=64 * MiB,
        docker_ready=False,
        managed=True,
        updated=datetime.now(UTC),
    )


# -- a crash mid-task, then a restart ---------------------------------------------------


def crash_leftovers(srv: Server, set_id: int, web_id: str) -> dict[str, str]:
    """Write into the store what a server that died mid-work leaves there, and make the
    hypervisor hold what that server had already done. The ids written."""
    cp = srv.cp
    dead = str(uuid.uuid4())  # the server process that died
    admin = (srv.user_ids["admin"], "admin")
    dev = (srv.user_ids["dev"], "dev")
    # A create that reached the hypervisor (defined there) but not the end of its task.
    cp.hosts.driver(1).create_vm(
        VMSpec(
            name="adopted",
            template=TEMPLATE,
            vcpus=2,
            memory=768 * MiB,
            max_vcpus=4,
            max_memory=1536 * MiB,
        )
    )
    # Its row still has the size it reserved; adoption must take the hypervisor's.
    adopted = creating_row("adopted", set_id, dev[0], vcpus=1, memory=512 * MiB)
    # A create that never reached the hypervisor: its row holds quota for nothing.
    half = creating_row("half", set_id, dev[0], vcpus=2, memory=1024 * MiB)
    with cp.db.session() as session:
        session.add_all([adopted, half])
        session.flush()
        ids = {
            "half": half.id,
            "adopted": adopted.id,
            "revert": running_task(session, "vm.revert", web_id, admin, dead),
            "create-half": running_task(session, "vm.create", half.id, dev, dead),
            "create-adopted": running_task(session, "vm.create", adopted.id, dev, dead),
        }
    return ids


def test_a_restart_repairs_what_a_crash_left(
    surviving_hypervisor: None, tmp_path: Path, database_url: str
) -> None:
    cp1 = make_control_plane(tmp_path, database_url)
    try:
        with served(cp1) as srv1:
            admin = srv1.add_user("admin", role="Admin")
            srv1.add_user("dev")
            team = admin.post(
                "/resource-sets",
                json={
                    "name": "team",
                    "limits": {"vcpus": 16},
                    "templates": [TEMPLATE],
                    "host_ids": [1],
                    "subjects": ["user:dev"],
                },
            ).json()
            web = admin.post(
                "/vms",
                json={
                    "name": "web",
                    "vcpus": 1,
                    "memory": 512 * MiB,
                    "resource_set_id": team["id"],
                },
            )
            web_id = run(srv1, admin, web)["object_id"]
            ids = crash_leftovers(srv1, team["id"], web_id)
            # While that server "runs", the leftovers hold their locks and their quota.
            refused = admin.put(f"/vms/{web_id}/state", json={"action": "stop"})
            assert (refused.status_code, refused.json()["code"]) == (409, "busy")
            held = admin.get(f"/resource-sets/{team['id']}").json()["usage"]
            assert (held["vcpus"], held["memory"], held["vms"]) == (1 + 1 + 2, 2048 * MiB, 3)
    finally:
        cp1.stop()

    with control_plane(tmp_path, database_url) as cp2, served(cp2, like=srv1) as srv2:
        admin = srv2.client("admin")

        # Every task the dead server left running failed as interrupted (each task as
        # its requester sees it: "half" is gone, so only dev still sees its create)...
        dev = srv2.client("dev")
        for key, client in (("revert", admin), ("create-half", dev), ("create-adopted", dev)):
            task = client.get(f"/tasks/{ids[key]}").json()
            assert (task["state"], task["error_code"]) == ("failed", "interrupted"), task
            assert "server stopped while this task ran" in task["error"]
            assert task["finished"] is not None
        # ...and released its locks: the VM takes a power request again.
        with cp2.db.read() as session:
            assert session.scalar(select(func.count()).select_from(LockRow)) == 0
        run(srv2, admin, admin.put(f"/vms/{web_id}/state", json={"action": "stop"}))
        assert admin.get(f"/vms/{web_id}").json()["state"] == "stopped"

        # The create that never reached the hypervisor is gone, with its quota.
        vms = vms_by_name(admin)
        assert sorted(vms) == ["adopted", "web"]
        assert admin.get(f"/vms/{ids['half']}").status_code == 404
        # The one that did is adopted, as the hypervisor has it.
        adopted = vms["adopted"]
        assert adopted["id"] == ids["adopted"]
        assert adopted["state"] == PowerState.STOPPED.value
        assert (adopted["vcpus"], adopted["max_vcpus"]) == (2, 4)
        assert (adopted["memory"], adopted["max_memory"]) == (768 * MiB, 1536 * MiB)
        assert (adopted["resource_set_id"], adopted["template"]) == (team["id"], TEMPLATE)
        used = admin.get(f"/resource-sets/{team['id']}").json()["usage"]
        assert used == {
            "vcpus": 1 + 2,
            "memory": 512 * MiB + 768 * MiB,
            "disk": vms["web"]["disk"] + adopted["disk"],
            "vms": 2,
        }

        # The audit log says so, and its chain holds.
        entries = admin.get("/audit", params={"limit": 1000}).json()
        failed = {
            (e["action"], e["object"])
            for e in entries
            if e["result"] == "failed" and e["detail"] == "interrupted by a server restart"
        }
        assert failed == {
            ("vm.revert", f"vm:{web_id}"),
            ("vm.create", f"vm:{ids['half']}"),
            ("vm.create", f"vm:{ids['adopted']}"),
        }
        verify = admin.get("/audit/verify").json()
        assert verify["ok"] is True, verify
        assert verify["entries"] == len(entries)


def test_an_adopted_half_create_stays_its_creators(
    surviving_hypervisor: None, tmp_path: Path, database_url: str
) -> None:
    """A VM whose create reached the hypervisor before the server died is the creator's
    VM like any other: after the restart adopts it, they can see and use it (it counts
    against their resource set)."""
    cp1 = make_control_plane(tmp_path, database_url)
    try:
        with served(cp1) as srv1:
            admin = srv1.add_user("admin", role="Admin")
            srv1.add_user("dev")
            team = admin.post(
                "/resource-sets",
                json={
                    "name": "team",
                    "templates": [TEMPLATE],
                    "host_ids": [1],
                    "subjects": ["user:dev"],
                },
            ).json()
            web = admin.post("/vms", json={"name": "web", "vcpus": 1, "memory": 512 * MiB})
            ids = crash_leftovers(srv1, team["id"], run(srv1, admin, web)["object_id"])
    finally:
        cp1.stop()

    with control_plane(tmp_path, database_url) as cp2, served(cp2, like=srv1) as srv2:
        dev = srv2.client("dev")
        assert srv2.client("admin").get(f"/vms/{ids['adopted']}").status_code == 200
        response = dev.get(f"/vms/{ids['adopted']}")
        assert response.status_code == 200, response.text
        assert [vm["name"] for vm in dev.get("/vms").json()] == ["adopted"]


# -- the inventory follows the hypervisor ---------------------------------------------


def test_reconcile_adopts_and_forgets_vms_made_behind_its_back(
    tmp_path: Path, database_url: str
) -> None:
    with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
        admin = srv.add_user("admin", role="Admin")
        viewer = srv.add_user("viewer")
        with cp.hosts.driver(1).raw_connection() as conn:  # type: ignore[attr-defined]
            dom = conn.defineXML(STRAY_XML.format(name="stray"))
        assert "stray" not in vms_by_name(admin)  # no events followed, no reconcile yet

        report = cp.inventory.reconcile()
        assert (report.added, report.removed) == (["stray"], [])
        stray = vms_by_name(admin)["stray"]
        assert (stray["state"], stray["vcpus"], stray["memory"]) == ("stopped", 2, 256 * MiB)
        assert (stray["managed"], stray["template"], stray["resource_set_id"]) == (
            False,
            None,
            None,
        )
        path = f"/vms/{stray['id']}"
        grant = admin.post("/acl", json={"subject": "user:viewer", "path": path, "role": "Viewer"})
        assert grant.status_code == 201, grant.text
        assert viewer.get(path).status_code == 200

        dom.undefine()
        report = cp.inventory.reconcile()
        assert (report.added, report.removed) == ([], ["stray"])
        assert "stray" not in vms_by_name(admin)
        assert admin.get(path).status_code == 404
        assert [e for e in admin.get("/acl").json() if e["path"] == path] == []
        with cp.db.read() as session:
            left = session.scalar(
                select(func.count()).select_from(AclEntryRow).where(AclEntryRow.path == path)
            )
        assert left == 0
        # A VM of that name made later is a new VM: the old grant does not come back.
        with cp.hosts.driver(1).raw_connection() as conn:  # type: ignore[attr-defined]
            conn.defineXML(STRAY_XML.format(name="stray"))
        cp.inventory.reconcile()
        assert vms_by_name(admin)["stray"]["id"] != stray["id"]
        assert viewer.get("/vms").json() == []


def test_domain_events_update_the_inventory_without_a_reconcile(
    tmp_path: Path, database_url: str
) -> None:
    with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
        admin = srv.add_user("admin", role="Admin")
        cp.inventory.start(reconcile_every=3600)
        # Count reconciles, to show that the events alone did the work.
        reconciles: list[object] = []
        real_reconcile = cp.inventory.reconcile

        def counted(*args: Any, **kwargs: Any) -> Any:
            reconciles.append(args)
            return real_reconcile(*args, **kwargs)

        cp.inventory.reconcile = counted  # type: ignore[method-assign]

        def state() -> str | None:
            vm = vms_by_name(admin).get("evented")
            return vm["state"] if vm else None

        with cp.hosts.driver(1).raw_connection() as conn:  # type: ignore[attr-defined]
            dom = conn.defineXML(STRAY_XML.format(name="evented"))
            eventually(state, "stopped")  # "defined": the VM appears
            dom.create()
            eventually(state, "running")
            dom.suspend()
            eventually(state, "paused")
            dom.resume()
            eventually(state, "running")
            dom.destroy()
            eventually(state, "stopped")
            dom.undefine()
            eventually(state, None)  # "undefined": it disappears
        assert reconciles == []


# -- the audit log catches edits made in the database -----------------------------------


def audit_verify_cli(data: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKVISOR_DATA_DIR": str(data)}
    env.pop("DOCKVISOR_DATABASE_URL", None)
    return subprocess.run(
        [str(VENV_BIN / "dockvisor"), "--database-url", database_url, "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_audit_entry_changed_in_the_database_breaks_the_chain_there(
    tmp_path: Path, database_url: str
) -> None:
    with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
        admin = srv.add_user("admin", role="Admin")
        for name in ("ann", "bob", "cyd"):
            created = admin.post("/users", json={"name": name, "password": "long-password"})
            assert created.status_code == 201, created.text
        again = admin.post("/users", json={"name": "ann", "password": "long-password"})
        assert again.status_code == 409  # refused requests are audited too
        run(srv, admin, admin.post("/vms", json={"name": "web", "vcpus": 1, "memory": 512 * MiB}))

        entries = admin.get("/audit", params={"limit": 1000}).json()
        entries.sort(key=lambda e: e["id"])
        assert len(entries) >= 6
        intact = admin.get("/audit/verify").json()
        assert intact == {
            "entries": len(entries),
            "ok": True,
            "broken_at": None,
            "reason": "",
            "condition": "intact",
            "keyed_from": entries[0]["id"],
        }
        cli = audit_verify_cli(tmp_path, database_url)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert f"{len(entries)} entries, chain intact" in cli.stdout

        # Someone with database access rewrites what an entry says.
        target = next(e for e in entries if e["object"] == "user:bob")
        with cp.db.session() as session:
            session.execute(
                text("UPDATE audit SET detail = :d WHERE id = :id"),
                {"d": "nothing to see here", "id": target["id"]},
            )
        report = admin.get("/audit/verify").json()
        assert report["ok"] is False
        assert report["broken_at"] == target["id"]
        assert report["reason"] == "entry was changed"
        cli = audit_verify_cli(tmp_path, database_url)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        said = cli.stdout + cli.stderr
        assert f"chain broken at entry {target['id']}: entry was changed" in said

        # Put it back and the chain holds again; remove an entry and it breaks after it.
        with cp.db.session() as session:
            session.execute(
                text("UPDATE audit SET detail = :d WHERE id = :id"),
                {"d": target["detail"], "id": target["id"]},
            )
        assert admin.get("/audit/verify").json()["ok"] is True
        with cp.db.session() as session:
            session.execute(text("DELETE FROM audit WHERE id = :id"), {"id": target["id"]})
            following = session.scalar(
                select(func.min(AuditRow.id)).where(AuditRow.id > target["id"])
            )
        report = admin.get("/audit/verify").json()
        assert (report["ok"], report["broken_at"]) == (False, following)
        assert report["reason"] == "entry before it was changed or removed"
        cli = audit_verify_cli(tmp_path, database_url)
        assert cli.returncode == 1
        assert f"chain broken at entry {following}" in cli.stdout + cli.stderr


@contextmanager
def local_time_zone(zone: str) -> Iterator[None]:
    """Run with this process's local time zone set to `zone` (the server runs in it)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_the_audit_chain_holds_whatever_the_servers_time_zone(
    tmp_path: Path, database_url: str
) -> None:
    with local_time_zone("America/New_York"):
        with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
            admin = srv.add_user("admin", role="Admin")
            created = admin.post("/users", json={"name": "ann", "password": "long-password"})
            assert created.status_code == 201, created.text
            verify = admin.get("/audit/verify").json()
            assert (verify["entries"], verify["ok"], verify["condition"]) == (1, True, "intact")


def test_audit_times_are_absolute(tmp_path: Path, database_url: str) -> None:
    """Each entry's time says when it happened, with its offset from UTC (the API
    describes it as an RFC 3339 date-time)."""
    with local_time_zone("America/New_York"):
        with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
            admin = srv.add_user("admin", role="Admin")
            before = datetime.now(UTC)
            created = admin.post("/users", json={"name": "ann", "password": "long-password"})
            assert created.status_code == 201, created.text
            after = datetime.now(UTC)
            (entry,) = admin.get("/audit").json()
            when = datetime.fromisoformat(entry["time"])
            assert when.tzinfo is not None, entry["time"]
            assert before <= when <= after, (entry["time"], before, after)


def test_audit_pages_before_any_id_the_api_accepts(tmp_path: Path, database_url: str) -> None:
    """`before` takes ids up to 2**62; beyond the last entry it pages from the newest
    (or the API refuses the value as invalid): never a 500 from the database."""
    with control_plane(tmp_path, database_url) as cp, served(cp) as srv:
        admin = srv.add_user("admin", role="Admin")
        created = admin.post("/users", json={"name": "ann", "password": "long-password"})
        assert created.status_code == 201, created.text
        everything = admin.get("/audit").json()
        assert len(everything) == 1
        answers = {}
        for before in (2**31 - 1, 2**31, 2**62):
            with srv.client("admin") as client:  # a fresh connection each: a 500 drops it
                response = client.get("/audit", params={"before": before})
            answers[before] = (
                response.status_code,
                response.json() if response.status_code == 200 else response.json()["code"],
            )
        assert answers[2**31 - 1] == (200, everything)
        assert {
            b: a
            for b, a in answers.items()
            if a not in ((200, everything), (422, "invalid-request"))
        } == {}
