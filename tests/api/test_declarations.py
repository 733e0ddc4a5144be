"""The route x role matrix, generated from what each route declares.

Every operation of the published OpenAPI document carries its Requirement
(`x-dockvisor-privilege`, domain/requirements.py). For each operation and each built-in
role (and no role at all) held on the object the declaration names, the expected answer
follows from the declaration alone:

- a VM the role cannot view: 404, exactly as for a VM that does not exist;
- a privilege the role lacks: 403, naming it;
- otherwise the request passes the check. The probe then makes it fail harmlessly
  *after* the check: a body with an unknown field (422), a snapshot, user or container
  that does not exist (404 naming that thing, never the VM), an engine the test
  hypervisor does not have (400 unsupported). A 401, a 403 or a 404 about the VM means
  the service refused what the declaration allows: the two disagree.

Adding a route adds it to the matrix; declaring it wrongly fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from dockvisor.api.app import create_app
from dockvisor.api.declared import DeclaredRoute
from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege
from dockvisor.domain.requirements import Requirement, from_openapi
from tests.api.conftest import Server, create_vm

ROLES: list[str | None] = [None, "NoAccess", "Viewer", "Operator", "Developer", "Admin"]
PARAMS = {
    "container": "no-such-container",
    "action": "start",
    "name": "no-such-name",
    "set_id": "99999",
    "entry_id": "99999",
    "token_id": "99999",
    "task_id": "no-such-task",
    "image": "no-such-image",
}
# Operations that would do real work on a check that passes, and have no body to spoil.
LAST = {("DELETE", "/api/v1/vms/{vm_id}")}
PROBE_BODY = {"__probe": 1}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    requirement: Requirement
    has_body: bool

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def operations(server: Server) -> list[Operation]:
    document = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            found.append(
                Operation(
                    method.upper(),
                    path,
                    from_openapi(operation),  # every operation declares, or this fails
                    "requestBody" in operation,
                )
            )
    return sorted(found, key=lambda o: (o.method, o.path) in LAST)


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every API route of the app, through the routers it includes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            yield from api_routes(included.routes)


def held_by(role: str | None) -> frozenset[Privilege]:
    return BUILTIN_ROLES[role].privileges if role else frozenset()


def expected(op: Operation, role: str | None) -> str:
    req, held = op.requirement, held_by(role)
    if req.check in ("public", "user"):
        return "passes"
    if req.check == "perm" and req.path.startswith("/vms/") and Privilege.VM_VIEW not in held:
        return "not-found"
    ok = bool(req.privileges & held) if req.any_of else req.privileges <= held
    return "passes" if ok else "forbidden"


def send(client: httpx.Client, op: Operation, vm: str) -> httpx.Response:
    path = op.path.removeprefix("/api/v1")
    for name, value in {**PARAMS, "vm_id": vm}.items():
        path = path.replace(f"{{{name}}}", value)
    body = PROBE_BODY if op.has_body and "tarball" not in op.path else None
    if op.path.endswith(("/images/load", "/images/import")):
        return client.request(op.method, path, content=b"", params={"repository": "x"})
    if op.path.endswith("/events"):  # a stream: its answer's head is enough
        with client.stream(op.method, path) as response:
            if response.status_code >= 400:
                response.read()
            return response
    return client.request(op.method, path, json=body)


def outcome(response: httpx.Response) -> str:
    status = response.status_code
    detail = response.json().get("detail", "") if status >= 400 else ""
    if status == 404 and str(detail).startswith("no VM"):
        return "not-found"
    if status == 403:
        return "forbidden"
    if status == 401:
        return "unauthenticated"
    if status >= 500:
        return f"server error {status}"
    return "passes"


def world(server: Server) -> dict[str | None, tuple[httpx.Client, str]]:
    """One user per role, holding it on their own VM, on host 1 and on / (the objects
    declarations name), each with a VM of their own to be deleted last."""
    admin = server.client("admin")
    users: dict[str | None, tuple[httpx.Client, str]] = {}
    for role in ROLES:
        name = f"r-{(role or 'none').lower()}"
        vm = create_vm(server, admin, f"vm-{name}")
        client = server.add_user(name)
        if role:
            for path in ("/", "/hosts/1", f"/vms/{vm}"):
                entry = {"subject": f"user:{name}", "path": path, "role": role}
                assert admin.post("/acl", json=entry).status_code == 201
        users[role] = (client, vm)
    return users


def test_every_operation_declares_a_requirement_the_app_enforces(server: Server) -> None:
    ops = operations(server)
    assert len(ops) > 60
    routes = list(api_routes(create_app(server.cp).router.routes))
    assert len(routes) >= len(ops)
    assert all(isinstance(r, DeclaredRoute) for r in routes), [r.path for r in routes]
    anonymous = httpx.Client(base_url=f"{server.url}/api/v1", trust_env=False)
    for op in ops:
        if op.requirement.signed_in:
            response = send(anonymous, op, "00000000-0000-0000-0000-000000000000")
            assert response.status_code == 401, (op.label, response.text)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "none")
def test_route_by_role_matrix_follows_the_declarations(sqlite_server: Server, role: str) -> None:
    server = sqlite_server
    users = world(server)
    client, vm = users[role]
    mismatches: list[tuple[str, str, str, Any]] = []
    for op in operations(server):
        want = expected(op, role)
        response = send(client, op, vm)
        got = outcome(response)
        if got != want:
            mismatches.append((op.label, want, got, response.text[:200]))
        elif got == "forbidden":  # the refusal names what the declaration asks for
            assert any(p.value in response.text for p in op.requirement.privileges), op.label
    assert mismatches == [], "\n".join(map(str, mismatches))
