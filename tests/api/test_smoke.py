"""The server answers, on SQLite and on PostgreSQL, and an admin can create a VM."""

from __future__ import annotations

from dockvisor.domain.sizes import MiB
from tests.api.conftest import Server


def test_admin_creates_a_vm_through_a_task(server: Server) -> None:
    admin = server.client("admin")
    assert admin.get("").json()["api_version"] == "1.0"
    response = admin.post("/vms", json={"name": "web", "vcpus": 1, "memory": 512 * MiB})
    assert response.status_code == 202
    assert response.headers["location"] == f"/api/v1/tasks/{response.json()['id']}"
    task = server.wait(admin, response.json())
    assert task["state"] == "succeeded", task
    vm = admin.get(f"/vms/{task['object_id']}").json()
    assert (vm["name"], vm["vcpus"], vm["memory"], vm["state"]) == ("web", 1, 512 * MiB,
                                                                      "running")  # fmt: skip
