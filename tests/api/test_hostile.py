"""Hostile and malformed requests, on SQLite and PostgreSQL: each is refused with the
right 4xx as application/problem+json, and none ever gets a 5xx."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dockvisor.domain.sizes import MiB
from dockvisor.services import identity
from dockvisor.store.models import TokenRow, UserRow
from tests.api.conftest import TEMPLATE, Server, assert_problem

MAX_BODY = 1024 * 1024
A_VM = {"name": "web", "template": TEMPLATE, "vcpus": 1, "memory": 512 * MiB}


def fields_in(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


def create_vm(server: Server, client: httpx.Client, name: str = "web") -> dict[str, Any]:
    """The create task (ended) of a VM made by `client`."""
    response = client.post("/vms", json={**A_VM, "name": name})
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return task


def anonymous(server: Server, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api/v1", headers=headers, timeout=30, trust_env=False
    )


# -- malformed bodies ---------------------------------------------------------------------


def test_malformed_json_is_422(server: Server) -> None:
    admin = server.client("admin")
    for content in (b"{not json", b'{"name": "web", "vcpus": 1,', b"\xff\xfe", b""):
        response = admin.post("/vms", content=content, headers={"content-type": "application/json"})
        assert_problem(response, 422, "invalid-request")
    for content in (b"null", b"[1, 2]", b'"a string"'):
        response = admin.post("/vms", content=content, headers={"content-type": "application/json"})
        assert_problem(response, 422, "invalid-request")
    assert admin.get("/vms").json() == []


def test_wrong_types_are_422_naming_the_field(server: Server) -> None:
    admin = server.client("admin")
    for field, value in [("vcpus", "two"), ("vcpus", 1.5), ("memory", "lots"), ("name", 5),
                         ("vcpus", 10**30), ("memory", -1), ("start", "perhaps")]:  # fmt: skip
        problem = assert_problem(
            admin.post("/vms", json={**A_VM, field: value}), 422, "invalid-request"
        )
        assert fields_in(problem) == {f"body.{field}"}, problem
        assert f"body.{field}" in problem["detail"]
    assert admin.get("/vms").json() == []
    vm = create_vm(server, admin)["object_id"]
    problem = assert_problem(
        admin.put(f"/vms/{vm}/state", json={"action": "explode"}), 422, "invalid-request"
    )
    assert fields_in(problem) == {"body.action"}
    assert admin.get(f"/vms/{vm}").json()["state"] == "running"
    # The declared privilege is checked before the body is read: an unknown VM is 404
    # whatever the body says.
    assert_problem(
        admin.put(f"/vms/{uuid.uuid4()}/state", json={"action": "explode"}), 404, "not-found"
    )


def test_unknown_fields_are_refused(server: Server) -> None:
    admin = server.client("admin")
    problem = assert_problem(
        admin.post("/vms", json={**A_VM, "cpu_pinning": "0-3"}), 422, "invalid-request"
    )
    assert fields_in(problem) == {"body.cpu_pinning"}
    vm = create_vm(server, admin)["object_id"]
    problem = assert_problem(
        admin.patch(f"/vms/{vm}", json={"vcpus": 2, "max_vcpus": 64}), 422, "invalid-request"
    )
    assert fields_in(problem) == {"body.max_vcpus"}
    problem = assert_problem(
        admin.post("/acl", json={"subject": "user:admin", "path": "/", "role": "Admin", "x": 1}),
        422,
        "invalid-request",
    )
    assert fields_in(problem) == {"body.x"}
    assert admin.get(f"/vms/{vm}").json()["vcpus"] == 1


def test_a_body_over_one_mebibyte_is_413(server: Server) -> None:
    admin = server.client("admin")
    big = b'{"name": "web", "description": "' + b"x" * MAX_BODY + b'"}'
    problem = assert_problem(
        admin.post("/tokens", content=big, headers={"content-type": "application/json"}),
        413,
        "body-too-large",
    )
    assert str(MAX_BODY) in problem["detail"]
    # A body of exactly the limit is read (and refused for what it says, not its size).
    exact = b'{"name": "' + b"x" * (MAX_BODY - 12) + b'"}'
    assert len(exact) == MAX_BODY
    response = admin.post("/tokens", content=exact, headers={"content-type": "application/json"})
    assert_problem(response, 422, "invalid-request")


def test_a_streamed_body_over_one_mebibyte_is_413_too(server: Server) -> None:
    """Without a Content-Length (chunked), the limit holds all the same."""
    admin = server.client("admin")

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "web", "description": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = admin.post("/tokens", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body-too-large")
    assert [t["name"] for t in admin.get("/tokens").json()] == ["tests"]


# -- ids that are unknown, or someone else's ----------------------------------------------


def test_unknown_ids_are_404(server: Server) -> None:
    admin = server.client("admin")
    ghost = str(uuid.uuid4())
    for method, path in [
        ("GET", f"/vms/{ghost}"),
        ("GET", f"/vms/{ghost}/snapshots"),
        ("DELETE", f"/vms/{ghost}"),
        ("POST", f"/vms/{ghost}/snapshots/base/revert"),
        ("GET", f"/tasks/{ghost}"),
        ("GET", f"/tasks/{ghost}/wait"),
        ("GET", "/resource-sets/424242"),
        ("DELETE", "/acl/424242"),
        ("DELETE", "/tokens/424242"),
        ("DELETE", "/users/ghost"),
        ("DELETE", "/roles/Ghost"),
        ("DELETE", "/groups/ghost"),
    ]:
        assert_problem(admin.request(method, path), 404, "not-found")
    problem = assert_problem(admin.get(f"/vms/{ghost}"), 404, "not-found")
    assert problem["detail"] == f"no VM {ghost}"
    vm = create_vm(server, admin)["object_id"]
    assert_problem(admin.post(f"/vms/{vm}/snapshots/nope/revert"), 404, "not-found")
    assert_problem(admin.delete(f"/vms/{vm}/snapshots/nope"), 404, "not-found")


def refusals_that_went_wrong(
    server: Server, cases: list[tuple[str, str, dict[str, Any] | None, int, str]]
) -> list[str]:
    """Each request on a fresh connection (a 500 may cost the connection); those that did
    not get the expected problem, described."""
    wrong = []
    for method, path, body, status, code in cases:
        with server.client("admin") as fresh:
            response = fresh.request(method, path, json=body)
        try:
            assert_problem(response, status, code)
        except AssertionError:
            wrong.append(f"{method} {path} {body or ''} -> {response.status_code} {response.text}")
    return wrong


def test_ids_out_of_range_are_refused_not_500(server: Server) -> None:
    """Integers beyond what the database stores: refused by the schema (422) where the
    schema can say so, not found (404) inside an ACL path; never a crash."""
    huge = 2**40
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("DELETE", f"/acl/{huge}", None, 422, "invalid-request"),
        ("DELETE", f"/tokens/{huge}", None, 422, "invalid-request"),
        ("GET", f"/resource-sets/{huge}", None, 422, "invalid-request"),
        ("POST", "/acl", {"subject": "user:admin", "path": f"/hosts/{huge}", "role": "Viewer"},
         404, "not-found"),
        ("POST", "/vms", {**A_VM, "host_id": 2**31}, 422, "invalid-request"),
        ("POST", "/vms", {**A_VM, "resource_set_id": 2**31}, 422, "invalid-request"),
    ]  # fmt: skip
    wrong = refusals_that_went_wrong(server, cases)
    assert wrong == [], "\n".join(wrong)
    assert server.client("admin").get("/vms").json() == []


def test_nul_bytes_in_ids_and_names_are_refused_not_500(server: Server) -> None:
    """A NUL byte cannot be in any name or id: the request is refused as invalid (422),
    before anything looks it up; never a crash."""
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("GET", "/vms/%00", None, 422, "invalid-request"),
        ("GET", "/tasks/%00", None, 422, "invalid-request"),
        ("DELETE", "/users/%00", None, 422, "invalid-request"),
        ("PUT", "/groups/%00/members", {"members": []}, 422, "invalid-request"),
        ("POST", "/groups", {"name": "team", "members": ["\u0000"]}, 422, "invalid-request"),
        ("POST", "/acl", {"subject": "user:\u0000", "path": "/", "role": "Viewer"}, 422,
         "invalid-request"),
        ("POST", "/acl", {"subject": "user:admin", "path": "/vms/\u0000", "role": "Viewer"}, 422,
         "invalid-request"),
        ("POST", "/login", {"name": "admin\u0000", "password": "admin-password"}, 422,
         "invalid-request"),
    ]  # fmt: skip
    wrong = refusals_that_went_wrong(server, cases)
    assert wrong == [], "\n".join(wrong)


def test_another_users_vm_is_404_exactly_like_an_unknown_one(server: Server) -> None:
    admin = server.client("admin")
    vm = create_vm(server, admin)["object_id"]
    eve = server.add_user("eve")
    ghost = str(uuid.uuid4())
    for method, path, body in [
        ("GET", "/vms/{id}", None),
        ("GET", "/vms/{id}/snapshots", None),
        ("GET", "/vms/{id}/endpoint", None),
        ("PUT", "/vms/{id}/state", {"action": "kill"}),
        ("PATCH", "/vms/{id}", {"vcpus": 2}),
        ("POST", "/vms/{id}/snapshots", {"name": "s"}),
        ("POST", "/vms/{id}/clone", {"name": "copy"}),
        ("DELETE", "/vms/{id}", None),
    ]:
        theirs = assert_problem(
            eve.request(method, path.format(id=vm), json=body), 404, "not-found"
        )
        unknown = assert_problem(
            eve.request(method, path.format(id=ghost), json=body), 404, "not-found"
        )
        assert {k: v for k, v in theirs.items() if k != "detail"} == {
            k: v for k, v in unknown.items() if k != "detail"
        }
        assert theirs["detail"].replace(vm, "<id>") == unknown["detail"].replace(ghost, "<id>")
    assert eve.get("/vms").json() == []
    assert admin.get(f"/vms/{vm}").json()["state"] == "running"


def test_another_users_task_is_404_exactly_like_an_unknown_one(server: Server) -> None:
    admin = server.client("admin")
    task = create_vm(server, admin)["id"]
    eve = server.add_user("eve")
    ghost = str(uuid.uuid4())
    for path in ("/tasks/{id}", "/tasks/{id}/wait"):
        theirs = assert_problem(eve.get(path.format(id=task)), 404, "not-found")
        unknown = assert_problem(eve.get(path.format(id=ghost)), 404, "not-found")
        assert theirs["detail"].replace(task, "<id>") == unknown["detail"].replace(ghost, "<id>")
    assert task not in [t["id"] for t in eve.get("/tasks").json()]
    assert admin.get(f"/tasks/{task}").status_code == 200


# -- credentials --------------------------------------------------------------------------


def test_an_expired_token_is_401_saying_it_expired(server: Server) -> None:
    with server.cp.db.session() as session:
        user = session.get(UserRow, server.user_ids["admin"])
        assert user is not None
        row, secret = identity.create_token(
            session, user, "short-lived", datetime.now(UTC) + timedelta(days=1)
        )
        token_id = row.id
    with anonymous(server, Authorization=f"Bearer {secret}") as client:
        assert client.get("/whoami").json()["name"] == "admin"
        with server.cp.db.session() as session:
            token = session.get(TokenRow, token_id)
            assert token is not None
            token.expires = datetime.now(UTC) - timedelta(minutes=1)
        # Changed in the database behind the server's back: it may take the server the
        # lifetime of its caches (a second) to see it, as for another server process.
        time.sleep(server.cp.settings.acl_ttl + 0.1)
        problem = assert_problem(client.get("/whoami"), 401, "unauthorized")
        assert "expired" in problem["detail"]
        assert_problem(client.post("/vms", json=A_VM), 401, "unauthorized")


def test_a_revoked_token_is_401(server: Server) -> None:
    admin = server.client("admin")
    response = admin.post("/tokens", json={"name": "laptop"})
    assert response.status_code == 201, response.text
    laptop = response.json()
    with anonymous(server, Authorization=f"Bearer {laptop['token']}") as client:
        assert client.get("/whoami").status_code == 200
        assert admin.delete(f"/tokens/{laptop['id']}").status_code == 204
        problem = assert_problem(client.get("/whoami"), 401, "unauthorized")
        assert client.get("/whoami").headers["www-authenticate"].startswith("Bearer")
        assert laptop["token"] not in problem["detail"]
    assert [t["revoked"] for t in admin.get("/tokens").json() if t["id"] == laptop["id"]] == [True]
    assert admin.get("/whoami").status_code == 200  # the other token still works


def test_missing_or_garbled_authorization_is_401(server: Server) -> None:
    for authorization in [None, "Basic YWRtaW46YWRtaW4tcGFzc3dvcmQ=", "Bearer", "Token abc",
                          "Bearer dvt_not-a-token", "Bearer " + "A" * 5000]:  # fmt: skip
        headers = {"Authorization": authorization} if authorization is not None else {}
        with anonymous(server, **headers) as client:
            for method, path in [("GET", "/whoami"), ("GET", "/vms"), ("POST", "/tokens")]:
                body = {"name": "x"} if method == "POST" else None
                response = client.request(method, path, json=body)
                assert_problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer"), authorization
    assert [t["name"] for t in server.client("admin").get("/tokens").json()] == ["tests"]


# -- sessions -----------------------------------------------------------------------------


def test_a_session_needs_its_csrf_token_to_change_anything(server: Server) -> None:
    with anonymous(server) as browser:
        login = browser.post("/login", json={"name": "admin", "password": "admin-password"})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        assert browser.cookies.get("dockvisor_session")

        # Reading needs no CSRF token.
        assert browser.get("/whoami").json() == {
            "id": 1,
            "name": "admin",
            "groups": [],
            "via": "session",
        }
        # Changing does.
        problem = assert_problem(browser.post("/tokens", json={"name": "csrf"}), 403, "forbidden")
        assert "X-CSRF-Token" in problem["detail"]
        wrong = browser.post("/tokens", json={"name": "csrf"}, headers={"X-CSRF-Token": "forged"})
        assert_problem(wrong, 403, "forbidden")
        assert [t["name"] for t in browser.get("/tokens").json()] == ["tests"]

        accepted = browser.post("/tokens", json={"name": "csrf"}, headers={"X-CSRF-Token": csrf})
        assert accepted.status_code == 201, accepted.text

        out = browser.post("/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        browser.cookies.clear()
        assert_problem(browser.get("/whoami"), 401, "unauthorized")


def test_logins_are_throttled_after_five_failures(server: Server) -> None:
    server.add_user("victim", password="correct-horse-battery")
    with anonymous(server) as client:
        for _ in range(5):
            refused = client.post("/login", json={"name": "victim", "password": "wrong-guess"})
            assert_problem(refused, 401, "unauthorized")
        # The sixth attempt is refused before the password is looked at, right or not.
        throttled = client.post(
            "/login", json={"name": "victim", "password": "correct-horse-battery"}
        )
        problem = assert_problem(throttled, 429, "throttled")
        assert int(throttled.headers["retry-after"]) >= 1
        assert "too many" in problem["detail"]
        assert "dockvisor_session" not in client.cookies
    results = [
        e["result"]
        for e in server.client("admin").get("/audit", params={"limit": 1000}).json()
        if e["action"] == "login" and e["actor"] == "victim"
    ]
    assert sorted(results) == ["failed"] * 5 + ["throttled"]


# -- and the rest -------------------------------------------------------------------------


def test_assorted_junk_gets_4xx_problems(server: Server) -> None:
    admin = server.client("admin")
    ghost = str(uuid.uuid4())
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/tasks", {"params": {"limit": 0}}, 422),
        ("GET", "/tasks", {"params": {"limit": "all"}}, 422),
        ("GET", "/audit", {"params": {"limit": 10**20}}, 422),
        ("GET", f"/tasks/{ghost}/wait", {"params": {"timeout": -5}}, 422),
        ("DELETE", f"/vms/{ghost}", {"params": {"force": "maybe"}}, 422),
        ("POST", "/vms", {"json": {**A_VM, "name": "../../etc"}}, 422),
        ("POST", "/vms", {"json": {**A_VM, "template": "../x"}}, 422),
        ("POST", "/vms", {"json": {**A_VM, "memory": 1}}, 400),
        ("POST", "/vms", {"json": {**A_VM, "template": "no-such-template"}}, 404),
        ("POST", "/acl", {"json": {"subject": "robot:x", "path": "/", "role": "Viewer"}}, 422),
        ("POST", "/acl", {"json": {"subject": "user:admin", "path": "/x", "role": "Viewer"}}, 400),
        ("POST", "/acl", {"json": {"subject": "user:admin", "path": "/", "role": "Nothing"}}, 404),
        ("POST", "/roles", {"json": {"name": "R", "privileges": ["Root.Everything"]}}, 400),
        ("POST", "/tokens", {"json": {"name": "a b"}}, 422),
        ("POST", "/tokens", {"json": {"name": "t", "expires_in_days": -1}}, 422),
        ("GET", "/no-such-route", {}, 404),
        ("TRACE", "/vms", {}, 405),
    ]  # fmt: skip
    for method, path, kwargs, status in cases:
        response = admin.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        assert_problem(response, status, response.json()["code"])
    assert admin.get("/vms").json() == []
