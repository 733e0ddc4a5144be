"""Resource sets through the API, on SQLite and on PostgreSQL: concurrent creates fit the
limits exactly, creators get the Developer role, templates and hosts are restricted, and
resize, clone, snapshot and delete reserve or release quota. Recompute reports drift
made behind dockvisor's back; a locked VM refuses conflicting requests (Busy)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import libvirt
from sqlalchemy import delete

from dockvisor.domain.model import TemplateSpec
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.store.models import LockRow, TaskRow
from tests.api.conftest import NODE, TEMPLATE, Server

VM_MEMORY = 512 * MiB


# -- helpers ------------------------------------------------------------------------------


def set_body(
    name: str,
    *,
    vcpus: int | None = None,
    memory: int | None = None,
    disk: int | None = None,
    vms: int | None = None,
    templates: tuple[str, ...] = (TEMPLATE,),
    host_ids: tuple[int, ...] = (1,),
    subjects: tuple[str, ...] = ("user:dev",),
    count_snapshots: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "limits": {"vcpus": vcpus, "memory": memory, "disk": disk, "vms": vms},
        "templates": list(templates),
        "host_ids": list(host_ids),
        "subjects": list(subjects),
        "count_snapshots": count_snapshots,
    }


def make_set(admin: httpx.Client, name: str, **limits: Any) -> dict[str, Any]:
    response = admin.post("/resource-sets", json=set_body(name, **limits))
    assert response.status_code == 201, response.text
    return dict(response.json())


def usage(admin: httpx.Client, set_id: int) -> dict[str, int]:
    response = admin.get(f"/resource-sets/{set_id}")
    assert response.status_code == 200, response.text
    return dict(response.json()["usage"])


def create_vm(
    server: Server,
    client: httpx.Client,
    name: str,
    set_id: int | None,
    *,
    vcpus: int = 1,
    memory: int = VM_MEMORY,
    start: bool = True,
) -> dict[str, Any]:
    """Create a VM and wait for it: the VM as the API shows it afterwards."""
    body: dict[str, Any] = {"name": name, "vcpus": vcpus, "memory": memory, "start": start}
    if set_id is not None:
        body["resource_set_id"] = set_id
    response = client.post("/vms", json=body)
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return dict(client.get(f"/vms/{task['object_id']}").json())


def run(server: Server, client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    """The ended task of an accepted (202) request; it must have succeeded."""
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return task


def refused(response: httpx.Response, status: int, code: str) -> str:
    """Assert an application/problem+json refusal; its detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return str(body["detail"])


def vms_in_set(admin: httpx.Client, set_id: int) -> list[dict[str, Any]]:
    return [vm for vm in admin.get("/vms").json() if vm["resource_set_id"] == set_id]


def grant(admin: httpx.Client, subject: str, path: str, role: str) -> None:
    response = admin.post("/acl", json={"subject": subject, "path": path, "role": role})
    assert response.status_code == 201, response.text


# -- the race -----------------------------------------------------------------------------


def test_twenty_concurrent_creates_fit_a_set_with_room_for_five(server: Server) -> None:
    admin = server.client("admin")
    server.add_user("dev")
    team = make_set(admin, "team", vcpus=5, memory=5 * VM_MEMORY, vms=5)
    clients = [server.client("dev") for _ in range(20)]
    barrier = threading.Barrier(20)
    responses: dict[int, httpx.Response] = {}

    def fire(i: int) -> None:
        barrier.wait()
        responses[i] = clients[i].post(
            "/vms",
            json={
                "name": f"vm{i}",
                "vcpus": 1,
                "memory": VM_MEMORY,
                "resource_set_id": team["id"],
            },
        )

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for c in clients:
        c.close()
    assert len(responses) == 20

    statuses = sorted(r.status_code for r in responses.values())
    assert statuses == [202] * 5 + [409] * 15, [r.text for r in responses.values()]
    for response in responses.values():
        if response.status_code == 409:
            detail = refused(response, 409, "out-of-capacity")
            # It names the set and what is left of the first limit reached (vCPUs).
            assert "resource set 'team'" in detail, detail
            assert "has 0 of vCPUs left (5 of 5 used)" in detail, detail

    dev = server.client("dev")
    accepted = {i for i, r in responses.items() if r.status_code == 202}
    for i in accepted:
        task = server.wait(dev, responses[i].json())
        assert task["state"] == "succeeded", task

    vms = vms_in_set(admin, team["id"])
    assert sorted(vm["name"] for vm in vms) == sorted(f"vm{i}" for i in accepted)
    assert all(vm["state"] == "running" for vm in vms), vms
    used = usage(admin, team["id"])
    assert used == {
        "vcpus": sum(vm["vcpus"] for vm in vms),
        "memory": sum(vm["memory"] for vm in vms),
        "disk": sum(vm["disk"] for vm in vms),
        "vms": len(vms),
    }
    assert (used["vcpus"], used["memory"], used["vms"]) == (5, 5 * VM_MEMORY, 5)
    # And the set stays full: one more is refused.
    more = dev.post(
        "/vms",
        json={"name": "late", "vcpus": 1, "memory": VM_MEMORY, "resource_set_id": team["id"]},
    )
    refused(more, 409, "out-of-capacity")


