"""The web interface's routes, over HTTP (no browser): each page and action is declared
and guarded like the API route that does the same thing, refusals are HTML and audited,
sign-in leads back where the user was, and the pages load nothing from another site."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockvisor.api.declared import DeclaredRoute
from dockvisor.errors import EngineUnavailable
from dockvisor.web import _declared
from dockvisor.web.routing import WebRoute, safe_next
from tests.api.conftest import TEMPLATE, Server, _server, create_vm

# Each web action and the API route whose declaration it must carry.
SAME_AS = {
    ("POST", "/ui/vms"): "vm.create",
    ("POST", "/ui/templates/pull"): "template.pull",
    ("POST", "/ui/vms/{vm_id}/power"): "vm.power",
    ("POST", "/ui/vms/{vm_id}/resize"): "vm.resize",
    ("POST", "/ui/vms/{vm_id}/snapshots"): "vm.snapshot",
    ("POST", "/ui/vms/{vm_id}/snapshots/{name}/revert"): "vm.revert",
    ("DELETE", "/ui/vms/{vm_id}/snapshots/{name}"): "vm.snapshot.delete",
    ("POST", "/ui/vms/{vm_id}/clean"): "vm.clean-snapshot",
    ("POST", "/ui/vms/{vm_id}/clone"): "vm.clone",
    ("DELETE", "/ui/vms/{vm_id}"): "vm.delete",
    ("POST", "/ui/acl"): "acl.grant",
    ("POST", "/ui/tokens"): "token.create",
    ("DELETE", "/ui/tokens/{token_id}"): "token.revoke",
    ("POST", "/ui/vms/{vm_id}/containers"): "docker.container.create",
    ("POST", "/ui/vms/{vm_id}/containers/{container}/{action}"): "docker.container.{action}",
    ("DELETE", "/ui/vms/{vm_id}/containers/{container}"): "docker.container.remove",
    ("DELETE", "/ui/vms/{vm_id}/images/{image}"): "docker.image.remove",
    ("POST", "/ui/access/users"): "user.create",
    ("DELETE", "/ui/access/users/{name}"): "user.delete",
    ("POST", "/ui/access/groups"): "group.create",
    ("POST", "/ui/access/members"): "group.members",
    ("DELETE", "/ui/access/groups/{name}"): "group.delete",
    ("POST", "/ui/access/grant"): "acl.grant",
    ("DELETE", "/ui/acl/{entry_id}"): "acl.revoke",
    ("POST", "/ui/resource-sets"): "resource-set.create",
    ("PUT", "/ui/resource-sets/{set_id}"): "resource-set.update",
    ("DELETE", "/ui/resource-sets/{set_id}"): "resource-set.delete",
}


@pytest.fixture
def web(tmp_path: Path, sqlite_url_web: str) -> Iterator[Server]:
    yield from _server(tmp_path, sqlite_url_web)


@pytest.fixture
def sqlite_url_web(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dockvisor.db'}"


def sign_in(server: Server, name: str, password: str) -> tuple[httpx.Client, str]:
    """A browser-like client signed in through the form, and its CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=30, trust_env=False)
    answer = client.post("/login", data={"name": name, "password": password, "next": "/"})
    assert answer.status_code == 303, answer.text
    page = client.get("/")
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, page.text[:500]
    return client, match.group(1)


def test_every_web_action_declares_what_the_api_route_does(web: Server) -> None:
    app = web.cp  # the routes are on the served app: rebuild it the same way
    from dockvisor.api.app import create_app

    routes = list(_declared(create_app(app).routes))
    api = {r.name: r.requirement for r in routes if not isinstance(r, WebRoute)}
    pages = {
        (method, r.path): r.requirement
        for r in routes
        if isinstance(r, WebRoute)
        for method in r.methods or ()
    }
    for (method, path), name in SAME_AS.items():
        assert pages[(method, path)] == api[name], (method, path, name)
    # Every state-changing web route is one of them: none is left undeclared or weaker.
    changing = {k for k in pages if k[0] in ("POST", "PUT", "PATCH", "DELETE")}
    assert changing - set(SAME_AS) <= {("POST", "/login"), ("POST", "/logout")}
    assert all(isinstance(r, DeclaredRoute) for r in routes)


