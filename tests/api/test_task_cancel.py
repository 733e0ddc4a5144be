"""POST /tasks/ID/cancel: who may stop a task, and what an ended one answers."""

from __future__ import annotations

from tests.api.conftest import Server, assert_problem, create_vm


def test_only_the_requester_or_an_admin_cancels_a_task(sqlite_server: Server) -> None:
    admin = sqlite_server.client("admin")
    viewer = sqlite_server.add_user("viewer", role="Viewer")
    vm = create_vm(sqlite_server, admin, "cancel-me")
    task = admin.post(f"/vms/{vm}/snapshots", json={"name": "s1"}).json()
    sqlite_server.wait(admin, task)
    # Someone who cannot see the task is told it does not exist.
    nobody = sqlite_server.add_user("nobody")
    assert_problem(nobody.post(f"/tasks/{task['id']}/cancel"), 404, "not-found")
    # Seeing it is not enough to stop it.
    assert viewer.get(f"/tasks/{task['id']}").status_code == 200
    refused = viewer.post(f"/tasks/{task['id']}/cancel")
    assert "Sys.Modify" in assert_problem(refused, 403, "forbidden")["detail"]
    # An ended task cannot be cancelled.
    ended = admin.post(f"/tasks/{task['id']}/cancel")
    assert "already succeeded" in assert_problem(ended, 409, "bad-power-state")["detail"]
    audit = admin.get("/audit", params={"limit": 50}).json()
    assert any(e["action"] == "task.cancel" for e in audit)
