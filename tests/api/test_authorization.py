"""The authorization matrix: every VM endpoint against every built-in role.

The world: the admin makes two VMs, "inside" and "outside", each with a snapshot "base".
One user per built-in role holds that role on /vms/<inside> only, and "nobody" holds
nothing. For each user, each endpoint on each VM must be allowed (2xx, and a 202's task
succeeds), refused with 403 "forbidden" (the user can see the VM but lacks the
privilege) or refused with 404 "not-found" (the user cannot see the VM: exactly what an
id that never existed gets). What each role may do is computed from BUILTIN_ROLES; a few
explicit spot checks keep the computation honest.

Then the administration endpoints: allowed for an Admin on "/", 403 for a Developer on a
VM.
"""

from __future__ import annotations

import uuid
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege
from dockvisor.domain.sizes import GiB
from tests.api.conftest import NODE, TEMPLATE, Server, assert_problem, create_vm

P = Privilege

# user name -> the built-in role they hold on /vms/<inside> (None: no entry at all)
ROLE_OF = {
    "viewer": "Viewer",
    "operator": "Operator",
    "developer": "Developer",
    "vmadmin": "Admin",
    "nobody": None,
}


# -- helpers ------------------------------------------------------------------------------


def snapshot(server: Server, client: httpx.Client, vm: str, name: str) -> None:
    response = client.post(f"/vms/{vm}/snapshots", json={"name": name})
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task


@dataclass
class World:
    server: Server
    inside: str
    outside: str
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def admin(self) -> httpx.Client:
        return self.server.client("admin")


def build_world(server: Server) -> World:
    """Two VMs with a snapshot "base" each; one user per role on the inside VM."""
    admin = server.client("admin")
    inside = create_vm(server, admin, "inside")
    outside = create_vm(server, admin, "outside")
    for vm in (inside, outside):
        snapshot(server, admin, vm, "base")
    world = World(server, inside, outside)
    for user, role in ROLE_OF.items():
        world.clients[user] = server.add_user(user, role=role, path=f"/vms/{inside}")
    return world


def privileges_of(role: str | None) -> frozenset[Privilege]:
    return BUILTIN_ROLES[role].privileges if role else frozenset()


# -- the VM endpoints ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request to a VM endpoint, and the privileges it takes. `{vm}` and `{user}` in
    the path and the body's strings are filled in."""

    label: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    needs: AbstractSet[Privilege] = frozenset()  # on /vms/ID
    needs_on_host: AbstractSet[Privilege] = frozenset()  # on /hosts/ID
    # The test driver has no Docker engine: an allowed caller gets 400 "unsupported",
    # which still proves the permission check passed.
    unsupported_is_allowed: bool = False

    def send(self, client: httpx.Client, vm: str, user: str) -> httpx.Response:
        body = None
        if self.body is not None:
            body = {
                k: v.format(vm=vm, user=user) if isinstance(v, str) else v
                for k, v in self.body.items()
            }
        return client.request(
            self.method, self.path.format(vm=vm, user=user), json=body, params=self.params
        )


def power(action: str) -> Call:
    return Call(
        f"power {action}", "PUT", "/vms/{vm}/state", {"action": action}, needs={P.VM_POWER_MGMT}
    )


