"""REST routes for what happens: tasks (and waiting for them), the audit log and the
event stream. Waits and streams hold no worker thread, follow the caller's access
as it changes, and end when their credential or the server does.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.event_stream import follow_events
from dockvisor.api.params import Key, P, Who
from dockvisor.domain.requirements import AnyUser, Perm
from dockvisor.services.admin import Administration
from dockvisor.services.events import Event
from dockvisor.services.runtime import ControlPlane
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

    @api.get(
        "/tasks",
        response_model=list[s.TaskOut],
        openapi_extra=declare(AnyUser("their own tasks, and those on VMs they can view")),
    )
    def list_tasks(who: Who, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[s.TaskOut]:
        return [s.TaskOut(**t.__dict__) for t in ops.visible_tasks(who, limit)]

    @api.get(
        "/tasks/{task_id}",
        response_model=s.TaskOut,
        openapi_extra=declare(AnyUser("their own task, or one on a VM they can view (else 404)")),
    )
    def get_task(who: Who, task_id: Key) -> s.TaskOut:
        return s.TaskOut(**ops.visible_task(who, task_id).__dict__)

    @api.post(
        "/tasks/{task_id}/cancel",
        name="task.cancel",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(
            AnyUser("their own task; any task they can see with Sys.Modify on / (else 403)")
        ),
    )
    def cancel_task(who: Who, task_id: Key) -> s.TaskOut:
        """Ask a running task to stop. It stops at its next progress report and undoes
        what it made, then ends failed with the code `cancelled` (wait for it)."""
        return s.TaskOut(**ops.cancel_task(who, task_id).__dict__)

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
        known = await run_in_threadpool(ops.visible_task, who, task_id)
        task = await cp.tasks.wait_async(task_id, timeout, stop=cp.stopping, known=known)
        return s.TaskOut(**task.__dict__)

    @api.get(
        "/audit",
        name="audit.list",
        response_model=list[s.AuditOut],
        openapi_extra=declare(Perm("/", P.SYS_AUDIT)),
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
        return StreamingResponse(
            follow_events(cp, request, who, _sse),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    return api