# -- who may do what --------------------------------------------------------------------


def test_creator_gets_the_developer_role_on_the_new_vm(server: Server) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    other = server.add_user("other")
    team = make_set(admin, "team", vcpus=4, vms=4)
    vm = create_vm(server, dev, "sandbox", team["id"])
    assert vm["resource_set_id"] == team["id"]

    entries = [e for e in admin.get("/acl").json() if e["path"] == f"/vms/{vm['id']}"]
    assert [(e["subject"], e["role"]) for e in entries] == [("user:dev", "Developer")]

    assert dev.get(f"/vms/{vm['id']}").status_code == 200
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "s1"}))
    assert [s["name"] for s in dev.get(f"/vms/{vm['id']}/snapshots").json()] == ["s1"]
    # Developer: no delete; growing within the set's budget (4 vCPUs) only.
    refused(dev.delete(f"/vms/{vm['id']}"), 403, "forbidden")
    refused(dev.patch(f"/vms/{vm['id']}", json={"vcpus": 5}), 409, "out-of-capacity")
    assert admin.get(f"/vms/{vm['id']}").json()["vcpus"] == 1
    # Someone else, even in no set, does not see it at all.
    refused(other.get(f"/vms/{vm['id']}"), 404, "not-found")


def test_templates_and_hosts_outside_the_set_are_refused(server: Server, tmp_path: Path) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    # A second template on host 1 and a second host, both outside the set.
    server.cp.hosts.driver(1).register_template(
        TemplateSpec(name="plain", disk=str(tmp_path / "blank.qcow2"), docker_port=None)
    )
    node2 = tmp_path / "node2.xml"
    node2.write_text(NODE)
    host = admin.post("/hosts", json={"name": "second", "uri": f"test://{node2}"})
    assert host.status_code == 201, host.text
    host_id = host.json()["id"]
    assert host_id != 1
    team = make_set(admin, "team", vcpus=4, vms=4)
    base = {"vcpus": 1, "memory": VM_MEMORY, "resource_set_id": team["id"]}

    detail = refused(
        dev.post("/vms", json={**base, "name": "a", "template": "plain"}), 403, "forbidden"
    )
    assert "template 'plain' is not allowed in resource set 'team'" in detail
    assert "(allowed: docker-ready)" in detail

    detail = refused(
        dev.post("/vms", json={**base, "name": "b", "host_id": host_id}), 403, "forbidden"
    )
    assert f"host {host_id} is not allowed in resource set 'team'" in detail

    # Nothing was reserved by the refusals; the allowed template on the allowed host works.
    assert usage(admin, team["id"])["vms"] == 0
    assert admin.get("/vms").json() == []
    vm = create_vm(server, dev, "c", team["id"])
    assert (vm["host_id"], vm["template"]) == (1, TEMPLATE)


# -- what reserves and what releases ------------------------------------------------------


