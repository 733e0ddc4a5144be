"""Schemathesis over the server's own OpenAPI description (GET /api/v1/openapi.json), as
an administrator, on a live SQLite server. For every operation it sends requests that fit
the description and requests that do not; for operations on an object it also sends
requests about objects that exist (a VM, a snapshot, a resource set, a user...), so
that their bodies reach the code behind the 404. No answer may be a 5xx, and every
answer must be one the description documents (status code, content type and body).

Left out: GET /api/v1/events, an endless server-sent event stream (a request to it does
not end, so there is no response to check).

Kept in, though they can take the administrator's own access away: DELETE /tokens/{id}
(revoking the token these requests carry) and DELETE /acl/{id} (revoking the Admin entry
on /). Rather than leave them out, `keep_admin` restores that token and that entry in
the store after each call, so the rest of the run is still made as an administrator.

Not sent: POST /hosts with a URI that names a real libvirt driver (scheme://...) other
than the in-process test driver. This machine runs libvirtd, and such a host would put
its real VMs in reach of the generated requests.

schemathesis's pytest integration (`schemathesis.pytest.from_fixture`) does not run
under pytest 9.2 (it reads `Function._nodeid`, which pytest no longer has), so this
drives its Python API: one Hypothesis test per operation and kind of input, each a
subtest, so that one failing operation does not hide the others.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from dockvisor.domain.sizes import MiB
from dockvisor.store.models import AclEntryRow, TokenRow
from tests.api.conftest import Server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXCLUDED = {("GET", "/api/v1/events")}
MAX_EXAMPLES = 25
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
REAL_DRIVER_URI = re.compile(r"^\s*(?!test\b)[A-Za-z][A-Za-z0-9+.-]*://", re.IGNORECASE)


def keep_admin(server: Server) -> None:
    """Undo what a generated request did to the administrator's own access, if anything."""
    admin_id = server.user_ids["admin"]
    with server.cp.db.session() as session:
        for token in session.scalars(select(TokenRow).where(TokenRow.user_id == admin_id)):
            token.revoked = False
        entry = session.scalar(
            select(AclEntryRow).where(
                AclEntryRow.subject_kind == "user",
                AclEntryRow.subject_id == admin_id,
                AclEntryRow.path == "/",
                AclEntryRow.role == "Admin",
            )
        )
        if entry is None:
            session.add(
                AclEntryRow(
                    subject_kind="user",
                    subject_id=admin_id,
                    path="/",
                    role="Admin",
                    propagate=True,
                )
            )
    server.cp.access.invalidate()


def reaches_a_real_hypervisor(case: schemathesis.Case) -> bool:
    if (case.method.upper(), case.path) != ("POST", "/api/v1/hosts"):
        return False
    uri = case.body.get("uri") if isinstance(case.body, dict) else None
    return isinstance(uri, str) and REAL_DRIVER_URI.match(uri) is not None


