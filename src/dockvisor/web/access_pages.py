"""The web pages of access and resource sets: users, groups, roles and the ACL (with a
grant form and a Revoke button per entry), the effective privileges of a user on a VM
with the entries they come from, and resource sets with their members, limits, usage
and VMs.

A section is shown to those who meet the declaration of the API route that does the
same thing, on `/` (`Actions`); each action declares that route's requirement and calls
the same service. A form answers with itself: the errors next to their fields (422 for
bad input, the service's status for a refusal) or what was made, and names the lists to
refresh (HX-Trigger: access-changed, set-changed)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from dockvisor.api.params import Key, NumericId, P, Who
from dockvisor.domain.quota import Limits
from dockvisor.domain.requirements import AnyUser
from dockvisor.domain.sizes import format_size
from dockvisor.errors import DockvisorError, Forbidden, NotFound
from dockvisor.services.access import ROOT
from dockvisor.services.admin import Administration
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.web.forms import field_of, size_field, status_for, whole_number
from dockvisor.web.routing import Actions, Requirements, WebRoute, htmx, render

__all__ = ["access_page_router"]

T = TypeVar("T")
ACCESS_CHANGED = {"HX-Trigger": "access-changed"}
SETS_CHANGED = {"HX-Trigger": "set-changed"}
# The field of the set form a service's message is about, by the words it uses.
SET_FIELDS = {
    "subjects": ("no user", "no group", "subjects"),
    "name": ("set name", "set named"),
    "hosts": ("no host",),
    "vcpus": ("vcpus limit",),
    "memory": ("memory limit",),
    "disk": ("disk limit",),
    "vms": ("vms limit",),
}
_SEPARATORS = re.compile(r"[\s,]+")


def _names(text: str) -> list[str]:
    """Names typed in one field, separated by commas, spaces or new lines."""
    return [n for n in _SEPARATORS.split(text.strip()) if n]


def _listed(read: Callable[[], list[T]], what: str) -> tuple[list[T], str]:
    """A list the service gives, or none and a short note if it refuses it."""
    try:
        return read(), ""
    except Forbidden:
        return [], f"You may not see {what}."


class SetForm(BaseModel):
    """A resource set's form as typed (checked by `write_set`, errors beside fields)."""

    name: str = Field(default="", max_length=64)
    vcpus: str = Field(default="", max_length=16)
    memory: str = Field(default="", max_length=32)
    disk: str = Field(default="", max_length=32)
    vms: str = Field(default="", max_length=16)
    hosts: list[str] = Field(default_factory=list, max_length=1000)
    templates: list[str] = Field(default_factory=list, max_length=1000)
    subjects: str = Field(default="", max_length=20000)
    count_snapshots: str = Field(default="", max_length=8)

    def values(self) -> dict[str, Any]:
        return self.model_dump()