def test_resize_reserves_the_growth_and_delete_releases(server: Server) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=4, memory=1 * GiB, vms=4)
    vm = create_vm(server, dev, "grow", team["id"])
    grant(admin, "user:dev", f"/vms/{vm['id']}", "Admin")  # VM.Config.*, VM.Delete

    detail = refused(dev.patch(f"/vms/{vm['id']}", json={"vcpus": 5}), 409, "out-of-capacity")
    assert "resource set 'team' has 3 of vCPUs left (1 of 4 used); this needs 4" in detail
    detail = refused(
        dev.patch(f"/vms/{vm['id']}", json={"memory": 2 * GiB}), 409, "out-of-capacity"
    )
    assert "resource set 'team' has 512MiB of memory left" in detail
    used = usage(admin, team["id"])
    assert (used["vcpus"], used["memory"]) == (1, VM_MEMORY)  # the refusals took nothing
    assert admin.get(f"/vms/{vm['id']}").json()["vcpus"] == 1

    run(server, dev, dev.patch(f"/vms/{vm['id']}", json={"vcpus": 2, "memory": 1 * GiB}))
    assert admin.get(f"/vms/{vm['id']}").json()["vcpus"] == 2
    used = usage(admin, team["id"])
    assert (used["vcpus"], used["memory"], used["vms"]) == (2, 1 * GiB, 1)
    # Memory is now full: a second VM does not fit.
    refused(
        dev.post(
            "/vms",
            json={"name": "second", "vcpus": 1, "memory": VM_MEMORY, "resource_set_id": team["id"]},
        ),
        409,
        "out-of-capacity",
    )

    run(server, dev, dev.delete(f"/vms/{vm['id']}", params={"force": "true"}))
    assert usage(admin, team["id"]) == {"vcpus": 0, "memory": 0, "disk": 0, "vms": 0}
    assert vms_in_set(admin, team["id"]) == []
    create_vm(server, dev, "second", team["id"])  # the room is back


def test_a_revert_reserves_the_size_it_gives_back_or_is_refused(server: Server) -> None:
    """Snapshot at 2 vCPUs, shrink to 1, fill the set, revert: the revert would make the
    set 5/4, so it is refused and nothing changes; with room again it reserves."""
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=4, vms=3)
    vm = create_vm(server, dev, "live", team["id"], vcpus=2)
    grant(admin, "user:dev", f"/vms/{vm['id']}", "Admin")
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "two"}))
    run(server, dev, dev.patch(f"/vms/{vm['id']}", json={"vcpus": 1}))
    other = create_vm(server, dev, "filler", team["id"], vcpus=3)
    assert usage(admin, team["id"])["vcpus"] == 4

    detail = refused(dev.post(f"/vms/{vm['id']}/snapshots/two/revert"), 409, "out-of-capacity")
    assert "vCPUs" in detail
    assert usage(admin, team["id"])["vcpus"] == 4
    assert dev.get(f"/vms/{vm['id']}").json()["vcpus"] == 1

    run(server, admin, admin.delete(f"/vms/{other['id']}", params={"force": "true"}))
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots/two/revert"))
    assert dev.get(f"/vms/{vm['id']}").json()["vcpus"] == 2
    assert usage(admin, team["id"])["vcpus"] == 2


def test_clone_reserves_in_the_same_set_and_is_refused_when_full(server: Server) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=3, vms=2)
    source = create_vm(server, dev, "source", team["id"])

    task = run(server, dev, dev.post(f"/vms/{source['id']}/clone", json={"name": "copy"}))
    copy = dev.get(f"/vms/{task['object_id']}").json()  # the cloner is its Developer
    assert (copy["name"], copy["resource_set_id"], copy["vcpus"]) == ("copy", team["id"], 1)
    used = usage(admin, team["id"])
    assert (used["vcpus"], used["memory"], used["vms"]) == (2, 2 * VM_MEMORY, 2)

    detail = refused(
        dev.post(f"/vms/{source['id']}/clone", json={"name": "third"}), 409, "out-of-capacity"
    )
    assert "resource set 'team' has 0 of VMs left (2 of 2 used)" in detail
    assert sorted(vm["name"] for vm in vms_in_set(admin, team["id"])) == ["copy", "source"]
    assert usage(admin, team["id"])["vms"] == 2


