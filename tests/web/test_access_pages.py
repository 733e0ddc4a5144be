"""The Access and Resource sets pages, driven as htmx drives them: signed in with the
login form, each change sent with the page's CSRF token (the `data-csrf` of <body>) in
X-CSRF-Token and HX-Request: true, against a live server on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dockvisor.domain.privileges import Privilege
from dockvisor.services import identity
from dockvisor.store.models import AclEntryRow, AuditRow, ResourceSetRow, RoleRow, UserRow
from tests.api.conftest import TEMPLATE, Server, _server, create_vm


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    """A live server on SQLite with user `admin` (Admin on /, password admin-password)."""
    yield from _server(tmp_path, f"sqlite:///{tmp_path / 'dockvisor.db'}")


class Browser:
    """A signed-in browser: its cookie, and the CSRF token its pages carry."""

    def __init__(self, server: Server, name: str) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=60, trust_env=False)
        signed_in = self.http.post(
            "/login", data={"name": name, "password": f"{name}-password", "next": "/"}
        )
        assert signed_in.status_code == 303, signed_in.text
        page = self.http.get("/access")
        assert page.status_code == 200, page.text
        found = re.search(r'data-csrf="([^"]+)"', page.text)
        assert found, "the page carries no CSRF token"
        self.csrf = found.group(1)

    def get(self, url: str, **params: str) -> httpx.Response:
        return self.http.get(url, params=params)

    def send(self, method: str, url: str, data: dict[str, object] | None = None,
             csrf: bool = True) -> httpx.Response:  # fmt: skip
        headers = {"HX-Request": "true"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return self.http.request(method, url, data=data, headers=headers)


def user_names(server: Server) -> set[str]:
    with server.cp.db.read() as session:
        return set(session.scalars(select(UserRow.name)))


def acl(server: Server) -> set[tuple[str, int, str, str]]:
    with server.cp.db.read() as session:
        return {
            (r.subject_kind, r.subject_id, r.path, r.role)
            for r in session.scalars(select(AclEntryRow))
        }


def held_on_root(server: Server, name: str) -> frozenset[Privilege]:
    with server.cp.db.read() as session:
        who = identity.principal_for(session, identity.user_by_name(session, name), "session")
    server.cp.access.invalidate()
    return server.cp.access.privileges(who, ("/",))


def test_an_admin_creates_a_user_and_a_group_and_grants_the_group_a_role(srv: Server) -> None:
    admin = Browser(srv, "admin")

    bad = admin.send("POST", "/ui/access/users", {"name": "carol", "password": "short"})
    assert bad.status_code == 422
    assert 'id="user-password" name="password"' in bad.text
    assert re.search(r'id="user-password"[^>]*aria-invalid="true"', bad.text)
    assert 'id="user-password-error">a password needs at least 8 characters' in bad.text
    assert "carol" not in user_names(srv)

    made = admin.send("POST", "/ui/access/users", {"name": "carol", "password": "carol-password"})
    assert made.status_code == 200, made.text
    assert "User carol created" in made.text
    assert made.headers["HX-Trigger"] == "access-changed"
    assert "carol" in user_names(srv)

    group = admin.send("POST", "/ui/access/groups", {"name": "devs", "members": "carol"})
    assert group.status_code == 200, group.text
    assert "Group devs created with carol" in group.text

    granted = admin.send(
        "POST",
        "/ui/access/grant",
        {"subject": "group:devs", "path": "/", "role": "Viewer", "propagate": "on"},
    )
    assert granted.status_code == 200, granted.text
    assert "Granted: group:devs has the role Viewer on" in granted.text
    assert granted.headers["HX-Trigger"] == "access-changed"
    assert Privilege.VM_VIEW in held_on_root(srv, "carol")  # the grant took effect

    # The lists the page reloads on access-changed show what was made.
    assert "<option>devs</option>" in admin.get("/ui/access/choices", kind="groups").text
    directory = admin.get("/ui/access/directory").text
    assert re.search(r"<th scope=\"row\">devs</th><td>carol</td>", directory)
    rows = admin.get("/ui/access/acl-rows").text
    assert re.search(r"<td>group:devs</td><td>Viewer</td><td><code>/</code></td>", rows)
    assert "Revoke the role Viewer of group:devs on /?" in rows

    # Revoked from its button: the entry is gone and the page says so.
    entry_id = re.search(r'hx-delete="/ui/acl/(\d+)"[^>]*group:devs', rows)
    assert entry_id
    revoked = admin.send("DELETE", f"/ui/acl/{entry_id.group(1)}")
    assert revoked.status_code == 200
    assert "Revoked: Viewer for group:devs on /." in revoked.text
    assert Privilege.VM_VIEW not in held_on_root(srv, "carol")


def test_a_user_with_only_sys_modify_cannot_grant_admin(srv: Server) -> None:
    with srv.cp.db.session() as session:
        session.add(RoleRow(name="UserAdmin", privileges=["Sys.Modify"], builtin=False,
                            description="users and groups only"))  # fmt: skip
    srv.add_user("ursula", role="UserAdmin")
    ursula = Browser(srv, "ursula")
    page = ursula.get("/access").text
    assert 'hx-post="/ui/access/users"' in page  # she may create users...
    assert 'hx-post="/ui/access/grant"' not in page  # ...not grant roles
    before = acl(srv)

    refused = ursula.send(
        "POST", "/ui/access/users", {"name": "mallory", "password": "mallory-pw", "admin": "on"}
    )
    assert refused.status_code == 403, refused.text
    assert "ursula lacks Permissions.Modify on /" in refused.text
    assert 'role="alert"' in refused.text
    assert "mallory" not in user_names(srv)  # nothing half-made: no user without the grant

    direct = ursula.send(
        "POST",
        "/ui/access/grant",
        {"subject": "user:ursula", "path": "/", "role": "Admin", "propagate": "on"},
    )
    assert direct.status_code == 403
    assert "Permissions.Modify" in direct.text
    assert acl(srv) == before


def test_a_viewer_sees_the_lists_but_no_create_or_revoke_button(srv: Server) -> None:
    srv.add_user("vic", role="Viewer")
    admin_page = Browser(srv, "admin").get("/access").text
    viewer = Browser(srv, "vic").get("/access")
    assert viewer.status_code == 200
    for control in ('hx-post="/ui/access/users"', 'hx-post="/ui/access/groups"',
                    'hx-post="/ui/access/members"', 'hx-post="/ui/access/grant"',
                    'hx-delete="/ui/acl/', 'hx-delete="/ui/access/users/'):  # fmt: skip
        assert control in admin_page, control
        assert control not in viewer.text, control
    assert '<th scope="row">Viewer</th>' in viewer.text  # the roles and their privileges
    assert "No entry you may change." in viewer.text
    assert '<th scope="row">vic</th>' in viewer.text and '<th scope="row">admin</th>' not in (
        viewer.text
    )


def test_a_change_without_the_csrf_header_is_refused_and_audited(srv: Server) -> None:
    admin = Browser(srv, "admin")
    refused = admin.send(
        "POST", "/ui/access/users", {"name": "eve", "password": "eve-password"}, csrf=False
    )
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.text
    assert "eve" not in user_names(srv)
    with srv.cp.db.read() as session:
        audited = [
            (r.action, r.result) for r in session.scalars(select(AuditRow).order_by(AuditRow.id))
        ]
    assert ("POST /ui/access/users", "refused:forbidden") in audited


def test_effective_privileges_name_the_deciding_group_entry_and_its_path(srv: Server) -> None:
    api = srv.client("admin")
    vm_id = create_vm(srv, api, "web-1")
    srv.add_user("dave", role="Viewer")  # his own entry on /, replaced deeper down
    assert api.post("/groups", json={"name": "devs", "members": ["dave"]}).status_code == 201
    grant = {"subject": "group:devs", "path": "/hosts/1", "role": "Developer"}
    assert api.post("/acl", json=grant).status_code == 201

    admin = Browser(srv, "admin")
    page = admin.get("/access/effective", user="dave", vm=vm_id)
    assert page.status_code == 200, page.text
    text = page.text
    assert "<h3>dave on VM web-1</h3>" in text
    assert re.search(
        r"<td>group:devs</td><td>Developer</td><td><code>/hosts/1</code></td><td>yes</td>"
        r"<td><strong>decides \(inherited from /hosts/1\)</strong></td>",
        text,
    )
    assert re.search(
        r"<td>user:dave</td><td>Viewer</td><td><code>/</code></td><td>yes</td>"
        r"<td>replaced by the entries on /hosts/1",
        text,
    )
    assert re.search(
        r'<th scope="row">VM.Snapshot</th><td>Developer for group:devs on /hosts/1</td>', text
    )
    assert "VM.Delete" not in text.split('id="effective-privileges"')[1].split("</table>")[0]

    # From the form on /access (htmx): the form again, with the answer, not a page.
    fragment = admin.send("GET", f"/access/effective?user=dave&vm={vm_id}")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "decides (inherited from /hosts/1)" in fragment.text
    unknown = admin.send("GET", f"/access/effective?user=nobody&vm={vm_id}")
    assert unknown.status_code == 404
    assert 'id="effective-user-error">no user named' in unknown.text

    # Dave may use the VM, not look into who holds what on it.
    dave_sees = Browser(srv, "dave").get("/access/effective", user="admin", vm=vm_id)
    assert dave_sees.status_code == 403
    assert "dave lacks Permissions.Modify or Sys.Audit" in dave_sees.text
    assert "decides" not in dave_sees.text


def test_a_resource_set_with_a_bad_size_shows_the_error_there_and_creates_nothing(
    srv: Server,
) -> None:
    admin = Browser(srv, "admin")
    form = {"name": "team", "vcpus": "8", "memory": "12 potatoes", "disk": "", "vms": "3",
            "hosts": "1", "templates": TEMPLATE, "subjects": ""}  # fmt: skip
    bad = admin.send("POST", "/ui/resource-sets", form)
    assert bad.status_code == 422, bad.text
    assert re.search(
        r'id="set-memory" name="memory" value="12 potatoes" aria-invalid="true" '
        r'aria-describedby="set-memory-error"',
        bad.text,
    )
    message = r'id="set-memory-error">the memory limit \S+12 potatoes\S+ has an unknown unit'
    assert re.search(message, bad.text)
    assert 'id="set-vcpus-error"' not in bad.text
    with srv.cp.db.read() as session:
        assert session.scalar(select(ResourceSetRow).where(ResourceSetRow.name == "team")) is None

    ghost = admin.send(
        "POST", "/ui/resource-sets", {**form, "memory": "4GiB", "subjects": "user:ghost"}
    )
    assert ghost.status_code == 404
    assert 'id="set-subjects-error">no user named' in ghost.text
    with srv.cp.db.read() as session:
        assert session.scalar(select(ResourceSetRow).where(ResourceSetRow.name == "team")) is None

    good = admin.send("POST", "/ui/resource-sets", {**form, "memory": "4GiB"})
    assert good.status_code == 201, good.text
    assert good.headers["HX-Trigger"] == "set-changed"
    assert re.search(r'Resource set <a href="/resource-sets/\d+">team</a> created', good.text)


def test_a_set_page_lists_its_members_vms_and_usage(srv: Server) -> None:
    api = srv.client("admin")
    srv.add_user("rita")
    srv.add_user("stranger")
    made = api.post(
        "/resource-sets",
        json={"name": "team", "limits": {"vcpus": 8, "memory": 4 * 1024**3, "vms": 4},
              "templates": [TEMPLATE], "host_ids": [1], "subjects": ["user:rita"]},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    set_id = made.json()["id"]
    body = {"name": "in-set", "template": TEMPLATE, "vcpus": 2, "memory": 512 * 1024**2,
            "resource_set_id": set_id}  # fmt: skip
    started = api.post("/vms", json=body)
    assert started.status_code == 202, started.text
    vm_id = srv.wait(api, started.json())["object_id"]
    create_vm(srv, api, "outside")  # not in the set: not listed

    admin = Browser(srv, "admin")
    page = admin.get(f"/resource-sets/{set_id}")
    assert page.status_code == 200, page.text
    assert f'<a href="/vms/{vm_id}">in-set</a>' in page.text
    assert "outside" not in page.text
    assert re.search(r"vCPUs</span>\s*<span class=\"usage-text\">2 / 8</span>", page.text)
    assert re.search(r"Memory</span>\s*<span class=\"usage-text\">512MiB / 4GiB</span>", page.text)
    assert re.search(r'<progress max="8" value="2"', page.text)
    assert '<dd id="set-members">user:rita</dd>' in page.text
    assert 'hx-put="/ui/resource-sets/' in page.text  # the edit form
    assert "Delete the resource set team?" in page.text
    assert '<input type="hidden" name="path" value="/resource-sets/' in page.text  # Delegate

    listing = admin.get("/resource-sets").text
    assert f'<a href="/resource-sets/{set_id}">team</a>' in listing

    # A member sees it, without the admin's controls nor the VMs she may not view;
    # someone else does not see it at all.
    member = Browser(srv, "rita").get(f"/resource-sets/{set_id}")
    assert member.status_code == 200
    assert f'href="/vms/{vm_id}"' not in member.text
    assert "No VM you may view (1 in all)." in member.text
    assert 'hx-put="/ui/resource-sets/' not in member.text
    assert Browser(srv, "stranger").get(f"/resource-sets/{set_id}").status_code == 404

    # Changing a limit refreshes the page's summary (set-changed) with the new limit.
    edit = admin.send(
        "PUT",
        f"/ui/resource-sets/{set_id}",
        {"name": "team", "vcpus": "16", "memory": "4GiB", "vms": "4", "hosts": "1",
         "templates": TEMPLATE, "subjects": "user:rita"},
    )  # fmt: skip
    assert edit.status_code == 200, edit.text
    assert edit.headers["HX-Trigger"] == "set-changed"
    summary = admin.get(f"/ui/resource-sets/{set_id}/summary").text
    assert re.search(r"vCPUs</span>\s*<span class=\"usage-text\">2 / 16</span>", summary)