# In an order that works when everything is allowed: the VM is running at the start (and
# at the revert), the snapshot the user makes exists when they delete it, and the VM
# is deleted last.
VM_CALLS = [
    Call("view", "GET", "/vms/{vm}", needs={P.VM_VIEW}),
    Call("list snapshots", "GET", "/vms/{vm}/snapshots", needs={P.VM_VIEW}),
    Call(
        "docker endpoint",
        "GET",
        "/vms/{vm}/endpoint",
        needs={P.DOCKER_VIEW},
        unsupported_is_allowed=True,
    ),
    power("stop"),
    power("start"),
    power("reboot"),
    power("kill"),
    power("start"),
    Call("resize vcpus", "PATCH", "/vms/{vm}", {"vcpus": 2}, needs={P.VM_CONFIG_CPU}),
    Call("resize memory", "PATCH", "/vms/{vm}", {"memory": 1 * GiB}, needs={P.VM_CONFIG_MEMORY}),
    Call("snapshot", "POST", "/vms/{vm}/snapshots", {"name": "snap-{user}"}, needs={P.VM_SNAPSHOT}),
    Call("revert", "POST", "/vms/{vm}/snapshots/base/revert", needs={P.VM_SNAPSHOT_ROLLBACK}),
    Call("delete snapshot", "DELETE", "/vms/{vm}/snapshots/snap-{user}", needs={P.VM_SNAPSHOT}),
    # A clone outside any resource set also takes VM.Allocate on the host.
    Call(
        "clone",
        "POST",
        "/vms/{vm}/clone",
        {"name": "clone-{user}"},
        needs={P.VM_CLONE},
        needs_on_host={P.VM_ALLOCATE},
    ),
    Call("delete", "DELETE", "/vms/{vm}", params={"force": "true"}, needs={P.VM_DELETE}),
]


def expected_outcome(call: Call, on_vm: frozenset[Privilege], on_host: frozenset[Privilege]) -> str:
    if P.VM_VIEW not in on_vm:
        return "not-found"
    if call.needs <= on_vm and call.needs_on_host <= on_host:
        return "allowed"
    return "forbidden"


def outcome(server: Server, client: httpx.Client, call: Call, response: httpx.Response) -> str:
    """One of "allowed", "forbidden" and "not-found", or what else happened."""
    status = response.status_code
    if status == 202:
        task = server.wait(client, response.json())
        if task["state"] == "succeeded":
            return "allowed"
        return f"202 but the task {task['state']}: {task['error_code']}: {task['error']}"
    if 200 <= status < 300:
        return "allowed"
    body = assert_problem(response, status, response.json().get("code", "?"))
    if status == 400 and body["code"] == "unsupported" and call.unsupported_is_allowed:
        return "allowed"
    if (status, body["code"]) in ((403, "forbidden"), (404, "not-found")):
        return str(body["code"])
    return f"{status} {body['code']}: {body['detail']}"


def without(detail: str, vm_id: str) -> str:
    return detail.replace(vm_id, "<id>")


@pytest.mark.parametrize("user", list(ROLE_OF))
def test_every_vm_endpoint_for_each_role(sqlite_server: Server, user: str) -> None:
    world = build_world(sqlite_server)
    client = world.clients[user]
    on_inside = privileges_of(ROLE_OF[user])
    on_host: frozenset[Privilege] = frozenset()  # nobody here has an entry on the host
    mismatches = []

    # The outside VM first (nothing may change it), each call next to the same call on
    # an id that does not exist: the two refusals must not be told apart.
    ghost = str(uuid.uuid4())
    for call in VM_CALLS:
        response = call.send(client, world.outside, user)
        got = outcome(sqlite_server, client, call, response)
        if got != "not-found":
            mismatches.append(("outside", call.label, "not-found", got))
            continue
        unknown = call.send(client, ghost, user)
        assert_problem(unknown, response.status_code, response.json()["code"])
        assert without(response.json()["detail"], world.outside) == without(
            unknown.json()["detail"], ghost
        ), call.label

    for call in VM_CALLS:
        response = call.send(client, world.inside, user)
        want = expected_outcome(call, on_inside, on_host)
        got = outcome(sqlite_server, client, call, response)
        if got != want:
            mismatches.append(("inside", call.label, want, got))
        if got == want == "forbidden":  # the refusal names a privilege the caller lacks
            missing = (call.needs - on_inside) | (call.needs_on_host - on_host)
            assert any(p.value in response.json()["detail"] for p in missing), response.json()

    assert mismatches == [], f"{user} ({ROLE_OF[user]}): (vm, call, expected, got): " + "".join(
        f"\n  {m}" for m in mismatches
    )

    # What was allowed took effect on the inside VM; the outside VM is untouched.
    inside = world.admin.get(f"/vms/{world.inside}")
    if P.VM_DELETE in on_inside:
        assert_problem(inside, 404, "not-found")
    else:
        # (a revert, made after the resize, brings back the base snapshot's 1 vCPU)
        resized = P.VM_CONFIG_CPU in on_inside and P.VM_SNAPSHOT_ROLLBACK not in on_inside
        assert (inside.json()["state"], inside.json()["vcpus"]) == ("running", 2 if resized else 1)
    outside = world.admin.get(f"/vms/{world.outside}").json()
    assert (outside["state"], outside["vcpus"], outside["snapshots"]) == ("running", 1, 1)


