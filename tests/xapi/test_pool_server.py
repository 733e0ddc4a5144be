"""A dockvisor server with a XAPI pool (the simulator, through the real SDK over HTTPS on
127.0.0.1) next to its local libvirt host: the pool is added with its credentials, VMs
are made, delegated, snapshotted, reverted, cloned and resized on it through the API,
changes made by another client of the pool appear within a second, and every failure
names the pool and XAPI's code and leaves nothing behind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import XenAPI

from dockvisor.domain.sizes import GiB, MiB
from tests.api.conftest import Server, _server, assert_problem
from tests.api.test_delegation import granted
from tests.xapi_sim import XapiSimulator

PASSWORD = "pool-Secret-4242"
TEMPLATE = "pool-tmpl"


@pytest.fixture
def sim() -> Iterator[XapiSimulator]:
    simulator = XapiSimulator(users={"root": PASSWORD}, members=1, tls=True).start()
    simulator.task_seconds = 0.05
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def server(tmp_path: Path, sim: XapiSimulator) -> Iterator[Server]:
    for srv in _server(tmp_path, f"sqlite:///{tmp_path / 'dockvisor.db'}"):
        srv.cp.inventory.start(reconcile_every=3600)  # events only: no reconcile helps
        yield srv


def pool_uri(sim: XapiSimulator) -> str:
    return sim.url.replace("https://", "xapi://").rstrip("/")


def add_pool(
    admin: httpx.Client, sim: XapiSimulator, *, uri: str | None = None, **changes: Any
) -> httpx.Response:
    body = {
        "name": "pool1",
        "uri": uri or pool_uri(sim),
        "user": "root",
        "password": PASSWORD,
        "certificate": sim.certificate_pem,
    }
    body.update(changes)
    return admin.post("/hosts", json={k: v for k, v in body.items() if v is not None})


def pool_with_template(server: Server, sim: XapiSimulator, tmp_path: Path) -> int:
    """The pool added, with a template uploaded to it through the API; its host id."""
    admin = server.client("admin")
    added = add_pool(admin, sim)
    assert added.status_code == 201, added.text
    host_id = int(added.json()["id"])
    images = server.cp.settings.template_images
    images.mkdir(parents=True, exist_ok=True)
    disk = images / "pool-disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    made = admin.post(
        "/templates",
        json={"host_id": host_id, "name": TEMPLATE, "disk": str(disk), "docker_port": None},
    )
    assert made.status_code == 201, made.text
    return host_id


def start_create(server: Server, host_id: int, name: str, **size: Any) -> dict[str, Any]:
    """A VM being made on the pool by the admin through the API: its task, just begun."""
    body = {"name": name, "template": TEMPLATE, "vcpus": 1, "memory": 512 * MiB,
            "host_id": host_id, **size}  # fmt: skip
    made = server.client("admin").post("/vms", json=body)
    assert made.status_code == 202, made.text
    return dict(made.json())


def create(server: Server, host_id: int, name: str, **size: Any) -> dict[str, Any]:
    """A VM made on the pool by the admin through the API: its ended task."""
    return server.wait(server.client("admin"), start_create(server, host_id, name, **size))


def vms_named(sim: XapiSimulator, name: str) -> list[dict[str, Any]]:
    return [r for r in sim.objects("VM").values() if r["name_label"] == name]


def other_client(sim: XapiSimulator) -> XenAPI.Session:
    session = XenAPI.Session(sim.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", PASSWORD, "2.0", "another-client")
    return session


def wait_for(check: Any, seconds: float = 1.0) -> float:
    """How long `check()` took to become true (AssertionError after `seconds`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


# -- adding a pool ----------------------------------------------------------------------


def test_a_pool_is_added_with_credentials_that_never_come_back(
    server: Server, sim: XapiSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = server.client("admin")
    added = add_pool(admin, sim)
    assert added.status_code == 201, added.text
    assert added.json()["family"] == "xapi" and added.json()["state"] == "connected"
    can = set(added.json()["capabilities"])
    assert {"snapshots", "memory-snapshots", "live-vcpus", "events", "guest-addresses"} <= can
    assert not can & {"metrics", "serial-console", "graphical-console", "loopback-forward"}
    listed = admin.get("/hosts").json()
    assert [h["family"] for h in listed] == ["libvirt", "xapi"]
    audit = admin.get("/audit", params={"limit": 500}).text
    for text in (added.text, admin.get("/hosts").text, audit, caplog.text):
        assert PASSWORD not in text and "BEGIN CERTIFICATE" not in text
    # At rest: sealed with the data directory's key, not in the database in clear.
    database = (tmp_path / "dockvisor.db").read_bytes()
    assert PASSWORD.encode() not in database
    key = tmp_path / "host-credentials.key"
    assert key.stat().st_mode & 0o777 == 0o600
    # A server started again on the same data directory reaches the pool with them.
    server.cp.hosts.close()
    assert server.cp.hosts.driver(2).host_info().hypervisor == "XCP-ng"


def test_wrong_credentials_name_the_pool_and_xapis_code(server: Server, sim: XapiSimulator) -> None:
    admin = server.client("admin")
    refused = add_pool(admin, sim, password="wrong")
    body = assert_problem(refused, 400, "invalid-input")
    assert "SESSION_AUTHENTICATION_FAILED" in body["detail"] and pool_uri(sim) in body["detail"]
    assert "wrong" not in body["detail"]
    missing = add_pool(admin, sim, password=None)
    assert (
        "both the pool's user and its password"
        in assert_problem(missing, 400, "invalid-input")["detail"]
    )
    untrusted = add_pool(admin, sim, certificate=None)
    assert "certificate is not trusted" in assert_problem(untrusted, 400, "invalid-input")["detail"]
    nobody = add_pool(admin, sim, uri="xapi://127.0.0.1:1")
    assert "does not answer" in assert_problem(nobody, 400, "invalid-input")["detail"]
    in_uri = add_pool(admin, sim, uri=f"https://root:{PASSWORD}@127.0.0.1:{sim.port}")
    assert "not in the URI" in assert_problem(in_uri, 400, "invalid-input")["detail"]
    libvirt_with_password = add_pool(admin, sim, uri="test:///default")
    assert (
        "takes no user or password"
        in assert_problem(libvirt_with_password, 400, "invalid-input")["detail"]
    )
    assert [h["family"] for h in admin.get("/hosts").json()] == ["libvirt"]


def test_a_pool_member_leads_to_the_master(server: Server, sim: XapiSimulator) -> None:
    assert sim.member_url is not None
    member = sim.member_url.replace("https://", "xapi://").rstrip("/")
    added = add_pool(server.client("admin"), sim, uri=member)
    assert added.status_code == 201, added.text
    logins = [c for c in sim.calls if c[0] == "session.login_with_password"]
    assert len(logins) >= 2  # refused by the member (HOST_IS_SLAVE), then the master
    driver = server.cp.hosts.driver(int(added.json()["id"]))
    assert driver.host_info().cpus >= 16  # the whole pool: every host's CPUs
    # The same pool through its master's address is not a second host.
    again = add_pool(server.client("admin"), sim, name="pool1-again")
    detail = assert_problem(again, 409, "already-exists")["detail"]
    assert "'pool1'" in detail and "xapi-pool:" in detail


# -- the workflow ----------------------------------------------------------------------


def test_create_delegate_snapshot_revert_clone_resize_on_a_pool(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    dev = server.add_user("dev")
    task = create(server, host_id, "web", vcpus=2, memory=1 * GiB, max_vcpus=4,
                  max_memory=2 * GiB)  # fmt: skip
    assert task["state"] == "succeeded", task
    vm_id = str(task["object_id"])
    (record,) = vms_named(sim, "web")
    assert (record["VCPUs_at_startup"], record["VCPUs_max"]) == (2, 4)
    assert (record["memory_dynamic_max"], record["memory_static_max"]) == (1 * GiB, 2 * GiB)
    assert record["power_state"] == "Running"
    # Sizes travel as XAPI's int64: strings on the wire.
    sizing = [c for c in sim.calls if c[0] == "VM.set_memory_limits"]
    assert sizing and all(isinstance(v, str) for v in sizing[-1][1][1:])

    granted(admin, "user:dev", f"/vms/{vm_id}", "Developer")
    assert [v["id"] for v in dev.get("/vms").json()] == [vm_id]

    def run(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 202, response.text
        done = server.wait(dev, response.json())
        assert done["state"] == "succeeded", done
        return done

    run(dev.post(f"/vms/{vm_id}/snapshots", json={"name": "clean"}))
    assert [s["name"] for s in dev.get(f"/vms/{vm_id}/snapshots").json()] == ["clean"]
    resized = dev.patch(f"/vms/{vm_id}", json={"vcpus": 3, "memory": 1536 * MiB})
    run(resized)
    (record,) = vms_named(sim, "web")
    assert record["memory_dynamic_max"] == 1536 * MiB
    assert sim.objects("VM_metrics")[record["metrics"]]["VCPUs_number"] == 3
    run(dev.post(f"/vms/{vm_id}/snapshots/clean/revert"))
    (record,) = vms_named(sim, "web")
    assert record["power_state"] == "Running" and record["memory_dynamic_max"] == 1 * GiB
    shown = dev.get(f"/vms/{vm_id}").json()
    assert (shown["vcpus"], shown["memory"], shown["state"]) == (2, 1 * GiB, "running")

    # A developer may clone only with VM.Allocate somewhere: the admin clones.
    cloned = admin.post(f"/vms/{vm_id}/clone", json={"name": "web-2"})
    assert cloned.status_code == 202, cloned.text
    assert server.wait(admin, cloned.json())["state"] == "succeeded"
    (copy,) = vms_named(sim, "web-2")
    assert copy["power_state"] == "Halted" and not copy["is_a_template"]
    assert not [r for r in sim.objects("VM").values() if r["name_label"] == "web-2-cut"]


def test_a_resize_beyond_the_room_waits_for_the_next_boot(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    vm_id = str(create(server, host_id, "grow", max_vcpus=2, max_memory=1 * GiB)["object_id"])
    response = admin.patch(f"/vms/{vm_id}", json={"memory": 2 * GiB})
    assert server.wait(admin, response.json())["state"] == "succeeded"
    shown = admin.get(f"/vms/{vm_id}").json()
    assert shown["memory"] == 2 * GiB  # what it will boot with (quotas count it)
    (record,) = vms_named(sim, "grow")
    assert record["memory_static_max"] == 1 * GiB  # static limits change while halted
    for action in ("kill", "start"):
        state = admin.put(f"/vms/{vm_id}/state", json={"action": action})
        assert server.wait(admin, state.json())["state"] == "succeeded"
    (record,) = vms_named(sim, "grow")
    assert record["memory_static_max"] == 2 * GiB and record["power_state"] == "Running"


# -- following the pool ----------------------------------------------------------------


def test_a_vm_made_by_another_client_appears_within_a_second(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    session = other_client(sim)
    try:
        x = session.xenapi
        base = x.VM.get_by_name_label("Other install media")[0]
        ref = x.VM.clone(base, "made-elsewhere")
        x.VM.provision(ref)

        def listed(name: str) -> bool:
            return name in [v["name"] for v in admin.get("/vms").json()]

        assert wait_for(lambda: listed("made-elsewhere")) < 1.0
        x.VM.set_name_label(ref, "renamed-elsewhere")
        wait_for(lambda: listed("renamed-elsewhere"))
        # The pool forgets what changed since dockvisor's token: it fetches all again.
        sim.lose_events()
        other = x.VM.clone(base, "after-the-loss")
        x.VM.provision(other)
        wait_for(lambda: listed("after-the-loss"), 3.0)
        x.VM.destroy(ref)
        wait_for(lambda: not listed("renamed-elsewhere"))
    finally:
        session.xenapi.session.logout()


def test_an_expired_session_is_renewed_without_the_user_noticing(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    vm_id = str(create(server, host_id, "s1", start=False)["object_id"])
    logins = len([c for c in sim.calls if c[0] == "session.login_with_password"])
    sim.expire_sessions()
    snap = admin.post(f"/vms/{vm_id}/snapshots", json={"name": "after-expiry"})
    assert server.wait(admin, snap.json())["state"] == "succeeded"
    assert len([c for c in sim.calls if c[0] == "session.login_with_password"]) > logins


# -- failures ----------------------------------------------------------------------------


def test_an_operation_xapi_refuses_fails_its_task_with_xapis_code(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    disks = {r["uuid"] for r in sim.objects("VDI").values()}
    sim.fail_next("VM.provision", "SR_BACKEND_FAILURE_44", "", "There is insufficient space", "")
    task = create(server, host_id, "full")
    assert task["state"] == "failed"
    assert "SR_BACKEND_FAILURE_44" in str(task["error"]) and pool_uri(sim) in str(task["error"])
    assert (
        vms_named(sim, "full") == [] and {r["uuid"] for r in sim.objects("VDI").values()} == disks
    )
    assert "full" not in [v["name"] for v in admin.get("/vms").json()]


def test_a_pool_that_vanishes_mid_task_fails_the_task_and_leaves_no_row(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    disks = {r["uuid"] for r in sim.objects("VDI").values()}
    sim.task_seconds = 3.0
    made = start_create(server, host_id, "lost")
    time.sleep(0.5)
    sim.vanish()
    task = server.wait(admin, made)
    assert task["state"] == "failed"
    assert "does not answer" in str(task["error"]) and pool_uri(sim) in str(task["error"])
    assert "lost" not in [v["name"] for v in admin.get("/vms").json()]
    hosts = {h["id"]: h["state"] for h in admin.get("/hosts").json()}
    assert hosts[host_id] == "unreachable"
    # The pool comes back and its task runs on: what it made is undone, since the
    # user was told the create failed.
    sim.come_back()
    wait_for(
        lambda: (
            vms_named(sim, "lost") == []
            and {r["uuid"] for r in sim.objects("VDI").values()} == disks
            and any(c[0] == "task.destroy" for c in sim.calls[-20:])
        ),
        15.0,
    )
    assert "lost" not in [v["name"] for v in admin.get("/vms").json()]


# -- the CLI -----------------------------------------------------------------------------

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))


def dv(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKVISOR_SERVER": server.url, "DOCKVISOR_TOKEN": server.tokens["admin"]}
    env.pop("DOCKVISOR_HOST_PASSWORD", None)
    return subprocess.run([DOCKVISOR, *args], env=env, capture_output=True, text=True,
                          timeout=120, input=stdin)  # fmt: skip


def test_the_cli_adds_a_pool_and_works_on_it(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    certificate = tmp_path / "pool.pem"
    certificate.write_text(sim.certificate_pem)
    add = ["host", "add", "pool1", pool_uri(sim), "--user", "root", "--password-file", "-",
           "--certificate", str(certificate)]  # fmt: skip
    wrong = dv(server, *add, stdin="nope\n")
    assert wrong.returncode != 0 and "SESSION_AUTHENTICATION_FAILED" in wrong.stderr
    added = dv(server, *add, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "host pool1 added (id 2, xapi, connected)" in added.stdout
    listed = dv(server, "host", "list")
    assert "pool1" in listed.stdout and "xapi" in listed.stdout and PASSWORD not in listed.stdout
    driver = server.cp.hosts.driver(2)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    from dockvisor.domain.model import TemplateSpec

    driver.register_template(TemplateSpec(name=TEMPLATE, disk=str(disk), docker_port=None))
    created = dv(server, "vm", "create", "cli-vm", "--template", TEMPLATE, "--vcpus", "1",
                 "--memory", "512MiB", "--max-vcpus", "2", "--max-memory", "1GiB",
                 "--host", "2")  # fmt: skip
    assert created.returncode == 0, created.stderr
    for args in (
        ("vm", "snapshot", "cli-vm", "base"),
        ("vm", "set", "cli-vm", "--vcpus", "2"),
        ("vm", "revert", "cli-vm", "base"),
        ("vm", "clone", "cli-vm", "cli-vm-2"),
    ):
        done = dv(server, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert {"cli-vm", "cli-vm-2"} <= {r["name_label"] for r in sim.objects("VM").values()}
    shown = dv(server, "--json", "vm", "show", "cli-vm")
    assert '"vcpus": 1' in shown.stdout  # back to the snapshot's size
    tasks = dv(server, "task", "list")
    assert tasks.returncode == 0 and "vm.clone" in tasks.stdout and "succeeded" in tasks.stdout
    ended = tasks.stdout.splitlines()[1].split()[0]
    late = dv(server, "task", "cancel", ended)
    assert late.returncode != 0 and "has already succeeded" in late.stderr
    refused = dv(server, "vm", "create", "x", "--template", "nope", "--vcpus", "1",
                 "--memory", "512MiB", "--host", "2")  # fmt: skip
    assert refused.returncode != 0 and "template" in refused.stderr


def test_cancelling_a_task_cancels_the_pools_task_and_leaves_nothing(
    server: Server, sim: XapiSimulator, tmp_path: Path
) -> None:
    host_id = pool_with_template(server, sim, tmp_path)
    admin = server.client("admin")
    disks = {r["uuid"] for r in sim.objects("VDI").values()}
    sim.task_seconds = 5.0
    made = start_create(server, host_id, "halfway")
    task_id = made["id"]
    wait_for(lambda: any(c[0] == "Async.VM.clone" for c in sim.calls), 5.0)
    asked = admin.post(f"/tasks/{task_id}/cancel")
    assert asked.status_code == 202, asked.text
    task = server.wait(admin, made)
    assert (task["state"], task["error_code"]) == ("failed", "cancelled"), task
    assert any(c[0] == "task.cancel" for c in sim.calls)
    assert vms_named(sim, "halfway") == []
    assert {r["uuid"] for r in sim.objects("VDI").values()} == disks
    assert "halfway" not in [v["name"] for v in admin.get("/vms").json()]
    again = admin.post(f"/tasks/{task_id}/cancel")
    assert_problem(again, 409, "bad-power-state")