def test_snapshots_count_only_when_the_set_says_so(server: Server) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=2, vms=2)
    vm = create_vm(server, dev, "snappy", team["id"])
    disk = vm["disk"]
    assert disk > 0

    # count_snapshots false, and the disk limit exactly what the VM takes: still fine.
    body = set_body("team", vcpus=2, vms=2, disk=disk)
    assert admin.put(f"/resource-sets/{team['id']}", json=body).status_code == 200
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "s1"}))
    assert admin.get(f"/vms/{vm['id']}").json()["snapshots"] == 1
    assert usage(admin, team["id"])["disk"] == disk

    # Counting snapshots: the snapshot's disk now counts, and the next one does not fit.
    body = set_body("team", vcpus=2, vms=2, disk=2 * disk, count_snapshots=True)
    updated = admin.put(f"/resource-sets/{team['id']}", json=body)
    assert updated.status_code == 200, updated.text
    assert updated.json()["count_snapshots"] is True
    assert updated.json()["usage"]["disk"] == 2 * disk
    detail = refused(
        dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "s2"}), 409, "out-of-capacity"
    )
    assert "resource set 'team'" in detail and "of disk left" in detail
    assert admin.get(f"/vms/{vm['id']}").json()["snapshots"] == 1
    assert usage(admin, team["id"])["disk"] == 2 * disk

    body = set_body("team", vcpus=2, vms=2, disk=3 * disk, count_snapshots=True)
    assert admin.put(f"/resource-sets/{team['id']}", json=body).status_code == 200
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "s2"}))
    assert usage(admin, team["id"])["disk"] == 3 * disk


# -- drift made behind dockvisor's back ---------------------------------------------------


def test_recompute_reports_and_repairs_drift(server: Server) -> None:
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=8, vms=4)
    vm = create_vm(server, dev, "drifty", team["id"], start=False)
    assert vm["state"] == "stopped" and vm["max_vcpus"] >= 2
    before = usage(admin, team["id"])
    assert (before["vcpus"], before["memory"]) == (1, VM_MEMORY)

    with server.cp.hosts.driver(1).raw_connection() as conn:  # type: ignore[attr-defined]
        dom = conn.lookupByName("drifty")
        dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        dom.setMemoryFlags(1 * GiB // 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert usage(admin, team["id"]) == before  # dockvisor does not know yet

    response = admin.post("/resource-sets/recompute")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["updated"] == ["drifty"]
    assert (report["added"], report["removed"], report["unreachable"]) == ([], [], [])
    after = {**before, "vcpus": 2, "memory": 1 * GiB}
    assert report["drift"] == {str(team["id"]): {"before": before, "after": after}}
    assert usage(admin, team["id"]) == after
    shown = admin.get(f"/vms/{vm['id']}").json()
    assert (shown["vcpus"], shown["memory"]) == (2, 1 * GiB)

    # A second recompute finds nothing more.
    again = admin.post("/resource-sets/recompute").json()
    assert (again["updated"], again["drift"]) == ([], {})
    # Recompute is for administrators.
    refused(dev.post("/resource-sets/recompute"), 403, "forbidden")


# -- locks ----------------------------------------------------------------------------------


def hold_lock(server: Server, vm_id: str, kind: str = "vm.revert") -> str:
    """Make a task (as if running on another server process) hold the VM's lock."""
    task_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with server.cp.db.session() as session:
        session.add(
            TaskRow(
                id=task_id,
                kind=kind,
                object_type="vm",
                object_id=vm_id,
                requester_id=server.user_ids["admin"],
                requester="admin",
                state="running",
                progress=0.3,
                step="reverting",
                created=now,
                started=now,
                instance=str(uuid.uuid4()),
            )
        )
        session.add(LockRow(object_key=f"vm:{vm_id}", task_id=task_id, acquired=now))
    return task_id


def release_lock(server: Server, task_id: str) -> None:
    with server.cp.db.session() as session:
        session.execute(delete(LockRow).where(LockRow.task_id == task_id))
        session.execute(delete(TaskRow).where(TaskRow.id == task_id))


def test_a_locked_vm_refuses_conflicting_requests(server: Server) -> None:
    admin = server.client("admin")
    vm = create_vm(server, admin, "locked", None, start=False)
    task_id = hold_lock(server, vm["id"])

    detail = refused(admin.put(f"/vms/{vm['id']}/state", json={"action": "start"}), 409, "busy")
    assert f"busy with vm.revert task {task_id}" in detail
    refused(admin.delete(f"/vms/{vm['id']}"), 409, "busy")
    assert admin.get(f"/vms/{vm['id']}").json()["state"] == "stopped"
    audit = admin.get("/audit", params={"limit": 20}).json()
    assert any(
        e["action"] == "vm.start"
        and e["object"] == f"vm:{vm['id']}"
        and e["result"] == "refused:busy"
        for e in audit
    ), audit

    release_lock(server, task_id)
    run(server, admin, admin.put(f"/vms/{vm['id']}/state", json={"action": "start"}))
    assert admin.get(f"/vms/{vm['id']}").json()["state"] == "running"


def test_requests_refused_as_busy_reserve_nothing(server: Server) -> None:
    """A resize, snapshot or clone refused because the VM is locked must leave the VM's
    row and its set's usage as they were: nothing happened, nothing stays reserved."""
    admin = server.client("admin")
    dev = server.add_user("dev")
    team = make_set(admin, "team", vcpus=4, vms=4, count_snapshots=True)
    vm = create_vm(server, dev, "locked", team["id"], start=False)
    grant(admin, "user:dev", f"/vms/{vm['id']}", "Admin")
    before_usage, before_vm = usage(admin, team["id"]), admin.get(f"/vms/{vm['id']}").json()
    task_id = hold_lock(server, vm["id"])

    refused(dev.patch(f"/vms/{vm['id']}", json={"vcpus": 2}), 409, "busy")
    refused(dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "s1"}), 409, "busy")
    refused(dev.post(f"/vms/{vm['id']}/clone", json={"name": "copy"}), 409, "busy")

    after = {
        "vm": admin.get(f"/vms/{vm['id']}").json(),
        "vms in the set": {v["name"]: v["state"] for v in vms_in_set(admin, team["id"])},
        "usage": usage(admin, team["id"]),
    }
    assert after == {
        "vm": before_vm,
        "vms in the set": {"locked": "stopped"},
        "usage": before_usage,
    }

    release_lock(server, task_id)
    # Once free, the same clone is accepted (its name was not left taken).
    run(server, dev, dev.post(f"/vms/{vm['id']}/clone", json={"name": "copy"}))