def existing_objects(server: Server) -> dict[str, dict[str, str]]:
    """Make one object of each kind; the path parameters that name them, by path."""
    admin = server.client("admin")

    def made(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (201, 202), response.text
        body = dict(response.json())
        if response.status_code == 202:
            body = dict(server.wait(admin, body))
            assert body["state"] == "succeeded", body
        return body

    made(admin.post("/users", json={"name": "victim", "password": "long-password"}))
    made(admin.post("/groups", json={"name": "crew", "members": ["victim"]}))
    made(admin.post("/roles", json={"name": "Peeker", "privileges": ["VM.View"]}))
    team = made(admin.post("/resource-sets", json={"name": "fuzz", "subjects": ["user:victim"]}))
    create = made(
        admin.post("/vms", json={"name": "target", "vcpus": 1, "memory": 256 * MiB, "start": False})
    )
    vm_id = create["object_id"]
    made(admin.post(f"/vms/{vm_id}/snapshots", json={"name": "s1"}))
    entry = made(
        admin.post(
            "/acl", json={"subject": "user:victim", "path": f"/vms/{vm_id}", "role": "Viewer"}
        )
    )
    spare = made(admin.post("/tokens", json={"name": "spare"}))
    ids = {
        "vm_id": vm_id,
        "set_id": str(team["id"]),
        "entry_id": str(entry["id"]),
        "token_id": str(spare["id"]),
        "task_id": create["id"],
    }
    names = {
        "/api/v1/users/{name}": "victim",
        "/api/v1/groups/{name}": "crew",
        "/api/v1/groups/{name}/members": "crew",
        "/api/v1/roles/{name}": "Peeker",
        "/api/v1/vms/{vm_id}/snapshots/{name}": "s1",
        "/api/v1/vms/{vm_id}/snapshots/{name}/revert": "s1",
    }
    objects: dict[str, dict[str, str]] = {}
    for path in [*names, *(f"/api/v1/{p}" for p in PATHS_WITH_IDS)]:
        params = re.findall(r"{(\w+)}", path)
        objects[path] = {p: names[path] if p == "name" else ids[p] for p in params}
    return objects


PATHS_WITH_IDS = [
    "acl/{entry_id}",
    "tokens/{token_id}",
    "resource-sets/{set_id}",
    "vms/{vm_id}",
    "vms/{vm_id}/state",
    "vms/{vm_id}/snapshots",
    "vms/{vm_id}/clone",
    "vms/{vm_id}/endpoint",
    "tasks/{task_id}",
    "tasks/{task_id}/wait",
]


def test_every_answer_is_documented_and_none_is_a_server_error(
    sqlite_server: Server, subtests: pytest.Subtests
) -> None:
    headers = {"Authorization": f"Bearer {sqlite_server.tokens['admin']}"}
    schema = schemathesis.openapi.from_url(f"{sqlite_server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = [op for op in operations if (op.method.upper(), op.path) not in EXCLUDED]
    assert len(operations) - len(tested) == len(EXCLUDED)
    assert len(tested) >= 40  # the whole API, not an empty or truncated description
    objects = existing_objects(sqlite_server)
    assert all(any(op.path == path for op in tested) for path in objects), objects
    # Runs: every operation, with valid and invalid input; then, deletions last, those on
    # an object with that object's real id.
    runs: list[tuple[Any, GenerationMode, dict[str, str] | None]] = [
        (op, mode, None)
        for op in tested
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    on_objects = [op for op in tested if op.path in objects]
    on_objects.sort(key=lambda op: op.method.upper() == "DELETE")
    runs += [(op, GenerationMode.POSITIVE, objects[op.path]) for op in on_objects]
    calls = 0
    statuses: Counter[int] = Counter()
    nothing_invalid: list[str] = []
    started = time.monotonic()

    for operation, mode, path_parameters in runs:
        strategy = operation.as_strategy(
            generation_mode=mode, path_parameters=path_parameters, feedback=FeedbackSources()
        )

        @SETTINGS
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            hypothesis.assume(not reaches_a_real_hypervisor(case))
            calls += 1
            try:
                response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
                statuses[response.status_code] += 1
            finally:
                keep_admin(sqlite_server)

        kind = mode.value + (" on an existing object" if path_parameters else "")
        with subtests.test(operation=operation.label, input=kind):
            try:
                check()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters, or only
                # free-form strings): there is no negative case to send.
                if mode is not GenerationMode.NEGATIVE:
                    raise
                nothing_invalid.append(operation.label)

    assert calls >= len(runs) * MAX_EXAMPLES // 2, calls  # cases were really sent
    print(
        f"\nschemathesis: {calls} requests, {len(tested)} operations, "
        f"{time.monotonic() - started:.0f} s; answers {dict(sorted(statuses.items()))}; "
        f"no invalid input possible for: "
        f"{', '.join(nothing_invalid) or 'none'}"
    )
