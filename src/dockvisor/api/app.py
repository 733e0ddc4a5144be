"""The REST API under /api/v1: thin routes, each calling one service.

Every route declares the privilege it needs in the OpenAPI description
(`x-dockvisor-privilege`); the services check it. Mutating VM operations answer 202
with the task that does the work (Location: /api/v1/tasks/ID).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockvisor import __version__
from dockvisor.api import schemas as s
from dockvisor.api.docker_routes import UPLOAD_PATHS, docker_router
from dockvisor.api.problems import ERROR_RESPONSES, install_handlers, problem
from dockvisor.api.security import SESSION_COOKIE, authenticate
from dockvisor.domain.model import TemplateSpec
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.quota import Limits
from dockvisor.errors import NotFound, Throttled, Unauthorized
from dockvisor.services import identity
from dockvisor.services.admin import Administration, token_expiry
from dockvisor.services.events import Event
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import vm_data
from dockvisor.services.runtime import ControlPlane
from dockvisor.services.tasks import TaskInfo
from dockvisor.store.models import utc

__all__ = ["API_EXTENSIONS", "MAX_BODY", "create_app"]

API_VERSION = "1.0"
# Additions to the API, in order; a client checks for one before it relies on it.
API_EXTENSIONS = ["vms", "tasks", "acl", "resource-sets", "audit", "events", "docker"]
MAX_BODY = 1024 * 1024

Who = Annotated[Principal, Depends(authenticate)]
# Path parameters: ids and names are short and printable; numeric ids fit 32 bits.
Key = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
NumericId = Annotated[int, PathParam(ge=1, le=s.MAX_ID)]


def needs(privilege: str) -> dict[str, Any]:
    """The OpenAPI extension that declares what a route requires."""
    return {"x-dockvisor-privilege": privilege}


def _task(response: Response, task: TaskInfo) -> s.TaskOut:
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return s.TaskOut(**task.__dict__)


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="dockvisor",
        version=__version__,
        description="Docker-ready VMs of an exact size, delegated to the developers who use them.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.cp = cp
    admin = Administration(cp)
    ops = cp.ops
    install_handlers(app)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    api = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

    # -- about and sessions -------------------------------------------------------------

    @api.get("", response_model=s.ApiInfo, openapi_extra=needs("none"))
    @api.get("/", response_model=s.ApiInfo, include_in_schema=False)
    def api_info() -> s.ApiInfo:
        return s.ApiInfo(
            api_version=API_VERSION, server_version=__version__, extensions=API_EXTENSIONS
        )

    @api.post("/login", response_model=s.LoginResponse, openapi_extra=needs("none"))
    def login(body: s.LoginRequest, request: Request, response: Response) -> s.LoginResponse:
        client = request.client.host if request.client else "?"
        keys = (f"user:{body.name}", f"addr:{client}")
        wait = cp.throttle.retry_after(*keys)
        if wait > 0:
            cp.audit.append(body.name, "login", f"user:{body.name}", "throttled", client)
            raise Throttled(f"too many failed logins; try again in {wait:.0f} s", wait)
        try:
            with cp.db.session() as session:
                user = identity.verify_password(session, body.name, body.password)
                secret, csrf = identity.create_session(session, user)
        except Unauthorized:
            cp.throttle.failed(*keys)
            cp.audit.append(body.name, "login", f"user:{body.name}", "failed", client)
            raise
        cp.throttle.succeeded(*keys)
        cp.audit.append(body.name, "login", f"user:{body.name}", "ok", client)
        response.set_cookie(
            SESSION_COOKIE,
            secret,
            httponly=True,
            samesite="strict",
            max_age=int(identity.SESSION_LIFETIME.total_seconds()),
        )
        return s.LoginResponse(user=body.name, csrf_token=csrf)

    @api.post("/logout", status_code=204, openapi_extra=needs("a session"))
    def logout(who: Who, request: Request, response: Response) -> Response:
        if cookie := request.cookies.get(SESSION_COOKIE):
            with cp.db.session() as session:
                identity.end_session(session, cookie)
        cp.audit.append(who.name, "logout", f"user:{who.name}", "ok")
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @api.get("/whoami", response_model=s.WhoAmI, openapi_extra=needs("any user"))
    def whoami(who: Who) -> s.WhoAmI:
        return s.WhoAmI(id=who.user_id, name=who.name, groups=sorted(who.group_ids), via=who.via)

    # -- users, groups, roles, ACL, tokens ----------------------------------------------

    @api.get(
        "/users",
        response_model=list[s.UserOut],
        openapi_extra=needs(
            "any user (all users with Sys.Modify or Permissions.Modify on /, else oneself)"
        ),
    )
    def list_users(who: Who) -> list[dict[str, Any]]:
        return admin.list_users(who)

    @api.post(
        "/users",
        status_code=201,
        response_model=s.UserOut,
        openapi_extra=needs("Sys.Modify on / (and Permissions.Modify for admin)"),
    )
    def create_user(who: Who, body: s.UserCreate) -> dict[str, Any]:
        return admin.create_user(who, body.name, body.password, body.admin)

    @api.delete("/users/{name}", status_code=204, openapi_extra=needs("Sys.Modify on /"))
    def delete_user(who: Who, name: Key) -> Response:
        admin.delete_user(who, name)
        return Response(status_code=204)

    @api.get("/groups", response_model=list[s.GroupOut], openapi_extra=needs("any user"))
    def list_groups(who: Who) -> list[dict[str, Any]]:
        return admin.list_groups(who)

    @api.post(
        "/groups",
        status_code=201,
        response_model=s.GroupOut,
        openapi_extra=needs("Sys.Modify on /"),
    )
    def create_group(who: Who, body: s.GroupCreate) -> dict[str, Any]:
        return admin.create_group(who, body.name, body.members)

    @api.put(
        "/groups/{name}/members", response_model=s.GroupOut, openapi_extra=needs("Sys.Modify on /")
    )
    def set_members(who: Who, name: Key, body: s.GroupMembers) -> dict[str, Any]:
        return admin.set_group_members(who, name, body.members)

    @api.delete("/groups/{name}", status_code=204, openapi_extra=needs("Sys.Modify on /"))
    def delete_group(who: Who, name: Key) -> Response:
        admin.delete_group(who, name)
        return Response(status_code=204)

    @api.get("/roles", response_model=list[s.RoleOut], openapi_extra=needs("any user"))
    def list_roles(who: Who) -> list[dict[str, Any]]:
        return admin.list_roles()

    @api.post(
        "/roles",
        status_code=201,
        response_model=s.RoleOut,
        openapi_extra=needs("Permissions.Modify on /, holding every privilege given"),
    )
    def create_role(who: Who, body: s.RoleCreate) -> dict[str, Any]:
        return admin.create_role(who, body.name, body.privileges, body.description)

    @api.delete("/roles/{name}", status_code=204, openapi_extra=needs("Permissions.Modify on /"))
    def delete_role(who: Who, name: Key) -> Response:
        admin.delete_role(who, name)
        return Response(status_code=204)

    @api.get(
        "/acl",
        response_model=list[s.AclOut],
        openapi_extra=needs("any user (entries on paths where they hold Permissions.Modify)"),
    )
    def list_acl(who: Who) -> list[s.AclOut]:
        return [s.AclOut(**v.__dict__) for v in admin.list_acl(who)]

    @api.post(
        "/acl",
        status_code=201,
        response_model=s.AclOut,
        openapi_extra=needs(
            "Permissions.Modify on the path, holding every privilege of the role there"
        ),
    )
    def grant(who: Who, body: s.AclCreate) -> s.AclOut:
        view = admin.grant(who, body.subject, body.path, body.role, body.propagate)
        return s.AclOut(**view.__dict__)

    @api.delete(
        "/acl/{entry_id}",
        status_code=204,
        openapi_extra=needs("Permissions.Modify on the path, holding the role there"),
    )
    def revoke(who: Who, entry_id: NumericId) -> Response:
        admin.revoke(who, entry_id)
        return Response(status_code=204)

    @api.get("/tokens", response_model=list[s.TokenOut], openapi_extra=needs("any user (own)"))
    def list_tokens(who: Who) -> list[s.TokenOut]:
        return [s.TokenOut(**t.__dict__) for t in admin.list_tokens(who)]

    @api.post(
        "/tokens",
        status_code=201,
        response_model=s.TokenCreated,
        openapi_extra=needs("any user (own)"),
    )
    def create_token(who: Who, body: s.TokenCreate) -> s.TokenCreated:
        info, secret = admin.create_token(who, body.name, token_expiry(body.expires_in_days))
        return s.TokenCreated(**info.__dict__, token=secret)

    @api.delete("/tokens/{token_id}", status_code=204, openapi_extra=needs("any user (own)"))
    def revoke_token(who: Who, token_id: NumericId) -> Response:
        admin.revoke_token(who, token_id)
        return Response(status_code=204)

    # -- hosts, pools, templates, resource sets -----------------------------------------

    @api.get(
        "/hosts",
        response_model=list[s.HostOut],
        openapi_extra=needs("any privilege on /hosts/ID, or a resource set on it"),
    )
    def list_hosts(who: Who) -> list[dict[str, Any]]:
        return admin.list_hosts(who)

    @api.post(
        "/hosts", status_code=201, response_model=s.HostOut, openapi_extra=needs("Sys.Modify on /")
    )
    def add_host(who: Who, body: s.HostCreate) -> dict[str, Any]:
        return admin.add_host(who, body.name, body.uri)

    @api.get("/pools", response_model=list[s.PoolOut], openapi_extra=needs("any on /pools/ID"))
    def list_pools(who: Who) -> list[dict[str, Any]]:
        return admin.list_pools(who)

    @api.post(
        "/pools", status_code=201, response_model=s.PoolOut, openapi_extra=needs("Sys.Modify on /")
    )
    def create_pool(who: Who, body: s.PoolCreate) -> dict[str, Any]:
        return admin.create_pool(who, body.name)

    @api.get(
        "/templates",
        response_model=list[s.TemplateOut],
        openapi_extra=needs(
            "Sys.Modify on /, VM.Allocate on the host, or a resource set allowing the template"
        ),
    )
    def list_templates(
        who: Who, host_id: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None
    ) -> list[s.TemplateOut]:
        return [
            s.TemplateOut(
                host_id=hid,
                name=t.name,
                description=t.description,
                disk_size=t.disk_size,
                docker_ready=t.docker_ready,
                builtin=t.builtin,
            )
            for hid, t in admin.list_templates(who, host_id)
        ]

    @api.post(
        "/templates",
        status_code=201,
        response_model=s.TemplateOut,
        openapi_extra=needs("Sys.Modify on /"),
    )
    def add_template(who: Who, body: s.TemplateCreate) -> s.TemplateOut:
        spec = TemplateSpec(
            name=body.name,
            disk=body.disk,
            kernel=body.kernel,
            initrd=body.initrd,
            cmdline=body.cmdline or "",
            docker_port=body.docker_port,
            description=body.description,
        )
        t = admin.add_template(who, body.host_id, spec)
        return s.TemplateOut(
            host_id=body.host_id,
            name=t.name,
            description=t.description,
            disk_size=t.disk_size,
            docker_ready=t.docker_ready,
            builtin=t.builtin,
        )

    def _set_out(view: Any) -> s.ResourceSetOut:
        return s.ResourceSetOut(
            id=view.id,
            name=view.name,
            limits=s.LimitsOut(**view.limits.__dict__),
            usage=s.ResourcesOut(**view.usage.__dict__),
            templates=view.templates,
            host_ids=view.host_ids,
            subjects=view.subjects,
            count_snapshots=view.count_snapshots,
        )

    @api.get(
        "/resource-sets",
        response_model=list[s.ResourceSetOut],
        openapi_extra=needs("Sys.Modify on /, or being able to allocate in the set"),
    )
    def list_sets(who: Who) -> list[s.ResourceSetOut]:
        return [_set_out(v) for v in admin.list_resource_sets(who)]

    @api.get(
        "/resource-sets/{set_id}",
        response_model=s.ResourceSetOut,
        openapi_extra=needs("Sys.Modify on /, or being able to allocate in the set"),
    )
    def get_set(who: Who, set_id: NumericId) -> s.ResourceSetOut:
        return _set_out(admin.get_resource_set(who, set_id))

    def _write_set(
        who: Principal, set_id: NumericId | None, body: s.ResourceSetIn
    ) -> s.ResourceSetOut:
        return _set_out(
            admin.write_resource_set(
                who,
                set_id,
                name=body.name,
                limits=Limits(**body.limits.model_dump()),
                templates=body.templates,
                host_ids=body.host_ids,
                subjects=body.subjects,
                count_snapshots=body.count_snapshots,
            )
        )

    @api.post(
        "/resource-sets",
        status_code=201,
        response_model=s.ResourceSetOut,
        openapi_extra=needs("Sys.Modify on /"),
    )
    def create_set(who: Who, body: s.ResourceSetIn) -> s.ResourceSetOut:
        return _write_set(who, None, body)

    @api.put(
        "/resource-sets/{set_id}",
        response_model=s.ResourceSetOut,
        openapi_extra=needs("Sys.Modify on /"),
    )
    def update_set(who: Who, set_id: NumericId, body: s.ResourceSetIn) -> s.ResourceSetOut:
        return _write_set(who, set_id, body)

    @api.delete("/resource-sets/{set_id}", status_code=204, openapi_extra=needs("Sys.Modify on /"))
    def delete_set(who: Who, set_id: NumericId) -> Response:
        admin.delete_resource_set(who, set_id)
        return Response(status_code=204)

    @api.post(
        "/resource-sets/recompute",
        response_model=s.RecomputeOut,
        openapi_extra=needs("Sys.Modify on /"),
    )
    def recompute(who: Who) -> dict[str, Any]:
        return admin.recompute(who)

    # -- VMs ----------------------------------------------------------------------------

    @api.get("/vms", response_model=list[s.VmOut], openapi_extra=needs("VM.View on each VM listed"))
    def list_vms(who: Who) -> Response:
        # Thousands of rows for an admin: sent as built (services/inventory.py VM_FIELDS,
        # the VmOut schema), not validated again one by one.
        return Response(json.dumps(ops.list_vms(who)), media_type="application/json")

    @api.post(
        "/vms",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs(
            "VM.Allocate on /hosts/ID, or being able to allocate in the resource set"
        ),
    )
    def create_vm(who: Who, body: s.VmCreate, response: Response) -> s.TaskOut:
        _, task = ops.create_vm(who, **body.model_dump())
        return _task(response, task)

    @api.get("/vms/{vm_id}", response_model=s.VmOut, openapi_extra=needs(f"{Privilege.VM_VIEW}"))
    def get_vm(who: Who, vm_id: Key) -> dict[str, Any]:
        return vm_data(ops.vm_row(who, vm_id))

    @api.delete(
        "/vms/{vm_id}",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs("VM.Delete on /vms/ID"),
    )
    def delete_vm(
        who: Who, vm_id: Key, response: Response, force: Annotated[bool, Query()] = False
    ) -> s.TaskOut:
        return _task(response, ops.delete_vm(who, vm_id, force=force))

    @api.put(
        "/vms/{vm_id}/state",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs("VM.PowerMgmt on /vms/ID"),
    )
    def set_state(who: Who, vm_id: Key, body: s.VmState, response: Response) -> s.TaskOut:
        return _task(response, ops.set_power(who, vm_id, body.action))

    @api.patch(
        "/vms/{vm_id}",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs("VM.Config.CPU and/or VM.Config.Memory on /vms/ID"),
    )
    def resize(who: Who, vm_id: Key, body: s.VmResize, response: Response) -> s.TaskOut:
        return _task(response, ops.resize_vm(who, vm_id, vcpus=body.vcpus, memory=body.memory))

    @api.get(
        "/vms/{vm_id}/snapshots",
        response_model=list[s.SnapshotOut],
        openapi_extra=needs("VM.View on /vms/ID"),
    )
    def list_snapshots(who: Who, vm_id: Key) -> list[s.SnapshotOut]:
        return [
            s.SnapshotOut(
                name=x.name,
                created=x.created,
                power_state=x.power_state.value,
                with_memory=x.with_memory,
                description=x.description,
                parent=x.parent,
                current=x.current,
            )
            for x in ops.list_snapshots(who, vm_id)
        ]

    @api.post(
        "/vms/{vm_id}/snapshots",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs("VM.Snapshot on /vms/ID"),
    )
    def snapshot(who: Who, vm_id: Key, body: s.SnapshotCreate, response: Response) -> s.TaskOut:
        return _task(response, ops.snapshot_vm(who, vm_id, body.name, body.description))

    @api.post(
        "/vms/{vm_id}/snapshots/{name}/revert",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs(
            "VM.Snapshot.Rollback on /vms/ID (and VM.PowerMgmt if it would start the VM)"
        ),
    )
    def revert(who: Who, vm_id: Key, name: Key, response: Response) -> s.TaskOut:
        return _task(response, ops.revert_vm(who, vm_id, name))

    @api.delete(
        "/vms/{vm_id}/snapshots/{name}",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs("VM.Snapshot on /vms/ID"),
    )
    def delete_snapshot(who: Who, vm_id: Key, name: Key, response: Response) -> s.TaskOut:
        return _task(response, ops.delete_snapshot(who, vm_id, name))

    @api.post(
        "/vms/{vm_id}/clone",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=needs(
            "VM.Clone on /vms/ID (and VM.Allocate on its host if it is in no resource set)"
        ),
    )
    def clone(who: Who, vm_id: Key, body: s.VmClone, response: Response) -> s.TaskOut:
        _, task = ops.clone_vm(who, vm_id, name=body.name, full=body.full, start=body.start)
        return _task(response, task)

    @api.get(
        "/vms/{vm_id}/endpoint",
        response_model=s.EndpointOut,
        openapi_extra=needs("Docker.View on /vms/ID"),
    )
    def endpoint(who: Who, vm_id: Key) -> s.EndpointOut:
        e = ops.docker_endpoint(who, vm_id)
        return s.EndpointOut(docker_host=e.docker_host, host=e.host, port=e.port, tls=e.tls)

    # -- tasks, audit, events ---------------------------------------------------------------

    def _visible_task(who: Principal, task_id: Key) -> TaskInfo:
        task = cp.tasks.get(task_id)
        if task.requester != who.name and not _can_view_vm(who, task.object_id):
            raise NotFound(f"no task {task_id}")
        return task

    def _can_view_vm(who: Principal, vm_id: Key) -> bool:
        try:
            ops.vm_row(who, vm_id)
        except Exception:  # noqa: BLE001 - NotFound, or anything else: not visible
            return False
        return True

    @api.get(
        "/tasks",
        response_model=list[s.TaskOut],
        openapi_extra=needs("any user (own tasks, and those on VMs they can view)"),
    )
    def list_tasks(who: Who, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[s.TaskOut]:
        return [
            s.TaskOut(**t.__dict__)
            for t in cp.tasks.recent(limit * 4)
            if t.requester == who.name or _can_view_vm(who, t.object_id)
        ][:limit]

    @api.get(
        "/tasks/{task_id}",
        response_model=s.TaskOut,
        openapi_extra=needs("own task, or VM.View on its VM"),
    )
    def get_task(who: Who, task_id: Key) -> s.TaskOut:
        return s.TaskOut(**_visible_task(who, task_id).__dict__)

    @api.get(
        "/tasks/{task_id}/wait",
        response_model=s.TaskOut,
        openapi_extra=needs("own task, or VM.View on its VM"),
    )
    def wait_task(
        who: Who, task_id: Key, timeout: Annotated[float, Query(ge=0, le=300)] = 30
    ) -> s.TaskOut:
        _visible_task(who, task_id)
        return s.TaskOut(**cp.tasks.wait(task_id, timeout).__dict__)

    @api.get("/audit", response_model=list[s.AuditOut], openapi_extra=needs("Sys.Audit on /"))
    def audit(
        who: Who,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None,
    ) -> list[s.AuditOut]:
        return [
            s.AuditOut(
                id=r.id,
                time=utc(r.time),
                actor=r.actor,
                action=r.action,
                object=r.object,
                result=r.result,
                detail=r.detail,
                digest=r.digest,
            )
            for r in admin.audit_entries(who, limit, before)
        ]

    @api.get(
        "/audit/verify", response_model=s.AuditVerifyOut, openapi_extra=needs("Sys.Audit on /")
    )
    def audit_verify(who: Who) -> s.AuditVerifyOut:
        report = admin.verify_audit(who)
        return s.AuditVerifyOut(**report.__dict__)

    @api.get(
        "/events",
        openapi_extra=needs("any user (only events about what they can view)"),
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}
        },
    )
    async def events(request: Request, who: Who) -> StreamingResponse:
        def accepts(event: Event) -> bool:
            if event.type == "task" and event.requester == who.name:
                return True
            if event.type == "container":
                return cp.access.allows(who, Privilege.DOCKER_VIEW, event.chain)
            return cp.access.allows(who, Privilege.VM_VIEW, event.chain)

        sub = cp.broker.subscribe(accepts)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    body = json.dumps(
                        {
                            "type": event.type,
                            "action": event.action,
                            "object": event.object,
                            "requester": event.requester,
                            "time": event.time.isoformat(),
                            "data": event.data,
                        },
                        default=str,
                    )
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n".encode()
            finally:
                cp.broker.unsubscribe(sub)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    api.include_router(docker_router(cp))
    app.include_router(api)
    return app


class _BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not they say their length.

    A body without Content-Length (chunked) is read here first, up to the limit, and
    replayed to the app: an error raised while the app reads would become a 400."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Image uploads stream to a spool file under their own, larger limit.
        if scope["type"] != "http" or scope["path"].endswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await _send_413(scope, receive, send, self.limit)
            else:
                await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await _send_413(scope, receive, send, self.limit)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_413(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = problem(413, f"the request body is larger than {limit} bytes", "body-too-large")
    await response(scope, receive, send)