def test_signing_in_leads_back_to_the_page(web: Server) -> None:
    web.add_user("ann", role="Admin", password="ann-password-1")
    vm = create_vm(web, web.client("ann"), "back-here")
    client = httpx.Client(base_url=web.url, timeout=30, trust_env=False)
    first = client.get(f"/vms/{vm}")
    assert first.status_code == 303
    assert first.headers["location"] == f"/login?next=/vms/{vm}"
    # An htmx request of a page whose session ended: sent to sign-in, then to the page.
    fragment = client.get(
        f"/ui/vms/{vm}/summary",
        headers={"HX-Request": "true", "HX-Current-URL": f"{web.url}/vms/{vm}"},
    )
    assert fragment.headers["HX-Redirect"] == f"/login?next=/vms/{vm}"
    answer = client.post(
        "/login", data={"name": "ann", "password": "ann-password-1", "next": f"/vms/{vm}"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/vms/{vm}"
    assert "VM back-here" in client.get(f"/vms/{vm}").text
    bad = client.post("/login", data={"name": "ann", "password": "wrong", "next": "/"})
    assert bad.status_code == 401 and "alert" in bad.text


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:1"]
)
def test_sign_in_never_leads_to_another_site(target: str) -> None:
    assert safe_next(target) == "/"


def test_another_site_cannot_sign_a_browser_in(web: Server) -> None:
    web.add_user("bob", role="Admin", password="bob-password-1")
    client = httpx.Client(base_url=web.url, timeout=30, trust_env=False)
    answer = client.post(
        "/login",
        data={"name": "bob", "password": "bob-password-1", "next": "/"},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403
    assert "dockvisor_session" not in answer.headers.get("set-cookie", "")


def test_a_forged_action_is_refused_and_audited(web: Server) -> None:
    web.add_user("cat", role="Admin", password="cat-password-1")
    vm = create_vm(web, web.client("cat"), "forged")
    client, csrf = sign_in(web, "cat", "cat-password-1")
    forged = client.post(
        f"/ui/vms/{vm}/power", data={"action": "stop"}, headers={"HX-Request": "true"}
    )
    assert forged.status_code == 403
    assert "X-CSRF-Token" in forged.text  # says why, as HTML in the page's alert region
    assert forged.headers["HX-Retarget"] == "#alerts"
    entries = web.client("cat").get("/audit", params={"limit": 20}).json()
    assert any(e["result"] == "refused:forbidden" and "/power" in e["action"] for e in entries)
    assert web.client("cat").get(f"/vms/{vm}").json()["state"] == "running"
    # With the token it is done, by the same service as the API's.
    done = client.post(
        f"/ui/vms/{vm}/power",
        data={"action": "stop"},
        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
    )
    assert done.status_code == 202, done.text
    assert "vm.stop" in done.text


def test_a_viewer_sees_no_action_and_is_refused_any(web: Server) -> None:
    web.add_user("dan", role="Admin")
    vm = create_vm(web, web.client("dan"), "watched")
    web.add_user("vic", role="Viewer", path=f"/vms/{vm}", password="vic-password-1")
    client, csrf = sign_in(web, "vic", "vic-password-1")
    page = client.get(f"/vms/{vm}")
    assert page.status_code == 200 and "VM watched" in page.text
    main = page.text[page.text.index("<main") :]  # (the header has Sign out)
    assert not re.search(r"hx-(post|delete|put|patch)=", main), "an action button shows"
    refused = client.post(
        f"/ui/vms/{vm}/snapshots",
        data={"name": "s1"},
        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
    )
    assert refused.status_code == 403
    assert "VM.Snapshot" in refused.text and f"/vms/{vm}" in refused.text


def test_the_new_vm_form_puts_errors_next_to_fields_and_creates_nothing(web: Server) -> None:
    web.add_user("eve", role="Admin", password="eve-password-1")
    client, csrf = sign_in(web, "eve", "eve-password-1")
    headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
    bad = client.post(
        "/ui/vms", data={"name": "x1", "vcpus": "2", "memory": "lots"}, headers=headers
    )
    assert bad.status_code == 422
    assert re.search(r'id="vm-memory"[^>]*aria-invalid="true"', bad.text)
    assert "is not a size" in bad.text
    too_many = client.post(
        "/ui/vms", data={"name": "x2", "vcpus": "999", "memory": "1GiB"}, headers=headers
    )
    assert too_many.status_code in (409, 422)
    assert re.search(r'id="vm-vcpus"[^>]*aria-invalid="true"', too_many.text), too_many.text
    assert web.client("eve").get("/vms").json() == []
    good = client.post(
        "/ui/vms", data={"name": "x3", "vcpus": "1", "memory": "512MiB"}, headers=headers
    )
    assert good.status_code == 202 and "vm.create" in good.text


def test_the_new_vm_form_boots_cold_when_asked_else_resumes_a_spare(web: Server) -> None:
    api = web.add_user("hal", role="Admin", password="hal-password-1")
    task = api.post(f"/templates/{TEMPLATE}/warm", json={"spares": 1}).json()
    assert web.wait(api, task)["state"] == "succeeded"
    driver = web.cp.hosts.driver(1)
    (spare,) = driver.list_spares()
    client, csrf = sign_in(web, "hal", "hal-password-1")
    headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
    assert 'id="vm-cold" name="cold"' in client.get("/vms/new").text
    form = {"template": TEMPLATE, "vcpus": "1", "memory": "1GiB"}

    def create(name: str, **extra: str) -> str:
        answer = client.post("/ui/vms", data={"name": name, **form, **extra}, headers=headers)
        assert answer.status_code == 202, answer.text
        (task_id,) = re.findall(r'id="task-([0-9a-f-]{36})"', answer.text)
        done = web.wait(api, api.get(f"/tasks/{task_id}").json())
        assert done["state"] == "succeeded", done
        return str(done["step"])

    assert not create("cold1", cold="on").startswith("warm start"), "asked cold"
    assert [s["name"] for s in api.get("/spares").json()] == [spare.name], "spare left"
    assert create("warm1").startswith("warm start: resumed a spare")
    assert driver.get_vm("warm1").uuid == spare.uuid


def test_a_snapshot_marked_clean_is_offered_as_one_button(web: Server) -> None:
    api = web.add_user("fay", role="Admin", password="fay-password-1")
    vm = create_vm(web, api, "sandbox")
    assert api.put(f"/vms/{vm}/clean-snapshot", json={"name": "nope"}).status_code == 404
    task = api.post(f"/vms/{vm}/snapshots", json={"name": "base", "clean": True}).json()
    assert web.wait(api, task)["state"] == "succeeded"
    assert api.get(f"/vms/{vm}").json()["clean_snapshot"] == "base"
    client, _ = sign_in(web, "fay", "fay-password-1")
    page = client.get(f"/vms/{vm}").text
    assert 'id="rollback-clean"' in page and f"/ui/vms/{vm}/snapshots/base/revert" in page
    task = api.delete(f"/vms/{vm}/snapshots/base").json()
    assert web.wait(api, task)["state"] == "succeeded"
    assert api.get(f"/vms/{vm}").json()["clean_snapshot"] is None
    assert 'id="rollback-clean"' not in client.get(f"/vms/{vm}").text


def test_a_container_list_asks_again_only_while_its_engine_may_come_back(
    web: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = web.add_user("gus", role="Admin", password="gus-password-1")
    vm = create_vm(web, api, "sandbox")
    client, _ = sign_in(web, "gus", "gus-password-1")
    never = client.get(f"/ui/vms/{vm}/containers").text  # the test driver: no Docker
    assert "has no Docker engine" in never
    assert "every 5s" not in never and "asked again" not in never

    def not_up(*args: object, **kwargs: object) -> None:
        raise EngineUnavailable("the engine at 127.0.0.1:42000 refused the connection")

    monkeypatch.setattr(web.cp.docker, "list_containers", not_up)
    for path in (f"/ui/vms/{vm}/containers", f"/vms/{vm}/docker"):
        later = client.get(path).text
        assert "refused the connection (asked again every 5 s)" in later
        assert re.search(r'id="container-rows"[^>]*hx-trigger="[^"]*, every 5s"', later), later


def test_pages_load_nothing_from_another_site(web: Server) -> None:
    web.add_user("gus", role="Admin", password="gus-password-1")
    client, _ = sign_in(web, "gus", "gus-password-1")
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text + docs.text)
    assert sources and all(s.startswith(("/", "#")) for s in sources), sources
    assert "/static/vendor/swagger-ui-dist/swagger-ui-bundle.js" in docs.text
    assert client.get("/static/vendor/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/vendor/htmx.org/dist/htmx.min.js").status_code == 200


def test_the_audit_page_filters_in_the_database(web: Server) -> None:
    web.add_user("hal", role="Admin", password="hal-password-1")
    sign_in(web, "hal", "hal-password-1")  # a first login, then this one
    client, _ = sign_in(web, "hal", "hal-password-1")
    bad = httpx.Client(base_url=web.url, timeout=30, trust_env=False)
    assert bad.post("/login", data={"name": "ivy_%", "password": "nope"}).status_code == 401
    rows = re.findall(r"<tr><td>\d+</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>",
                      client.get("/audit", params={"actor": "ivy_%"}).text)  # fmt: skip
    assert rows == [("ivy_%", "login")]  # only that actor's entries
    page = client.get("/audit", params={"actor": "HAL", "action": "log"}).text
    logins = re.findall(r"<td>(hal)</td><td>(login)</td>", page)
    assert len(logins) == 2


def test_the_resize_form_sent_back_as_shown_changes_no_size(web: Server) -> None:
    """The form shows sizes rounded to a tenth (4.5GiB for 4567MiB): sent back with only
    the vCPUs changed, it must not grow the disk to 4.5GiB (nor refuse to shrink it)."""
    web.add_user("ann", role="Admin", password="ann-password-1")
    admin = web.client("ann")
    made = admin.post("/vms", json={"name": "odd", "vcpus": 1, "memory": 512 * 1024**2,
                                    "disk": 4567 * 1024**2, "start": False})  # fmt: skip
    task = web.wait(admin, made.json())
    vm = str(task["object_id"])
    client, csrf = sign_in(web, "ann", "ann-password-1")
    answer = client.post(
        f"/ui/vms/{vm}/resize",
        data={"vcpus": "2", "memory": "512MiB", "disk": "4.5GiB"},
        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
    )
    assert answer.status_code == 202, answer.text
    done = web.wait(admin, {"id": re.search(r'id="task-([0-9a-f-]+)"', answer.text)[1]})  # type: ignore[index]
    assert done["result"]["applied"] == {"vcpus": 2}, done
    assert admin.get(f"/vms/{vm}").json()["disk"] == 4567 * 1024**2
