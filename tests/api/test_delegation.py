"""Delegation without escalation, and how ACL entries combine, on SQLite and PostgreSQL.

Granting role R on path X takes Permissions.Modify at X and every privilege of R held
at X. Entries are resolved along / -> /hosts/H -> /vms/V: a deeper entry replaces what
is inherited, a user's own entry beats their group's at the same level, NoAccess takes
everything, and an entry with propagate=false stays on its own object.
"""

from __future__ import annotations

import re
import uuid

import httpx

from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege
from tests.api.conftest import Server, assert_problem, create_vm

# -- helpers ------------------------------------------------------------------------------


def grant(
    client: httpx.Client, subject: str, path: str, role: str, *, propagate: bool = True
) -> httpx.Response:
    return client.post(
        "/acl", json={"subject": subject, "path": path, "role": role, "propagate": propagate}
    )


def granted(client: httpx.Client, subject: str, path: str, role: str, **kw: bool) -> int:
    """Grant, which must succeed; the new entry's id."""
    response = grant(client, subject, path, role, **kw)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert (entry["subject"], entry["path"], entry["role"]) == (subject, path, role)
    return int(entry["id"])


def can_snapshot(server: Server, client: httpx.Client, vm: str, name: str) -> None:
    response = client.post(f"/vms/{vm}/snapshots", json={"name": name})
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task


def privileges_named_in(detail: str) -> set[str]:
    return {
        p.value for p in Privilege if re.search(rf"(?<![\w.]){re.escape(p.value)}(?![\w.])", detail)
    }


def vm_names(client: httpx.Client) -> list[str]:
    response = client.get("/vms")
    assert response.status_code == 200, response.text
    return sorted(vm["name"] for vm in response.json())


# -- delegation -----------------------------------------------------------------------------


def test_an_admin_of_one_vm_delegates_on_it_and_nowhere_else(server: Server) -> None:
    admin = server.client("admin")
    a, b = create_vm(server, admin, "vm-a"), create_vm(server, admin, "vm-b")
    owner = server.add_user("owner", role="Admin", path=f"/vms/{a}")
    friend = server.add_user("friend")
    assert_problem(friend.get(f"/vms/{a}"), 404, "not-found")

    entry = granted(owner, "user:friend", f"/vms/{a}", "Developer")
    assert friend.get(f"/vms/{a}").status_code == 200
    can_snapshot(server, friend, a, "by-friend")
    assert_problem(friend.delete(f"/vms/{a}"), 403, "forbidden")  # Developer: no delete

    # B does not exist for the owner: granting there is refused as for an unknown VM.
    refused = assert_problem(grant(owner, "user:friend", f"/vms/{b}", "Viewer"), 404, "not-found")
    ghost = str(uuid.uuid4())
    unknown = assert_problem(
        grant(owner, "user:friend", f"/vms/{ghost}", "Viewer"), 404, "not-found"
    )
    assert refused["detail"].replace(b, "<id>") == unknown["detail"].replace(ghost, "<id>")
    # Above the VM the owner holds nothing.
    assert_problem(grant(owner, "user:friend", "/", "Viewer"), 403, "forbidden")
    assert_problem(grant(owner, "user:friend", "/hosts/1", "Viewer"), 403, "forbidden")
    assert vm_names(friend) == ["vm-a"]

    # Revoking the entry takes it all back: A was friend's only way to see anything.
    assert owner.delete(f"/acl/{entry}").status_code == 204
    assert_problem(friend.get(f"/vms/{a}"), 404, "not-found")
    assert_problem(friend.post(f"/vms/{a}/snapshots", json={"name": "again"}), 404, "not-found")
    assert vm_names(friend) == []


def test_delegation_never_grants_more_than_the_granter_holds(server: Server) -> None:
    admin = server.client("admin")
    a = create_vm(server, admin, "vm-a")
    for name, privileges in [
        ("SnapshotDelegate", ["VM.View", "Permissions.Modify", "VM.Snapshot"]),
        ("Snapshotter", ["VM.View", "VM.Snapshot"]),
    ]:
        response = admin.post("/roles", json={"name": name, "privileges": privileges})
        assert response.status_code == 201, response.text
    lead = server.add_user("lead")
    granted(admin, "user:lead", f"/vms/{a}", "SnapshotDelegate")
    dev = server.add_user("dev")

    # A subset of what the lead holds there: fine.
    entry = granted(lead, "user:dev", f"/vms/{a}", "Snapshotter")
    # Developer includes privileges the lead lacks: refused, naming exactly those.
    refused = assert_problem(grant(lead, "user:dev", f"/vms/{a}", "Developer"), 403, "forbidden")
    held = {"VM.View", "Permissions.Modify", "VM.Snapshot"}
    missing = {p.value for p in BUILTIN_ROLES["Developer"].privileges} - held
    assert privileges_named_in(refused["detail"]) == missing, refused["detail"]
    # Nor can the lead make roles: that takes Permissions.Modify on "/".
    assert_problem(
        lead.post("/roles", json={"name": "Mine", "privileges": ["VM.View", "VM.Snapshot"]}),
        403,
        "forbidden",
    )
    assert "Mine" not in [r["name"] for r in admin.get("/roles").json()]

    # The grantee's new privilege works, and only that one.
    can_snapshot(server, dev, a, "by-dev")
    assert_problem(dev.put(f"/vms/{a}/state", json={"action": "stop"}), 403, "forbidden")
    assert_problem(grant(dev, "user:lead", f"/vms/{a}", "Snapshotter"), 403, "forbidden")

    # Revoked: dev cannot see the VM any more.
    assert lead.delete(f"/acl/{entry}").status_code == 204
    assert_problem(dev.get(f"/vms/{a}"), 404, "not-found")
    assert_problem(dev.post(f"/vms/{a}/snapshots", json={"name": "again"}), 404, "not-found")


