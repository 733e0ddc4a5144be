"""The web pages of VMs: create one, and a VM's page (power, live size, snapshots with
its clean state, clone, delete, graphs, consoles, who may do what on it).

Each action declares the requirement of the API route that does the same thing
(`requirements.same_as(...)`) and calls the same service; it answers with the part of
the page that changed (a task's progress, the form again with its errors)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from dockvisor.api.params import Key, P, Who
from dockvisor.domain.naming import validate_vm_name
from dockvisor.domain.requirements import AnyUser, Perm
from dockvisor.domain.sizes import format_size
from dockvisor.errors import DockvisorError, InvalidInput
from dockvisor.services.admin import Administration
from dockvisor.services.catalog_admin import CatalogAdministration
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import chain_of, vm_data
from dockvisor.services.runtime import ControlPlane
from dockvisor.web.forms import field_of, size_field, status_for, whole_number
from dockvisor.web.routing import Actions, Requirements, WebRoute, render

__all__ = ["vm_page_router"]

VIEW = Perm("/vms/{vm_id}", P.VM_VIEW).openapi()
# Which field a service's refusal is about, by the words of its message.
RESIZE_FIELDS = {"vcpus": ("vcpu",), "memory": ("memory",), "disk": ("disk", "storage")}
CREATE_FIELDS = {**RESIZE_FIELDS, "name": ("name",)}


def vm_page_router(cp: ControlPlane, requirements: Requirements) -> APIRouter:
    web = APIRouter(route_class=WebRoute, include_in_schema=False)
    admin = Administration(cp)
    catalogs = CatalogAdministration(cp)
    ops = cp.ops

    def actions(who: Principal, row: Any) -> Actions:
        return Actions(requirements, cp.access.privileges(who, chain_of(row)))

    # -- a new VM ------------------------------------------------------------------------

    def create_form(
        request: Request, who: Principal, status: int = 200, **extra: Any
    ) -> HTMLResponse:
        templates = admin.list_templates(who)
        hosts = admin.list_hosts(who)
        sets = admin.list_resource_sets(who)
        may_pull = Actions(requirements, cp.access.privileges(who, ("/",)))("template.pull")
        return render(request, extra.pop("template_name", "vm_new.html"), status=status,
                      templates=templates, hosts=hosts, sets=sets, may_pull=may_pull,
                      values=extra.pop("values", {}), errors=extra.pop("errors", {}),
                      **extra)  # fmt: skip

    @web.get(
        "/vms/new", openapi_extra=AnyUser("the templates, hosts and sets they may use").openapi()
    )
    def new_vm(who: Who, request: Request) -> HTMLResponse:
        return create_form(request, who, values={"vcpus": "2", "memory": "1GiB"})

    @web.get("/ui/catalog-templates", openapi_extra=requirements.same_as("catalog.search"))
    def catalog_templates(who: Who, request: Request) -> HTMLResponse:
        try:
            found, problems = catalogs.search(who)
        except DockvisorError as exc:
            return render(request, "alert.html", status=status_for(exc), message=str(exc))
        return render(request, "catalog_templates.html", found=found, problems=problems)

    @web.post("/ui/templates/pull", openapi_extra=requirements.same_as("template.pull"))
    def pull_template(
        who: Who, request: Request, reference: Annotated[str, Form(max_length=200)] = ""
    ) -> HTMLResponse:
        try:
            task = catalogs.pull(who, reference)
        except DockvisorError as exc:
            return render(request, "alert.html", status=status_for(exc), message=str(exc))
        return render(request, "task_progress.html", status=202, task=task)

    @web.post("/ui/vms", openapi_extra=requirements.same_as("vm.create"))
    def create_vm(
        who: Who,
        request: Request,
        name: Annotated[str, Form(max_length=64)] = "",
        template: Annotated[str, Form(max_length=64)] = "docker-ready",
        vcpus: Annotated[str, Form(max_length=16)] = "",
        memory: Annotated[str, Form(max_length=32)] = "",
        max_vcpus: Annotated[str, Form(max_length=16)] = "",
        max_memory: Annotated[str, Form(max_length=32)] = "",
        disk: Annotated[str, Form(max_length=32)] = "",
        placement: Annotated[str, Form(max_length=32)] = "",
        full: Annotated[str, Form(max_length=8)] = "",
        cold: Annotated[str, Form(max_length=8)] = "",
    ) -> HTMLResponse:
        values = {"name": name, "template": template, "vcpus": vcpus, "memory": memory,
                  "max_vcpus": max_vcpus, "max_memory": max_memory, "placement": placement,
                  "full": full, "disk": disk, "cold": cold}  # fmt: skip
        errors: dict[str, str] = {}
        try:
            validate_vm_name(name)
        except InvalidInput as exc:
            errors["name"] = str(exc)
        n_vcpus = whole_number(vcpus, "vcpus", errors, "vCPUs")
        n_memory = size_field(memory, "memory", errors, "memory")
        if n_vcpus is None and "vcpus" not in errors:
            errors["vcpus"] = "say how many vCPUs (for example 2)"
        if n_memory is None and "memory" not in errors:
            errors["memory"] = "say how much memory (for example 1GiB)"
        n_max_vcpus = whole_number(max_vcpus, "max_vcpus", errors, "the vCPU maximum")
        n_max_memory = size_field(max_memory, "max_memory", errors, "the memory maximum")
        n_disk = size_field(disk, "disk", errors, "the disk size")
        kind, _, ident = placement.partition(":")
        host_id = int(ident) if kind == "host" and ident.isdigit() else None
        set_id = int(ident) if kind == "set" and ident.isdigit() else None
        if errors:
            return create_form(request, who, 422, template_name="vm_new_form.html",
                               values=values, errors=errors)  # fmt: skip
        assert n_vcpus is not None and n_memory is not None
        try:
            _, task = ops.create_vm(
                who, name=name, template=template, vcpus=n_vcpus, memory=n_memory,
                max_vcpus=n_max_vcpus, max_memory=n_max_memory, disk=n_disk,
                full=full == "on", host_id=host_id, resource_set_id=set_id, cold=cold == "on",
            )  # fmt: skip
        except DockvisorError as exc:
            field = field_of(str(exc), CREATE_FIELDS)
            return create_form(request, who, status_for(exc),
                               template_name="vm_new_form.html", values=values,
                               errors={field: str(exc)})  # fmt: skip
        return create_form(request, who, 202, template_name="vm_new_form.html",
                           values={"vcpus": vcpus, "memory": memory, "template": template},
                           task=task)  # fmt: skip

    # -- a VM's page ---------------------------------------------------------------------

    def vm_context(who: Principal, vm_id: str) -> dict[str, Any]:
        row = ops.vm_row(who, vm_id)
        can = actions(who, row)
        live = None
        try:
            live = ops.live_vm(who, vm_id)
        except DockvisorError:
            live = None  # the host does not answer: the page shows what is known
        info = ops.hosts.info(row.host_id)
        host_can = set(info.capabilities.names()) if info else set()
        host = ops.hosts.name(row.host_id)
        if info is not None:
            host = f"{host} ({info.hypervisor} {info.version})"
        return {
            "vm": vm_data(row),
            "can": can,
            "live": live,
            "host_can": host_can,
            "host": host,
        }

    @web.get("/vms/{vm_id}", openapi_extra=VIEW)
    def vm_page(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        context = vm_context(who, vm_id)
        context["snapshots"] = _snapshots(who, vm_id)
        context["access"] = _access(who, vm_id)
        return render(request, "vm.html", **context)

    @web.get("/ui/vms/{vm_id}/summary", openapi_extra=VIEW)
    def vm_summary(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        return render(request, "vm_summary.html", **vm_context(who, vm_id))

    @web.get("/ui/vms/{vm_id}/snapshots", openapi_extra=VIEW)
    def vm_snapshots(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        context = vm_context(who, vm_id)
        return render(request, "vm_snapshots.html", snapshots=_snapshots(who, vm_id), **context)

    def _snapshots(who: Principal, vm_id: str) -> list[Any]:
        try:
            return sorted(ops.list_snapshots(who, vm_id), key=lambda s: s.created, reverse=True)
        except DockvisorError:
            return []

    def _access(who: Principal, vm_id: str) -> dict[str, Any]:
        """What `who` holds on the VM and the entries that give it (on the VM, or
        inherited from above); the VM's entries if they may change them."""
        mine = admin.explain_access(who, who.name, vm_id)
        held = cp.access.privileges(who, mine.chain)
        entries: list[Any] = []
        if P.PERMISSIONS_MODIFY in held:
            entries = [e for e in admin.list_acl(who) if e.path in mine.chain]
        roles = [r["name"] for r in admin.list_roles()]
        return {"mine": mine, "entries": entries, "roles": roles}

    @web.get("/vms/{vm_id}/console", openapi_extra=Perm("/vms/{vm_id}", P.VM_CONSOLE).openapi())
    def console_page(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        """The serial console (xterm.js) and the screen (noVNC), each over a websocket
        opened with a ticket the page asks for (POST /api/v1/vms/ID/console-tickets)."""
        return render(request, "console.html", **vm_context(who, vm_id))

    # -- actions -------------------------------------------------------------------------

    def task_answer(request: Request, task: Any, target: str = "#vm-task") -> HTMLResponse:
        return render(request, "task_progress.html", status=202, task=task,
                      headers={"HX-Retarget": target, "HX-Reswap": "innerHTML"})  # fmt: skip

    @web.post("/ui/vms/{vm_id}/power", openapi_extra=requirements.same_as("vm.power"))
    def power(
        who: Who, request: Request, vm_id: Key, action: Annotated[str, Form(max_length=8)]
    ) -> HTMLResponse:
        if action not in ("start", "stop", "kill", "reboot"):
            raise InvalidInput(f"no power action {action!r} (start, stop, kill, reboot)")
        return task_answer(request, ops.set_power(who, vm_id, action))

    @web.post("/ui/vms/{vm_id}/resize", openapi_extra=requirements.same_as("vm.resize"))
    def resize(
        who: Who,
        request: Request,
        vm_id: Key,
        vcpus: Annotated[str, Form(max_length=16)] = "",
        memory: Annotated[str, Form(max_length=32)] = "",
        disk: Annotated[str, Form(max_length=32)] = "",
    ) -> HTMLResponse:
        errors: dict[str, str] = {}
        n_vcpus = whole_number(vcpus, "vcpus", errors, "vCPUs")
        n_memory = size_field(memory, "memory", errors, "memory")
        n_disk = size_field(disk, "disk", errors, "the disk size")
        context = vm_context(who, vm_id)
        current = context["vm"]
        if n_vcpus == current["vcpus"]:
            n_vcpus = None
        # The form comes filled with the sizes as shown (format_size, rounded to a tenth):
        # sent back unchanged, they are no request (not a rounded new size).
        if n_memory == current["memory"] or memory.strip() == format_size(current["memory"]):
            n_memory = None
        if n_disk == current["disk"] or disk.strip() == format_size(current["disk"]):
            n_disk = None
        if not errors and n_vcpus is None and n_memory is None and n_disk is None:
            errors["form"] = "change the vCPUs, the memory or the disk first"
        if not errors:
            try:
                task = ops.resize_vm(who, vm_id, vcpus=n_vcpus, memory=n_memory, disk=n_disk)
            except DockvisorError as exc:
                errors[field_of(str(exc), RESIZE_FIELDS)] = str(exc)
            else:
                return task_answer(request, task)  # above the summary, which reloads
        return render(request, "vm_resize.html", status=422, errors=errors,
                      values={"vcpus": vcpus, "memory": memory, "disk": disk},
                      **context)  # fmt: skip

    @web.post("/ui/vms/{vm_id}/snapshots", openapi_extra=requirements.same_as("vm.snapshot"))
    def snapshot(
        who: Who,
        request: Request,
        vm_id: Key,
        name: Annotated[str, Form(max_length=64)] = "",
        description: Annotated[str, Form(max_length=500)] = "",
        clean: Annotated[str, Form(max_length=8)] = "",
    ) -> HTMLResponse:
        try:
            task = ops.snapshot_vm(who, vm_id, name.strip(), description, clean=clean == "on")
        except InvalidInput as exc:
            return render(request, "snapshot_form.html", status=422, vm={"id": vm_id},
                          errors={"name": str(exc)}, values={"name": name})  # fmt: skip
        return task_answer(request, task)

    @web.post(
        "/ui/vms/{vm_id}/snapshots/{name}/revert", openapi_extra=requirements.same_as("vm.revert")
    )
    def revert(who: Who, request: Request, vm_id: Key, name: Key) -> HTMLResponse:
        return task_answer(request, ops.revert_vm(who, vm_id, name))

    @web.delete(
        "/ui/vms/{vm_id}/snapshots/{name}", openapi_extra=requirements.same_as("vm.snapshot.delete")
    )
    def delete_snapshot(who: Who, request: Request, vm_id: Key, name: Key) -> HTMLResponse:
        return task_answer(request, ops.delete_snapshot(who, vm_id, name))

    @web.post("/ui/vms/{vm_id}/clean", openapi_extra=requirements.same_as("vm.clean-snapshot"))
    def mark_clean(
        who: Who, request: Request, vm_id: Key, name: Annotated[str, Form(max_length=64)] = ""
    ) -> HTMLResponse:
        ops.mark_clean(who, vm_id, name or None)
        context = vm_context(who, vm_id)
        return render(request, "vm_snapshots.html", snapshots=_snapshots(who, vm_id), **context)

    @web.post("/ui/vms/{vm_id}/clone", openapi_extra=requirements.same_as("vm.clone"))
    def clone(
        who: Who,
        request: Request,
        vm_id: Key,
        name: Annotated[str, Form(max_length=64)] = "",
        full: Annotated[str, Form(max_length=8)] = "",
    ) -> HTMLResponse:
        try:
            validate_vm_name(name)
            _, task = ops.clone_vm(who, vm_id, name=name, full=full == "on")
        except InvalidInput as exc:
            return render(request, "clone_form.html", status=422, vm={"id": vm_id},
                          errors={"name": str(exc)}, values={"name": name})  # fmt: skip
        return task_answer(request, task)

    @web.delete("/ui/vms/{vm_id}", openapi_extra=requirements.same_as("vm.delete"))
    def delete_vm(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        return task_answer(request, ops.delete_vm(who, vm_id, force=True))

    @web.post("/ui/acl", openapi_extra=requirements.same_as("acl.grant"))
    def delegate(
        who: Who,
        request: Request,
        subject: Annotated[str, Form(max_length=80)] = "",
        path: Annotated[str, Form(max_length=128)] = "",
        role: Annotated[str, Form(max_length=64)] = "",
    ) -> HTMLResponse:
        subject = subject.strip()
        if not subject.startswith(("user:", "group:")):
            subject = f"user:{subject}" if subject else ""
        try:
            entry = admin.grant(who, subject, path, role, True)
        except DockvisorError as exc:
            return render(request, "delegate_result.html", status=status_for(exc),
                          error=str(exc))  # fmt: skip
        return render(request, "delegate_result.html", entry=entry)

    return web
