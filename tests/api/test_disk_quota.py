"""The disk as a resource through the API (test driver, SQLite and PostgreSQL): chosen at
create, grown later, counted in resource sets exactly like vCPUs and memory (no drift
under concurrent creates and growths), refused with a clear message when it cannot be
given, and returned to a snapshot's size by a revert."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from dockvisor.domain.sizes import GiB, MiB
from dockvisor.errors import Busy
from tests.api.conftest import Server
from tests.api.test_quotas import VM_MEMORY, grant, make_set, refused, run, usage

TEMPLATE_DISK = 64 * MiB  # the test template's blank disk


def create(server: Server, client: httpx.Client, name: str, set_id: int | None,
           disk: int | None, *, start: bool = False) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"name": name, "vcpus": 1, "memory": VM_MEMORY, "start": start}
    if disk is not None:
        body["disk"] = disk
    if set_id is not None:
        body["resource_set_id"] = set_id
    task = run(server, client, client.post("/vms", json=body))
    return dict(client.get(f"/vms/{task['object_id']}").json())


def grow(client: httpx.Client, vm_id: str, disk: int) -> httpx.Response:
    return client.patch(f"/vms/{vm_id}", json={"disk": disk})


def test_a_chosen_disk_is_the_vms_size_and_counts_in_its_set(server: Server) -> None:
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    team = make_set(admin, "team", disk=1 * GiB)

    vm = create(server, dev, "big", team["id"], 512 * MiB)
    assert vm["disk"] == 512 * MiB
    assert usage(admin, team["id"])["disk"] == 512 * MiB
    default = create(server, admin, "plain", None, None)
    assert default["disk"] == TEMPLATE_DISK, "without a size: the template's"

    detail = refused(dev.post("/vms", json={"name": "too-big", "vcpus": 1, "memory": VM_MEMORY,
                                            "disk": 640 * MiB, "start": False,
                                            "resource_set_id": team["id"]}),
                     409, "out-of-capacity")  # fmt: skip
    assert "512MiB of disk left" in detail and "needs 640MiB" in detail
    assert usage(admin, team["id"])["disk"] == 512 * MiB, "a refusal holds nothing"
    assert "too-big" not in {v["name"] for v in admin.get("/vms").json()}


def test_bad_disk_sizes_are_refused_before_anything_is_made(server: Server) -> None:
    admin = server.client("admin")
    names_before = {v["name"] for v in admin.get("/vms").json()}
    body = {"name": "odd", "vcpus": 1, "memory": VM_MEMORY, "start": False}
    small = refused(admin.post("/vms", json={**body, "disk": 32 * MiB}), 400, "invalid-input")
    assert "smaller than the 64MiB disk of template" in small
    unaligned = refused(admin.post("/vms", json={**body, "disk": 100 * MiB + 1}), 400,
                        "invalid-input")  # fmt: skip
    assert "whole number of MiB" in unaligned
    huge = refused(admin.post("/vms", json={**body, "disk": 1024**5}), 409, "out-of-capacity")
    assert "storage has" in huge and "free" in huge
    assert {v["name"] for v in admin.get("/vms").json()} == names_before
    assert all(v.name != "odd" for v in server.cp.hosts.driver(1).list_vms())


def test_growth_is_reserved_refused_beyond_the_set_and_never_shrinks(server: Server) -> None:
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    team = make_set(admin, "team", disk=1 * GiB)
    vm = create(server, dev, "web", team["id"], 256 * MiB)

    task = run(server, dev, grow(dev, vm["id"], 768 * MiB))
    assert task["result"]["applied"] == {"disk": 768 * MiB}
    assert dev.get(f"/vms/{vm['id']}").json()["disk"] == 768 * MiB
    assert server.cp.hosts.driver(1).get_vm(vm["name"]).disk_size == 768 * MiB
    assert usage(admin, team["id"])["disk"] == 768 * MiB

    detail = refused(grow(dev, vm["id"], 2 * GiB), 409, "out-of-capacity")
    assert "resource set 'team' has 256MiB of disk left" in detail
    shrink = refused(grow(dev, vm["id"], 512 * MiB), 400, "invalid-input")
    assert "can only grow" in shrink and "768MiB" in shrink
    assert dev.get(f"/vms/{vm['id']}").json()["disk"] == 768 * MiB
    assert usage(admin, team["id"])["disk"] == 768 * MiB


def test_concurrent_growths_and_creates_fit_the_set_exactly(server: Server) -> None:
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    # Room for the four VMs plus exactly three growths of 64MiB (or creates of 128MiB).
    team = make_set(admin, "team", disk=4 * TEMPLATE_DISK + 3 * 64 * MiB)
    vms = [create(server, dev, f"vm{i}", team["id"], None) for i in range(4)]
    clients = [server.client("dev") for _ in range(8)]
    barrier = threading.Barrier(8)
    answers: dict[int, httpx.Response] = {}

    def fire(i: int) -> None:
        barrier.wait()
        if i < 4:
            answers[i] = grow(clients[i], vms[i]["id"], 2 * TEMPLATE_DISK)
        else:
            answers[i] = clients[i].post("/vms", json={
                "name": f"new{i}", "vcpus": 1, "memory": VM_MEMORY, "start": False,
                "disk": 128 * MiB, "resource_set_id": team["id"]})  # fmt: skip

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    accepted = [i for i, r in answers.items() if r.status_code == 202]
    for i, r in answers.items():
        if i in accepted:
            assert server.wait(clients[i], r.json())["state"] == "succeeded"
        else:
            assert r.status_code == 409 and r.json()["code"] == "out-of-capacity", r.text
    for c in clients:
        c.close()
    rows = [v for v in admin.get("/vms").json() if v["resource_set_id"] == team["id"]]
    used = usage(admin, team["id"])["disk"]
    assert used == sum(v["disk"] for v in rows), "the set's usage is its VMs' disks"
    assert used <= 4 * TEMPLATE_DISK + 3 * 64 * MiB
    # Each growth takes 64MiB, each create 128MiB: what was accepted fills the room.
    taken = sum(64 * MiB if i < 4 else 128 * MiB for i in accepted)
    assert used == 4 * TEMPLATE_DISK + taken
    assert 3 * 64 * MiB - taken < 64 * MiB, "no request that fitted was refused"


def test_growing_a_disk_outside_any_set_takes_allocation_on_the_host(server: Server) -> None:
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    vm = create(server, admin, "shared", None, None)
    grant(admin, "user:dev", f"/vms/{vm['id']}", "Developer")
    detail = refused(grow(dev, vm["id"], 128 * MiB), 403, "forbidden")
    assert "VM.Allocate on /hosts/1" in detail and "no resource set" in detail
    assert dev.get(f"/vms/{vm['id']}").json()["disk"] == TEMPLATE_DISK
    grant(admin, "user:dev", "/hosts/1", "Admin")
    run(server, dev, grow(dev, vm["id"], 128 * MiB))
    assert dev.get(f"/vms/{vm['id']}").json()["disk"] == 128 * MiB


def grown_since_snapshot(
    server: Server,
) -> tuple[httpx.Client, httpx.Client, dict[str, Any], dict[str, Any]]:
    """A running VM of a set with a snapshot "small" at 128MiB, grown since to 512MiB:
    the admin's and the developer's clients, the set and the VM."""
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    team = make_set(admin, "team", disk=1 * GiB)
    vm = create(server, dev, "box", team["id"], 128 * MiB, start=True)
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots", json={"name": "small"}))
    run(server, dev, grow(dev, vm["id"], 512 * MiB))
    return admin, dev, team, vm


def test_a_revert_returns_the_disk_to_the_snapshots_size_and_gives_back_quota(
    server: Server,
) -> None:
    admin, dev, team, vm = grown_since_snapshot(server)
    assert usage(admin, team["id"])["disk"] == 512 * MiB
    snaps = dev.get(f"/vms/{vm['id']}/snapshots").json()
    assert [s["disk_size"] for s in snaps] == [128 * MiB]

    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots/small/revert"))
    assert dev.get(f"/vms/{vm['id']}").json()["disk"] == 128 * MiB
    assert server.cp.hosts.driver(1).get_vm(vm["name"]).disk_size == 128 * MiB
    assert usage(admin, team["id"])["disk"] == 128 * MiB


def test_a_delegate_of_one_vm_cannot_spend_the_sets_disk(server: Server) -> None:
    """Developer on one VM of a set, without the right to allocate in the set: growing
    its disk would take the set's quota from its subjects, like memory beyond the VM's
    maximum (refused too)."""
    admin = server.client("admin")
    server.add_user("dev")
    server.add_user("guest")
    team = make_set(admin, "team", disk=1 * GiB)
    vm = create(server, server.client("dev"), "shared", team["id"], None)
    grant(admin, "user:guest", f"/vms/{vm['id']}", "Developer")
    guest = server.client("guest")
    detail = refused(grow(guest, vm["id"], 512 * MiB), 403, "forbidden")
    assert "may not allocate in the resource set" in detail
    assert usage(admin, team["id"])["disk"] == TEMPLATE_DISK


def test_a_revert_refused_as_busy_never_lowered_the_sets_usage(server: Server) -> None:
    """A revert to a smaller snapshot gives its room back once it has happened, not when
    it is asked for: a request refused because the VM is busy holds no decrease, even
    for an instant (creates in that instant would overrun the set)."""
    admin, dev, team, vm = grown_since_snapshot(server)
    seen: list[int] = []
    tasks = server.cp.ops.tasks
    submit = tasks.submit

    def busy(**kwargs: Any) -> Any:
        seen.append(usage(admin, team["id"])["disk"])  # what the set shows meanwhile
        raise Busy("the VM is busy")

    tasks.submit = busy  # type: ignore[method-assign]
    try:
        refused(dev.post(f"/vms/{vm['id']}/snapshots/small/revert"), 409, "busy")
    finally:
        tasks.submit = submit  # type: ignore[method-assign]
    assert seen == [512 * MiB], "the set never showed the snapshot's smaller disk"
    assert usage(admin, team["id"])["disk"] == 512 * MiB
    run(server, dev, dev.post(f"/vms/{vm['id']}/snapshots/small/revert"))
    assert usage(admin, team["id"])["disk"] == 128 * MiB, "given back once reverted"
