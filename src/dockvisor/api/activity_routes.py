"""REST routes for what happens: tasks (and waiting for them), the audit log and the
event stream. Waits and streams hold no worker thread, follow the caller's access
as it changes, and end when their credential or the server does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.params import Key, P, Who
from dockvisor.api.security import StreamCaller
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.requirements import AnyUser, Perm
from dockvisor.errors import Forbidden, NotFound, Unauthorized
from dockvisor.services.admin import Administration
from dockvisor.services.events import Event
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.services.tasks import TaskInfo
from dockvisor.store.models import utc

__all__ = ["activity_router"]


def _sse(event: Event) -> bytes:
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
    return f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n".encode()


def activity_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute)
    admin = Administration(cp)
    ops = cp.ops

    # -- tasks, audit, events ---------------------------------------------------------------

    def _visible_task(who: Principal, task_id: Key) -> TaskInfo:
        task = cp.tasks.get(task_id)
        if task.requester_id != who.user_id and not _can_view_vm(who, task.object_id):
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
        openapi_extra=declare(AnyUser("their own tasks, and those on VMs they can view")),
    )
    def list_tasks(who: Who, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[s.TaskOut]:
        return [
            s.TaskOut(**t.__dict__)
            for t in cp.tasks.recent(limit * 4)
            if t.requester_id == who.user_id or _can_view_vm(who, t.object_id)
        ][:limit]

    @api.get(
        "/tasks/{task_id}",
        response_model=s.TaskOut,
        openapi_extra=declare(AnyUser("their own task, or one on a VM they can view (else 404)")),
    )
    def get_task(who: Who, task_id: Key) -> s.TaskOut:
        return s.TaskOut(**_visible_task(who, task_id).__dict__)

    @api.get(
        "/tasks/{task_id}/wait",
        response_model=s.TaskOut,
        openapi_extra=declare(AnyUser("their own task, or one on a VM they can view (else 404)")),
    )
    async def wait_task(
        who: Who, task_id: Key, timeout: Annotated[float, Query(ge=0, le=300)] = 30
    ) -> s.TaskOut:
        """The task once it ends, or as it is after `timeout` seconds. Waiting holds no
        worker thread: any number of clients may wait at once."""
        known = await run_in_threadpool(_visible_task, who, task_id)
        task = await cp.tasks.wait_async(task_id, timeout, stop=cp.stopping, known=known)
        return s.TaskOut(**task.__dict__)

    @api.get(
        "/audit", response_model=list[s.AuditOut], openapi_extra=declare(Perm("/", P.SYS_AUDIT))
    )
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
        "/audit/verify",
        response_model=s.AuditVerifyOut,
        openapi_extra=declare(Perm("/", P.SYS_AUDIT)),
    )
    def audit_verify(who: Who) -> s.AuditVerifyOut:
        report = admin.verify_audit(who)
        return s.AuditVerifyOut(**report.__dict__)

    @api.get(
        "/events",
        openapi_extra=declare(
            AnyUser("only events about what they can view, for as long as their credential lasts")
        ),
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}
        },
    )
    async def events(request: Request, who: Who) -> StreamingResponse:
        """Server-sent events about what the caller may view. The caller is asked again
        every second: a stream follows their access as it changes, and ends (with an
        `end` event) when their token, session or account does."""
        caller = StreamCaller(cp, request, who)

        def accepts(event: Event) -> bool:
            return _may_see(caller.who, event)

        sub = cp.broker.subscribe(accepts)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                quiet = 0.0
                while not await request.is_disconnected():
                    try:
                        event: Event | None = await asyncio.wait_for(sub.queue.get(), timeout=1)
                    except TimeoutError:
                        event = None
                    if cp.stopping.is_set():
                        yield b'event: end\ndata: {"reason": "the server is stopping"}\n\n'
                        return
                    try:
                        current = await caller.current()
                    except (Unauthorized, Forbidden) as exc:
                        yield f"event: end\ndata: {json.dumps({'reason': str(exc)})}\n\n".encode()
                        return
                    if event is None:
                        quiet += 1
                        if quiet >= 15:
                            quiet = 0
                            yield b": keep-alive\n\n"
                        continue
                    if _may_see(current, event):  # as they are now, not when it was queued
                        yield _sse(event)
            finally:
                cp.broker.unsubscribe(sub)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    def _may_see(who: Principal, event: Event) -> bool:
        if event.type == "task" and event.requester_id == who.user_id:
            return True
        if event.type == "container":
            return cp.access.allows(who, Privilege.DOCKER_VIEW, event.chain)
        return cp.access.allows(who, Privilege.VM_VIEW, event.chain)

    return api