def access_page_router(cp: ControlPlane, requirements: Requirements) -> APIRouter:
    web = APIRouter(route_class=WebRoute, include_in_schema=False)
    admin = Administration(cp)

    def actions(who: Principal, chain: tuple[str, ...] = ROOT) -> Actions:
        return Actions(requirements, cp.access.privileges(who, chain))

    def may_grant(who: Principal) -> bool:
        return cp.guard.holds_somewhere(who, frozenset({P.PERMISSIONS_MODIFY}))

    def role_names() -> list[str]:
        return [r["name"] for r in admin.list_roles()]

    # -- /access -------------------------------------------------------------------------

    def directory(who: Principal) -> dict[str, Any]:
        users, users_note = _listed(lambda: admin.list_users(who), "the users")
        groups, groups_note = _listed(lambda: admin.list_groups(who), "the groups")
        return {"users": users, "groups": groups, "can": actions(who),
                "notes": {"users": users_note, "groups": groups_note}}  # fmt: skip

    def acl_rows(who: Principal, path: str = "") -> dict[str, Any]:
        entries, note = _listed(lambda: admin.list_acl(who), "the ACL")
        if path:
            entries = [e for e in entries if e.path == path]
        return {"entries": entries, "acl_note": note, "acl_path": path}

    def grant_form(who: Principal, **extra: Any) -> dict[str, Any]:
        directory_names = directory(who)
        subjects = [f"user:{u['name']}" for u in directory_names["users"]]
        subjects += [f"group:{g['name']}" for g in directory_names["groups"]]
        return {"roles": role_names(), "subjects": subjects, "values": {"propagate": "on"},
                "errors": {}, **extra}  # fmt: skip

    def effective_choices(who: Principal) -> dict[str, Any]:
        users, _ = _listed(lambda: admin.list_users(who), "the users")
        return {"user_names": [u["name"] for u in users], "vms": cp.ops.list_vms(who)}

    @web.get(
        "/access", openapi_extra=AnyUser("the users, groups and entries they may see").openapi()
    )
    def access_page(who: Who, request: Request) -> HTMLResponse:
        roles, roles_note = _listed(admin.list_roles, "the roles")
        may_explain = cp.guard.holds_somewhere(who, frozenset({P.PERMISSIONS_MODIFY, P.SYS_AUDIT}))
        return render(
            request, "access.html", roles=roles, roles_note=roles_note,
            may_grant=may_grant(who), may_explain=may_explain,
            grant=grant_form(who), effective=effective_choices(who) if may_explain else {},
            **directory(who), **acl_rows(who),
        )  # fmt: skip

    @web.get(
        "/ui/access/directory", openapi_extra=AnyUser("the users and groups they may see").openapi()
    )
    def directory_fragment(who: Who, request: Request) -> HTMLResponse:
        return render(request, "access_directory.html", **directory(who))

    @web.get(
        "/ui/access/acl-rows",
        openapi_extra=AnyUser(
            "the entries at or below where they hold Permissions.Modify"
        ).openapi(),
    )
    def acl_rows_fragment(
        who: Who, request: Request, path: Annotated[str, Query(max_length=128)] = ""
    ) -> HTMLResponse:
        return render(request, "access_acl_rows.html", **acl_rows(who, path))

    @web.get(
        "/ui/access/choices",
        openapi_extra=AnyUser("the users and groups they may see").openapi(),
    )
    def choices(
        who: Who,
        request: Request,
        kind: Annotated[str, Query(pattern="^(groups|subjects)$")] = "groups",
        group: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        """The options of a form's group list or subject list, reloaded after a change."""
        if kind == "groups":
            options = [g["name"] for g in admin.list_groups(who)]
            return render(request, "access_options.html", options=options, selected=group)
        subjects = grant_form(who)["subjects"]
        return render(request, "access_options.html", options=subjects, datalist=True)

    # -- users and groups ----------------------------------------------------------------

    @web.post("/ui/access/users", openapi_extra=requirements.same_as("user.create"))
    def create_user(
        who: Who,
        request: Request,
        name: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        admin_role: Annotated[str, Form(alias="admin", max_length=8)] = "",
    ) -> HTMLResponse:
        values = {"name": name, "admin": admin_role}
        errors: dict[str, str] = {}
        if not name.strip():
            errors["name"] = "give the user a name (lower-case letters, digits, hyphens)"
        if len(password) < 8:
            errors["password"] = "a password needs at least 8 characters"
        if errors:
            return render(request, "access_user_form.html", status=422, values=values,
                          errors=errors)  # fmt: skip
        try:
            created = admin.create_user(who, name.strip(), password, admin_role == "on")
        except DockvisorError as exc:
            field = field_of(str(exc), {"password": ("password",), "name": ("user name", "named")})
            return render(request, "access_user_form.html", status=status_for(exc), values=values,
                          errors={field: str(exc)})  # fmt: skip
        return render(request, "access_user_form.html", values={}, errors={}, created=created,
                      headers=ACCESS_CHANGED)  # fmt: skip

    @web.delete("/ui/access/users/{name}", openapi_extra=requirements.same_as("user.delete"))
    def delete_user(who: Who, request: Request, name: Key) -> HTMLResponse:
        admin.delete_user(who, name)
        return _done(request, f"The user {name} was deleted.")

    @web.post("/ui/access/groups", openapi_extra=requirements.same_as("group.create"))
    def create_group(
        who: Who,
        request: Request,
        name: Annotated[str, Form(max_length=64)] = "",
        members: Annotated[str, Form(max_length=20000)] = "",
    ) -> HTMLResponse:
        values = {"name": name, "members": members}
        if not name.strip():
            return render(request, "access_group_form.html", status=422, values=values,
                          errors={"name": "give the group a name"})  # fmt: skip
        try:
            created = admin.create_group(who, name.strip(), _names(members))
        except DockvisorError as exc:
            field = field_of(
                str(exc), {"members": ("no user",), "name": ("group name", "group named")}
            )
            return render(request, "access_group_form.html", status=status_for(exc), values=values,
                          errors={field: str(exc)})  # fmt: skip
        return render(request, "access_group_form.html", values={}, errors={}, created=created,
                      headers=ACCESS_CHANGED)  # fmt: skip

    @web.post("/ui/access/members", openapi_extra=requirements.same_as("group.members"))
    def set_members(
        who: Who,
        request: Request,
        group: Annotated[str, Form(max_length=64)] = "",
        members: Annotated[str, Form(max_length=20000)] = "",
    ) -> HTMLResponse:
        values = {"group": group, "members": members}
        groups = [g["name"] for g in admin.list_groups(who)]
        if not group.strip():
            return render(request, "access_members_form.html", status=422, values=values,
                          errors={"group": "choose a group"}, groups=groups)  # fmt: skip
        try:
            changed = admin.set_group_members(who, group.strip(), _names(members))
        except DockvisorError as exc:
            field = field_of(str(exc), {"members": ("no user",), "group": ("no group",)})
            return render(request, "access_members_form.html", status=status_for(exc),
                          values=values, errors={field: str(exc)}, groups=groups)  # fmt: skip
        return render(request, "access_members_form.html", values={"group": group}, errors={},
                      changed=changed, groups=groups, headers=ACCESS_CHANGED)  # fmt: skip

    @web.delete("/ui/access/groups/{name}", openapi_extra=requirements.same_as("group.delete"))
    def delete_group(who: Who, request: Request, name: Key) -> HTMLResponse:
        admin.delete_group(who, name)
        return _done(request, f"The group {name} was deleted.")

    # -- the ACL -------------------------------------------------------------------------

    @web.post("/ui/access/grant", openapi_extra=requirements.same_as("acl.grant"))
    def grant(
        who: Who,
        request: Request,
        subject: Annotated[str, Form(max_length=80)] = "",
        path: Annotated[str, Form(max_length=128)] = "",
        role: Annotated[str, Form(max_length=64)] = "",
        propagate: Annotated[str, Form(max_length=8)] = "",
        fixed_path: Annotated[str, Form(max_length=8)] = "",
    ) -> HTMLResponse:
        """A grant from /access (any path) or a Delegate dialog (`fixed_path`: the path
        of the object the dialog is on)."""
        values = {"subject": subject, "path": path, "role": role, "propagate": propagate}
        fixed = path if fixed_path == "1" else ""
        errors: dict[str, str] = {}
        subject = subject.strip()
        if not subject.startswith(("user:", "group:")) or not subject.partition(":")[2]:
            errors["subject"] = "name a user or a group: user:NAME or group:NAME"
        if not path.strip().startswith("/"):
            errors["path"] = "a path such as /, /vms/ID, /hosts/ID or /resource-sets/ID"
        if not role:
            errors["role"] = "choose a role"
        status, granted = 422, None
        if not errors:
            try:
                granted = admin.grant(who, subject, path, role, propagate == "on")
            except DockvisorError as exc:
                status = status_for(exc)
                field = field_of(str(exc), {"subject": ("no user", "no group", "subject"),
                                             "path": ("no vm", "no host", "no resource set",
                                                      "path")})  # fmt: skip
                errors[field] = str(exc)
        if granted is not None:
            return render(request, "access_grant_form.html", fixed_path=fixed,
                          **grant_form(who, granted=granted), headers=ACCESS_CHANGED)  # fmt: skip
        return render(request, "access_grant_form.html", status=status, fixed_path=fixed,
                      **grant_form(who, values=values, errors=errors))  # fmt: skip

    @web.delete("/ui/acl/{entry_id}", openapi_extra=requirements.same_as("acl.revoke"))
    def revoke(who: Who, request: Request, entry_id: NumericId) -> HTMLResponse:
        entry = next((e for e in admin.list_acl(who) if e.id == entry_id), None)
        admin.revoke(who, entry_id)
        what = f"{entry.role} for {entry.subject} on {entry.path}" if entry else f"{entry_id}"
        return _done(request, f"Revoked: {what}.")

    def _done(request: Request, message: str) -> HTMLResponse:
        """A change made from a list: said in the page's status region; the lists reload."""
        return render(request, "access_done.html", message=message,
                      headers={**ACCESS_CHANGED, "HX-Retarget": "#access-status",
                               "HX-Reswap": "innerHTML"})  # fmt: skip

    # -- effective privileges ------------------------------------------------------------

    @web.get(
        "/access/effective",
        openapi_extra=AnyUser(
            "Permissions.Modify or Sys.Audit on the VM (the service checks; else 403, or 404 "
            "for a VM they cannot view)"
        ).openapi(),
    )
    def effective(
        who: Who,
        request: Request,
        user: Annotated[str, Query(max_length=64)] = "",
        vm: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        values = {"user": user, "vm": vm}
        errors: dict[str, str] = {}
        explanation, status = None, 200
        if user or vm:
            if not user.strip():
                errors["user"] = "name the user"
            if not vm.strip():
                errors["vm"] = "choose the VM"
            status = 422 if errors else 200
        if user.strip() and vm.strip():
            try:
                explanation = admin.explain_access(who, user.strip(), vm.strip())
            except DockvisorError as exc:
                status = status_for(exc)
                if "no user named" in str(exc):
                    errors["user"] = str(exc)
                else:
                    errors["vm" if isinstance(exc, NotFound) else "form"] = str(exc)
        template = "access_effective_form.html" if htmx(request) else "access_effective.html"
        return render(request, template, status=status, values=values, errors=errors,
                      explanation=explanation, effective=effective_choices(who))  # fmt: skip

    # -- resource sets -------------------------------------------------------------------

    def set_choices(who: Principal) -> dict[str, Any]:
        hosts = admin.list_hosts(who)
        templates = sorted({t.name for _, t in admin.list_templates(who)})
        return {"hosts": hosts, "template_names": templates}

    def set_form(
        request: Request, who: Principal, status: int = 200, rs: Any = None, **extra: Any
    ) -> HTMLResponse:
        return render(request, "set_form.html", status=status, rs=rs,
                      values=extra.pop("values", {}), errors=extra.pop("errors", {}),
                      **set_choices(who), **extra)  # fmt: skip

    @web.get(
        "/resource-sets",
        openapi_extra=AnyUser(
            "Sys.Modify on / lists all; others the sets they may allocate in"
        ).openapi(),
    )
    def sets_page(who: Who, request: Request) -> HTMLResponse:
        can = actions(who)
        extra = set_choices(who) if can("resource-set.create") else {}
        return render(request, "set_list.html", sets=admin.list_resource_sets(who), can=can,
                      values={}, errors={}, rs=None, **extra)  # fmt: skip

    @web.get("/ui/resource-sets/cards", openapi_extra=AnyUser("the sets they may see").openapi())
    def set_cards(who: Who, request: Request) -> HTMLResponse:
        return render(request, "set_cards.html", sets=admin.list_resource_sets(who))

    @web.post("/ui/resource-sets", openapi_extra=requirements.same_as("resource-set.create"))
    def create_set(who: Who, request: Request, form: Annotated[SetForm, Form()]) -> HTMLResponse:
        return write_set(request, who, None, form.values())

    @web.put(
        "/ui/resource-sets/{set_id}", openapi_extra=requirements.same_as("resource-set.update")
    )
    def update_set(
        who: Who, request: Request, set_id: NumericId, form: Annotated[SetForm, Form()]
    ) -> HTMLResponse:
        return write_set(request, who, admin.get_resource_set(who, set_id), form.values())

    def write_set(
        request: Request, who: Principal, rs: Any, values: dict[str, Any]
    ) -> HTMLResponse:
        """Create (rs None) or replace a set from the form's values: every field checked
        first, nothing written unless all are right and the service accepts."""
        errors: dict[str, str] = {}
        name = str(values["name"]).strip()
        if not name:
            errors["name"] = "give the set a name (lower-case letters, digits, hyphens)"
        limits = Limits(
            vcpus=whole_number(
                values["vcpus"], "vcpus", errors, "the vCPU limit", low=0, high=100000
            ),
            memory=size_field(values["memory"], "memory", errors, "the memory limit"),
            disk=size_field(values["disk"], "disk", errors, "the disk limit"),
            vms=whole_number(values["vms"], "vms", errors, "the VM limit", low=0, high=100000),
        )
        host_ids = []
        for host in values["hosts"]:
            if not host.isdigit() or not 1 <= int(host) <= 2**31 - 1:
                errors["hosts"] = f"{host!r} is not a host id"
                break
            host_ids.append(int(host))
        subjects = _names(values["subjects"])
        for subject in subjects:
            if not subject.startswith(("user:", "group:")):
                errors["subjects"] = f"{subject!r}: write each member as user:NAME or group:NAME"
                break
        if errors:
            return set_form(request, who, 422, rs, values=values, errors=errors)
        try:
            view = admin.write_resource_set(
                who, rs.id if rs is not None else None, name=name, limits=limits,
                templates=list(values["templates"]), host_ids=host_ids, subjects=subjects,
                count_snapshots=values["count_snapshots"] == "on",
            )  # fmt: skip
        except DockvisorError as exc:
            field = field_of(str(exc), SET_FIELDS)
            return set_form(request, who, status_for(exc), rs, values=values,
                            errors={field: str(exc)})  # fmt: skip
        if rs is None:
            return set_form(request, who, 201, None, created=view, headers=SETS_CHANGED)
        return set_form(request, who, 200, view, values=set_values(view), saved=True,
                        headers=SETS_CHANGED)  # fmt: skip

    def set_values(rs: Any) -> dict[str, Any]:
        """A set's definition as its edit form shows it."""

        def size(value: int | None) -> str:
            return "" if value is None else format_size(value)

        def count(value: int | None) -> str:
            return "" if value is None else str(value)

        return {"name": rs.name, "vcpus": count(rs.limits.vcpus), "memory": size(rs.limits.memory),
                "disk": size(rs.limits.disk), "vms": count(rs.limits.vms),
                "hosts": [str(h) for h in rs.host_ids], "templates": list(rs.templates),
                "subjects": ", ".join(rs.subjects),
                "count_snapshots": "on" if rs.count_snapshots else ""}  # fmt: skip

    def set_context(who: Principal, set_id: int) -> dict[str, Any]:
        rs = admin.get_resource_set(who, set_id)
        vms = [v for v in cp.ops.list_vms(who) if v["resource_set_id"] == set_id]
        names = {h["id"]: h["name"] for h in admin.list_hosts(who)}
        hosts = [names.get(h, f"host {h}") for h in rs.host_ids]
        return {"rs": rs, "vms": vms, "set_hosts": hosts}

    @web.get(
        "/resource-sets/{set_id}",
        openapi_extra=AnyUser(
            "Sys.Modify on /, or being able to allocate in the set (else 404)"
        ).openapi(),
    )
    def set_page(who: Who, request: Request, set_id: NumericId) -> HTMLResponse:
        context = set_context(who, set_id)
        chain = ("/", f"/resource-sets/{set_id}")
        may_delegate = cp.access.may_administer(who, chain)
        can = actions(who)
        extra = set_choices(who) if can("resource-set.update") else {}
        return render(
            request, "set_page.html", can=can, may_delegate=may_delegate,
            values=set_values(context["rs"]), errors={},
            grant=grant_form(who, values={"path": chain[-1], "propagate": "on",
                                          "role": "Developer"}),
            **acl_rows(who, chain[-1]), **context, **extra,
        )  # fmt: skip

    @web.get(
        "/ui/resource-sets/{set_id}/summary",
        openapi_extra=AnyUser(
            "Sys.Modify on /, or being able to allocate in the set (else 404)"
        ).openapi(),
    )
    def set_summary(who: Who, request: Request, set_id: NumericId) -> HTMLResponse:
        return render(request, "set_summary.html", **set_context(who, set_id))

    @web.delete(
        "/ui/resource-sets/{set_id}", openapi_extra=requirements.same_as("resource-set.delete")
    )
    def delete_set(who: Who, request: Request, set_id: NumericId) -> Response:
        admin.delete_resource_set(who, set_id)
        return Response(status_code=204, headers={"HX-Redirect": "/resource-sets"})

    return web