# -- placement that names what does not exist -------------------------------------------


def test_ids_beyond_what_the_store_holds_are_refused_or_not_found(server: Server) -> None:
    """Ids no row can have (PostgreSQL's INTEGER ends at 2**31-1, SQLite's at 2**63-1)
    name nothing: the answer is 404, or 422 if the API refuses such ids outright; never
    a 500 from the database."""
    vm = {"name": "far", "vcpus": 1, "memory": VM_MEMORY}
    requests: dict[str, tuple[str, str, dict[str, Any] | None]] = {
        f"POST /vms {field}=2**31": ("POST", "/vms", {**vm, field: 2**31})
        for field in ("resource_set_id", "host_id", "pool_id")
    }
    for exponent, set_id in (("2**31", 2**31), ("2**63", 2**63), ("10**20", 10**20)):
        requests[f"GET /resource-sets/{exponent}"] = ("GET", f"/resource-sets/{set_id}", None)
        requests[f"PUT /resource-sets/{exponent}"] = (
            "PUT",
            f"/resource-sets/{set_id}",
            set_body("far", subjects=()),
        )
        requests[f"DELETE /resource-sets/{exponent}"] = (
            "DELETE",
            f"/resource-sets/{set_id}",
            None,
        )
    answers = {}
    for label, (method, path, body) in requests.items():
        with server.client("admin") as admin:  # a fresh connection each: a 500 drops it
            response = admin.request(method, path, json=body)
        answers[label] = (response.status_code, response.json()["code"])
    fine = {(404, "not-found"), (422, "invalid-request")}
    assert {label: a for label, a in answers.items() if a not in fine} == {}
    with server.client("admin") as admin:
        assert admin.get("/vms").json() == []
        assert admin.get("/resource-sets").json() == []


def test_a_create_in_a_pool_that_does_not_exist_is_not_found(server: Server) -> None:
    admin = server.client("admin")
    response = admin.post(
        "/vms", json={"name": "pooled", "vcpus": 1, "memory": VM_MEMORY, "pool_id": 7}
    )
    detail = refused(response, 404, "not-found")
    assert "pool 7" in detail
    assert admin.get("/vms").json() == []
