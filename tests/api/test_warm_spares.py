"""Warm spares through the API on the test driver (SQLite): a create adopts a spare,
the quota is the resource set's as for a cold create, and 20 creates at once on a set
with room for 5 give exactly 5 VMs, each a different spare, the others refused cleanly.
(What a resumed spare is inside, on real QEMU: tests/e2e/test_warm.py.)"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from dockvisor.services import warm
from tests.api.conftest import TEMPLATE, Server
from tests.api.test_quotas import VM_MEMORY, make_set, refused, usage


def post(client: httpx.Client, name: str, set_id: int, **extra: Any) -> httpx.Response:
    body = {"name": name, "vcpus": 1, "memory": VM_MEMORY, "resource_set_id": set_id, **extra}
    return client.post("/vms", json=body)


def test_twenty_creates_at_once_on_room_for_five_take_five_spares(sqlite_server: Server) -> None:
    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    kept = warm.warm_template(driver, TEMPLATE, 8)
    assert len(kept) == 8 and all(s.ready for s in kept)
    assert len({s.engine_name for s in kept} | {s.name for s in kept}) >= 8
    admin = server.client("admin")
    server.add_user("dev")
    dev = server.client("dev")
    team = make_set(admin, "team", vcpus=5, memory=5 * VM_MEMORY, vms=5)

    answers: dict[int, httpx.Response] = {}

    def create(i: int) -> None:
        with server.client("dev") as client:
            answers[i] = post(client, f"w{i}", team["id"])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in answers.values() if r.status_code == 202]
    assert len(accepted) == 5, [r.status_code for r in answers.values()]
    for r in answers.values():
        if r.status_code != 202:
            assert "left" in refused(r, 409, "out-of-capacity")
    tasks = [server.wait(dev, r.json()) for r in accepted]
    assert [t["state"] for t in tasks] == ["succeeded"] * 5, tasks
    made = [dev.get(f"/vms/{t['object_id']}").json() for t in tasks]
    assert all(vm["state"] == "running" for vm in made)
    assert usage(admin, team["id"])["vms"] == 5
    left = warm.spares_of(driver, TEMPLATE)
    assert len(left) == 3, "each create took a spare of its own"
    hv = {vm.name: vm for vm in driver.list_vms()}
    uuids = {hv[vm["name"]].uuid for vm in made}
    assert len(uuids) == 5
    assert not any(name.startswith("spare.") for name in hv), "spares are never VMs"


def test_cold_boots_and_a_spare_too_small_is_left_for_others(sqlite_server: Server) -> None:
    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    warm.warm_template(driver, TEMPLATE, 1)
    admin = server.client("admin")
    server.add_user("dev")
    team = make_set(admin, "team", vcpus=64, memory=64 * VM_MEMORY, vms=8)
    task = server.wait(admin, post(admin, "cold1", team["id"], cold=True).json())
    assert task["state"] == "succeeded"
    assert len(warm.spares_of(driver, TEMPLATE)) == 1, "--cold leaves the spare"
    spare = warm.spares_of(driver, TEMPLATE)[0]
    big = {"memory": spare.max_memory + VM_MEMORY}
    task = server.wait(admin, post(admin, "big1", team["id"], **big).json())
    assert task["state"] == "succeeded"
    assert len(warm.spares_of(driver, TEMPLATE)) == 1, "a VM larger than a spare boots cold"
    task = server.wait(admin, post(admin, "warm1", team["id"]).json())
    assert task["state"] == "succeeded"
    assert warm.spares_of(driver, TEMPLATE) == []
    assert warm.warm_template(driver, TEMPLATE, 0) == []
