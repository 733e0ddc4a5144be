"""What a host cannot do is said up front, naming the host, before any task starts."""

from __future__ import annotations

from dockvisor.domain.model import Capability
from tests.api.conftest import Server, assert_problem, create_vm


def test_hosts_show_what_they_can_do(sqlite_server: Server) -> None:
    admin = sqlite_server.client("admin")
    (host,) = admin.get("/hosts").json()
    assert host["family"] == "libvirt"
    assert {"snapshots", "live-vcpus", "events", "metrics"} <= set(host["capabilities"])
    assert "loopback-forward" not in host["capabilities"]  # the test driver has no guests


def test_an_action_the_host_cannot_do_is_refused_before_any_task(sqlite_server: Server) -> None:
    admin = sqlite_server.client("admin")
    vm = create_vm(sqlite_server, admin, "no-snapshots")
    before = len(admin.get("/tasks", params={"limit": 500}).json())
    driver = sqlite_server.cp.hosts.driver(1)
    driver.capabilities &= ~(Capability.SNAPSHOTS | Capability.CLONE_RUNNING)  # type: ignore[misc]
    refused = admin.post(f"/vms/{vm}/snapshots", json={"name": "s"})
    assert "cannot take snapshots" in assert_problem(refused, 400, "unsupported")["detail"]
    assert "test://" in refused.json()["detail"]
    refused = admin.post(f"/vms/{vm}/snapshots/s/revert")
    assert "cannot revert to snapshots" in assert_problem(refused, 400, "unsupported")["detail"]
    refused = admin.post(f"/vms/{vm}/clone", json={"name": "copy"})
    assert "cannot clone a running VM" in assert_problem(refused, 400, "unsupported")["detail"]
    assert len(admin.get("/tasks", params={"limit": 500}).json()) == before
    names = [v["name"] for v in admin.get("/vms").json()]
    assert "copy" not in names
