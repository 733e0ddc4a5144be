"""A VM is the hypervisor's id, not its name: renamed behind dockvisor's back it keeps its
row, its id and what was delegated on it."""

from __future__ import annotations

from tests.api.conftest import Server, create_vm
from tests.api.test_delegation import granted


def test_a_vm_renamed_on_the_hypervisor_keeps_its_id_and_its_grants(
    sqlite_server: Server, unique_name: str
) -> None:
    admin = sqlite_server.client("admin")
    dev = sqlite_server.add_user("dev")
    vm_id = create_vm(sqlite_server, admin, unique_name)
    granted(admin, "user:dev", f"/vms/{vm_id}", "Developer")
    driver = sqlite_server.cp.hosts.driver(1)
    with driver.raw_connection() as conn:  # type: ignore[attr-defined]
        dom = conn.lookupByName(unique_name)
        if dom.isActive():
            dom.destroy()
        dom.rename(f"{unique_name}-renamed", 0)
    report = sqlite_server.cp.inventory.reconcile(1)
    assert report.removed == [] and report.added == [], report
    shown = dev.get(f"/vms/{vm_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["name"] == f"{unique_name}-renamed"
    assert [v["id"] for v in dev.get("/vms").json()] == [vm_id]
    assert dev.post(f"/vms/{vm_id}/snapshots", json={"name": "still-mine"}).status_code == 202