def test_a_role_may_only_hold_privileges_its_maker_holds_on_root(server: Server) -> None:
    admin = server.client("admin")
    response = admin.post(
        "/roles", json={"name": "RoleMaker", "privileges": ["Permissions.Modify", "VM.View"]}
    )
    assert response.status_code == 201, response.text
    maker = server.add_user("maker", role="RoleMaker", path="/")

    refused = maker.post(
        "/roles", json={"name": "Bigger", "privileges": ["VM.View", "VM.Snapshot"]}
    )
    assert privileges_named_in(assert_problem(refused, 403, "forbidden")["detail"]) == {
        "VM.Snapshot"
    }
    made = maker.post("/roles", json={"name": "Smaller", "privileges": ["VM.View"]})
    assert made.status_code == 201, made.text
    assert made.json()["privileges"] == ["VM.View"]
    roles = {r["name"] for r in admin.get("/roles").json()}
    assert "Smaller" in roles and "Bigger" not in roles


# -- how entries combine --------------------------------------------------------------------


def test_group_entries_apply_to_members_and_a_users_own_entry_beats_them(server: Server) -> None:
    admin = server.client("admin")
    a = create_vm(server, admin, "vm-a")
    gina, hugo = server.add_user("gina"), server.add_user("hugo")
    created = admin.post("/groups", json={"name": "devs", "members": ["gina", "hugo"]})
    assert created.status_code == 201, created.text
    assert created.json()["members"] == ["gina", "hugo"]
    granted(admin, "group:devs", f"/vms/{a}", "Developer")
    granted(admin, "user:hugo", f"/vms/{a}", "Viewer")

    # Gina holds Developer through the group.
    can_snapshot(server, gina, a, "by-gina")
    # Hugo's own Viewer entry at the same path wins over the group's Developer.
    assert hugo.get(f"/vms/{a}").status_code == 200
    assert_problem(hugo.post(f"/vms/{a}/snapshots", json={"name": "by-hugo"}), 403, "forbidden")

    # Out of the group, out of the VM.
    response = admin.put("/groups/devs/members", json={"members": ["hugo"]})
    assert response.status_code == 200, response.text
    assert_problem(gina.get(f"/vms/{a}"), 404, "not-found")
    assert vm_names(gina) == []


def test_a_deeper_entry_beats_an_inherited_one(server: Server) -> None:
    admin = server.client("admin")
    a, b = create_vm(server, admin, "vm-a"), create_vm(server, admin, "vm-b")
    ops = server.add_user("ops", role="Admin", path="/hosts/1")
    assert vm_names(ops) == ["vm-a", "vm-b"]

    granted(admin, "user:ops", f"/vms/{a}", "NoAccess")

    assert vm_names(ops) == ["vm-b"]
    assert_problem(ops.get(f"/vms/{a}"), 404, "not-found")
    assert_problem(ops.put(f"/vms/{a}/state", json={"action": "stop"}), 404, "not-found")
    assert ops.get(f"/vms/{b}").status_code == 200
    response = ops.put(f"/vms/{b}/state", json={"action": "stop"})
    assert response.status_code == 202, response.text
    assert server.wait(ops, response.json())["state"] == "succeeded"


def test_an_entry_that_does_not_propagate_stays_on_the_host(server: Server) -> None:
    admin = server.client("admin")
    a = create_vm(server, admin, "vm-a")
    keeper = server.add_user("keeper")
    granted(admin, "user:keeper", "/hosts/1", "Admin", propagate=False)

    # The host is theirs, its VMs are not.
    assert [h["id"] for h in keeper.get("/hosts").json()] == [1]
    assert vm_names(keeper) == []
    assert_problem(keeper.get(f"/vms/{a}"), 404, "not-found")
    # VM.Allocate on the host itself: they may create a VM there, and see that one.
    mine = create_vm(server, keeper, "keepers")
    assert vm_names(keeper) == ["keepers"]
    assert keeper.get(f"/vms/{mine}").status_code == 200
