"""Warm spares through the API on the test driver (SQLite): the admin keeps spares of a
template (a task) and sees what they cost, a developer can do neither; a create adopts a
spare and the server refills the spares in the background; the quota is the resource
set's as for a cold create, and 20 creates at once on a set with room for 5 give exactly
5 VMs, each a different spare, the others refused cleanly. (What a resumed spare is
inside, on real QEMU: tests/e2e/test_warm.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from dockvisor.domain.sizes import MiB
from dockvisor.services import warm
from tests.api.conftest import TEMPLATE, Server, assert_problem
from tests.api.test_quotas import VM_MEMORY, make_set, refused, run, usage

WARM_MEMORY = 1024 * MiB  # room to grow to 2 GiB: a spare's (twice its template's default)


def post(client: httpx.Client, name: str, set_id: int, **extra: Any) -> httpx.Response:
    body = {"name": name, "vcpus": 1, "memory": WARM_MEMORY, "resource_set_id": set_id,
            **extra}  # fmt: skip
    return client.post("/vms", json=body)


def ready_spares(admin: httpx.Client) -> list[dict[str, Any]]:
    response = admin.get("/spares")
    assert response.status_code == 200, response.text
    return [s for s in response.json() if s["ready"]]


def wait_for_spares(admin: httpx.Client, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ready_spares(admin)) != count:
        assert time.monotonic() < deadline, f"spares not back to {count}: {ready_spares(admin)}"
        time.sleep(0.2)


def test_twenty_creates_at_once_on_room_for_five_take_five_spares(sqlite_server: Server) -> None:
    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    admin = server.client("admin")
    task = run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 8}))
    assert task["result"]["spares"] == 8
    listed = ready_spares(admin)
    assert len(listed) == 8 and {s["template"] for s in listed} == {TEMPLATE}
    assert all(s["stored"] >= 0 and s["max_vcpus"] >= s["vcpus"] for s in listed)
    spare_ids = {s.uuid for s in driver.list_spares()}
    assert len(spare_ids) == 8
    server.add_user("dev")
    dev = server.client("dev")
    team = make_set(admin, "team", vcpus=5, memory=5 * WARM_MEMORY, vms=5)

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
    assert all(t["step"].startswith("warm start") for t in tasks), tasks
    made = [dev.get(f"/vms/{t['object_id']}").json() for t in tasks]
    assert all(vm["state"] == "running" for vm in made)
    assert usage(admin, team["id"])["vms"] == 5
    hv = {vm.name: vm for vm in driver.list_vms()}
    uuids = {hv[vm["name"]].uuid for vm in made}
    # Each VM is a spare of its own: five UUIDs, spares' (the first ones, or ones the
    # server made again meanwhile, after the first creates ended).
    assert len(uuids) == 5 and len(uuids & spare_ids) >= 3, "each VM is a spare of its own"
    assert not any(name.startswith("spare.") for name in hv), "spares are never VMs"
    wait_for_spares(admin, 8)  # the server made the 5 taken again, in the background
    assert not {s.uuid for s in driver.list_spares()} & uuids


def test_keeping_spares_is_the_admins_and_cold_or_large_creates_leave_them(
    sqlite_server: Server,
) -> None:
    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    admin = server.client("admin")
    dev = server.add_user("dev", role="Developer")
    assert_problem(dev.post(f"/templates/{TEMPLATE}/warm", json={"spares": 1}), 403, "forbidden")
    assert_problem(dev.get("/spares"), 403, "forbidden")
    assert_problem(admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 33}), 422,
                   "invalid-request")  # fmt: skip
    assert_problem(admin.post("/templates/nope/warm", json={"spares": 1}), 404, "not-found")
    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 1}))
    assert driver.get_template(TEMPLATE).spares_kept == 1
    team = make_set(admin, "team", vcpus=64, memory=64 * WARM_MEMORY, vms=8)
    task = server.wait(admin, post(admin, "cold1", team["id"], cold=True).json())
    assert task["state"] == "succeeded"
    assert len(warm.spares_of(driver, TEMPLATE)) == 1, "cold leaves the spare"
    spare = warm.spares_of(driver, TEMPLATE)[0]
    big = {"memory": spare.max_memory + VM_MEMORY}
    task = server.wait(admin, post(admin, "big1", team["id"], **big).json())
    assert task["state"] == "succeeded"
    assert [s.uuid for s in warm.spares_of(driver, TEMPLATE)] == [spare.uuid], (
        "a VM larger than a spare's room boots cold and leaves it"
    )
    # More memory than the host has: refused up front, the spare and the quota untouched.
    host_memory = driver.host_info().memory
    detail = refused(post(admin, "huge1", team["id"], memory=host_memory + VM_MEMORY), 409,
                     "out-of-capacity")  # fmt: skip
    assert "is more than host" in detail, detail
    assert "huge1" not in {v.name for v in driver.list_vms()}
    assert [s.uuid for s in warm.spares_of(driver, TEMPLATE)] == [spare.uuid]
    task = server.wait(admin, post(admin, "small1", team["id"], memory=VM_MEMORY).json())
    assert task["state"] == "succeeded"
    assert "more than this VM's maximum of 1GiB" in task["step"], task
    assert [s.uuid for s in warm.spares_of(driver, TEMPLATE)] == [spare.uuid], (
        "a spare holding more memory than a VM's maximum is not given to it"
    )
    task = server.wait(admin, post(admin, "warm1", team["id"]).json())
    assert task["state"] == "succeeded" and task["step"].startswith("warm start"), task
    vm = next(v for v in driver.list_vms() if v.name == "warm1")
    assert vm.uuid == spare.uuid
    row = admin.get(f"/vms/{task['object_id']}").json()
    assert (row["max_vcpus"], row["max_memory"]) == (2, 2 * WARM_MEMORY), (
        "a warm VM's room to grow is what a cold create gives, not the spare's"
    )
    wait_for_spares(admin, 1)
    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 0}))
    assert ready_spares(admin) == [] and driver.get_template(TEMPLATE).spares_kept == 0


def test_a_spare_saved_by_another_qemu_or_on_an_older_template_is_refused(
    sqlite_server: Server,
) -> None:
    """What a spare was saved with is checked before it is used: another QEMU version,
    an older base of its template. Such a spare is shown stale with the reason, deleted
    by the create that meets it, and the create boots cold saying why."""
    import libvirt

    from dockvisor.drivers.libvirt.domain_xml import NS, DomainConfig, metadata_xml
    from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml as parse

    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    admin = server.client("admin")
    server.add_user("dev")

    def rewrite(name: str, change: Callable[[DomainConfig], DomainConfig]) -> None:
        with driver.raw_connection() as conn:  # type: ignore[attr-defined]
            dom = conn.lookupByName(name)
            config = parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).config
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(change(config)),
                            "dockvisor", NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)  # fmt: skip

    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 1}))
    (spare,) = warm.spares_of(driver, TEMPLATE)
    rewrite(spare.name, lambda c: replace(c, seal=replace(c.seal, qemu=1002003)))  # type: ignore[arg-type]
    (listed,) = [s for s in admin.get("/spares").json() if s["name"] == spare.name]
    assert not listed["ready"] and "saved by QEMU 1.2.3" in listed["stale"]
    team = make_set(admin, "team", vcpus=8, memory=8 * WARM_MEMORY, vms=8)
    task = server.wait(admin, post(admin, "after-upgrade", team["id"]).json())
    assert task["state"] == "succeeded"
    assert task["step"].startswith("booted cold") and "saved by QEMU 1.2.3" in task["step"]
    assert spare.name not in {s.name for s in driver.list_spares()}, "the stale spare is gone"

    wait_for_spares(admin, 1)  # the server made a new one
    (fresh,) = warm.spares_of(driver, TEMPLATE)
    rewrite(fresh.name, lambda c: replace(c, base_path="/an/older/base.qcow2"))
    (listed,) = [s for s in admin.get("/spares").json() if s["name"] == fresh.name]
    assert "has changed since" in listed["stale"]
    task = server.wait(admin, post(admin, "after-update", team["id"]).json())
    assert "has changed since" in task["step"]


def test_a_spare_whose_disk_is_gone_is_refused_and_removed(sqlite_server: Server) -> None:
    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    admin = server.client("admin")
    server.add_user("dev")
    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 1}))
    (spare,) = warm.spares_of(driver, TEMPLATE)
    disk = next(v for v in driver.volume_names() if v.startswith(spare.name) and "cidata" not in v)  # type: ignore[attr-defined]
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        conn.storagePoolLookupByName("dockvisor").storageVolLookupByName(disk).delete(0)
    (listed,) = [s for s in admin.get("/spares").json() if s["name"] == spare.name]
    assert "is missing" in listed["stale"]
    team = make_set(admin, "team", vcpus=8, memory=8 * WARM_MEMORY, vms=8)
    task = server.wait(admin, post(admin, "no-disk", team["id"]).json())
    assert task["state"] == "succeeded" and "is missing" in task["step"], task
    assert spare.name not in {s.name for s in driver.list_spares()}
    assert not [v for v in driver.volume_names() if v.startswith(spare.name)], "nothing left"  # type: ignore[attr-defined]


def test_the_cli_keeps_and_lists_spares_through_the_server(sqlite_server: Server) -> None:
    import json
    import os
    import subprocess

    server = sqlite_server
    env = {**os.environ, "DOCKVISOR_TOKEN": server.tokens["admin"]}

    def dockvisor(*args: str) -> str:
        proc = subprocess.run([".venv/bin/dockvisor", "--server", server.url, *args],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "2 warm spare(s) ready" in dockvisor("template", "warm", TEMPLATE, "--spares", "2")
    assert dockvisor("template", "spares").count("  ready  ") == 2
    listed = json.loads(dockvisor("--json", "template", "spares"))
    assert len(listed) == 2 and all(s["ready"] and s["template"] == TEMPLATE for s in listed)
    assert "0 warm spare(s)" in dockvisor("template", "warm", TEMPLATE, "--spares", "0")
    assert server.cp.hosts.driver(1).list_spares() == []


def test_a_create_cut_short_while_adopting_is_cleared_and_its_name_free(
    sqlite_server: Server,
) -> None:
    """A spare being adopted is a spare under the VM's name until the adoption ends: no
    VM to anyone. One whose adopting process is gone (killed) is removed by the next
    create of that name or listing of spares; one whose process lives is left alone."""
    import subprocess

    import libvirt

    from dockvisor.drivers.libvirt.domain_xml import NS, Adopter, metadata_xml
    from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml as parse
    from dockvisor.drivers.libvirt.spares import _me

    server = sqlite_server
    driver = server.cp.hosts.driver(1)
    admin = server.client("admin")
    server.add_user("dev")
    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 2}))
    driver.keep_spares(TEMPLATE, 0)  # (the spares stay: none is made again)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = Adopter(boot_id=_me().boot_id, pid=gone.pid, started=1)
    halves = {"cut-short": dead, "under-way": _me()}
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        spares = [d for d in conn.listAllDomains(0) if d.name().startswith("spare.")]
        assert len(spares) == 2
        for dom, (name, adopter) in zip(spares, halves.items(), strict=True):
            dom.rename(name, 0)
            config = parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).config
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            metadata_xml(replace(config, name=name, seal=None, adopter=adopter)),
                            "dockvisor", NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)  # fmt: skip
    assert not {"cut-short", "under-way"} & {vm["name"] for vm in admin.get("/vms").json()}
    team = make_set(admin, "team", vcpus=8, memory=8 * WARM_MEMORY, vms=8)
    task = server.wait(admin, post(admin, "under-way", team["id"], cold=True).json())
    assert (task["state"], task["error_code"]) == ("failed", "already-exists"), task
    task = server.wait(admin, post(admin, "cut-short", team["id"], cold=True).json())
    assert task["state"] == "succeeded", task
    assert driver.get_vm("cut-short").template == TEMPLATE, "a VM of that name now"
    assert admin.get("/spares").json() == []
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        names = {d.name() for d in conn.listAllDomains(0)}
    assert "under-way" in names, "an adoption under way is left alone"
    run(server, admin, admin.post(f"/templates/{TEMPLATE}/warm", json={"spares": 0}))
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        names = {d.name() for d in conn.listAllDomains(0)}
    assert "under-way" in names, "...even by deleting the template's spares"