def test_vm_list_shows_exactly_what_each_user_can_view(sqlite_server: Server) -> None:
    world = build_world(sqlite_server)

    def names(client: httpx.Client) -> list[str]:
        response = client.get("/vms")
        assert response.status_code == 200, response.text
        return sorted(vm["name"] for vm in response.json())

    assert names(world.admin) == ["inside", "outside"]
    for user in ("viewer", "operator", "developer", "vmadmin"):
        assert names(world.clients[user]) == ["inside"], user
    assert names(world.clients["nobody"]) == []


# -- spot checks, spelled out ---------------------------------------------------------------


def task_of(server: Server, client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return server.wait(client, response.json())


def test_developer_snapshots_and_reverts_but_cannot_resize_or_delete(
    sqlite_server: Server,
) -> None:
    world = build_world(sqlite_server)
    dev, vm = world.clients["developer"], world.inside

    made = task_of(sqlite_server, dev, dev.post(f"/vms/{vm}/snapshots", json={"name": "mine"}))
    assert made["state"] == "succeeded", made
    reverted = task_of(sqlite_server, dev, dev.post(f"/vms/{vm}/snapshots/base/revert"))
    assert reverted["state"] == "succeeded", reverted
    assert {s["name"] for s in dev.get(f"/vms/{vm}/snapshots").json()} == {"base", "mine"}

    # Growing within the VM's maximums is the developer's; beyond them takes VM.Allocate.
    beyond = dev.get(f"/vms/{vm}").json()["max_vcpus"] + 1
    refused = assert_problem(dev.patch(f"/vms/{vm}", json={"vcpus": beyond}), 403, "forbidden")
    assert "VM.Allocate" in refused["detail"]
    refused = assert_problem(dev.delete(f"/vms/{vm}", params={"force": "true"}), 403, "forbidden")
    assert "VM.Delete" in refused["detail"]
    assert dev.get(f"/vms/{vm}").json()["vcpus"] == 1
    grown = task_of(sqlite_server, dev, dev.patch(f"/vms/{vm}", json={"vcpus": 2}))
    assert grown["state"] == "succeeded", grown
    assert dev.get(f"/vms/{vm}").json()["vcpus"] == 2


def test_operator_powers_but_cannot_snapshot(sqlite_server: Server) -> None:
    world = build_world(sqlite_server)
    operator, vm = world.clients["operator"], world.inside

    stopped = task_of(
        sqlite_server, operator, operator.put(f"/vms/{vm}/state", json={"action": "stop"})
    )
    assert stopped["state"] == "succeeded", stopped
    assert operator.get(f"/vms/{vm}").json()["state"] == "stopped"

    refused = assert_problem(
        operator.post(f"/vms/{vm}/snapshots", json={"name": "mine"}), 403, "forbidden"
    )
    assert "VM.Snapshot" in refused["detail"]
    assert_problem(operator.post(f"/vms/{vm}/snapshots/base/revert"), 403, "forbidden")


def test_viewer_sees_but_cannot_power(sqlite_server: Server) -> None:
    world = build_world(sqlite_server)
    viewer, vm = world.clients["viewer"], world.inside

    assert viewer.get(f"/vms/{vm}").json()["state"] == "running"
    refused = assert_problem(
        viewer.put(f"/vms/{vm}/state", json={"action": "stop"}), 403, "forbidden"
    )
    assert "VM.PowerMgmt" in refused["detail"]
    assert world.admin.get(f"/vms/{vm}").json()["state"] == "running"


def test_a_clone_also_takes_allocate_on_the_host(sqlite_server: Server) -> None:
    """A Developer on the VM holds VM.Clone but not VM.Allocate on the host: 403. With
    VM.Allocate on the host (an entry that does not propagate to the VMs) the clone is
    made, and its maker gets Developer on it."""
    world = build_world(sqlite_server)
    admin, dev, vm = world.admin, world.clients["developer"], world.inside

    refused = assert_problem(dev.post(f"/vms/{vm}/clone", json={"name": "copy"}), 403, "forbidden")
    assert "VM.Allocate" in refused["detail"]

    assert (
        admin.post("/roles", json={"name": "Allocator", "privileges": ["VM.Allocate"]}).status_code
        == 201
    )
    granted = admin.post(
        "/acl",
        json={
            "subject": "user:developer",
            "path": "/hosts/1",
            "role": "Allocator",
            "propagate": False,
        },
    )
    assert granted.status_code == 201, granted.text

    cloned = task_of(sqlite_server, dev, dev.post(f"/vms/{vm}/clone", json={"name": "copy"}))
    assert cloned["state"] == "succeeded", cloned
    assert sorted(v["name"] for v in dev.get("/vms").json()) == ["copy", "inside"]
    assert_problem(dev.get(f"/vms/{world.outside}"), 404, "not-found")


# -- the administration endpoints ---------------------------------------------------------


def test_admin_endpoints_are_for_the_root_admin_only(sqlite_server: Server, tmp_path: Path) -> None:
    server = sqlite_server
    admin = server.client("admin")
    inside = create_vm(server, admin, "inside")
    dev = server.add_user("developer", role="Developer", path=f"/vms/{inside}")
    node2 = tmp_path / "node2.xml"
    node2.write_text(NODE)

    # (method, path, body, the root admin's status). Each is refused to the developer
    # first, so the admin's success also shows the refusal changed nothing (no 409).
    requests: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("POST", "/users", {"name": "carol", "password": "carol-password"}, 201),
        ("POST", "/groups", {"name": "team", "members": ["carol"]}, 201),
        ("PUT", "/groups/team/members", {"members": []}, 200),
        ("POST", "/roles", {"name": "Snapshotter", "privileges": ["VM.View", "VM.Snapshot"]}, 201),
        ("DELETE", "/roles/Snapshotter", None, 204),
        ("DELETE", "/users/carol", None, 204),
        ("POST", "/hosts", {"name": "node2", "uri": f"test://{node2}"}, 201),
        ("POST", "/pools", {"name": "pool1"}, 201),
        (
            "POST",
            "/resource-sets",
            {"name": "team-set", "limits": {"vcpus": 4}, "templates": [TEMPLATE], "host_ids": [1]},
            201,
        ),
        ("GET", "/audit", None, 200),
        ("GET", "/audit/verify", None, 200),
    ]
    for method, path, body, status in requests:
        refused = dev.request(method, path, json=body)
        assert_problem(refused, 403, "forbidden")
        allowed = admin.request(method, path, json=body)
        assert allowed.status_code == status, (method, path, allowed.text)

    assert "carol" not in [u["name"] for u in admin.get("/users").json()]
    assert [g["members"] for g in admin.get("/groups").json()] == [[]]
    assert "Snapshotter" not in [r["name"] for r in admin.get("/roles").json()]
    assert [h["name"] for h in admin.get("/hosts").json()] == ["local", "node2"]
    assert [p["name"] for p in admin.get("/pools").json()] == ["pool1"]
    assert [s["name"] for s in admin.get("/resource-sets").json()] == ["team-set"]

    # Every refusal was audited, and the chain still verifies.
    refusals = [
        e["action"]
        for e in admin.get("/audit", params={"limit": 1000}).json()
        if e["actor"] == "developer" and e["result"] == "refused:forbidden"
    ]
    for action in ("user.create", "user.delete", "group.create", "group.members", "role.create",
                   "role.delete", "host.add", "pool.create", "resource-set.create"):  # fmt: skip
        assert action in refusals, (action, refusals)
    assert admin.get("/audit/verify").json()["ok"] is True
