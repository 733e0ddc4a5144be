"""The web pages everyone has: sign-in, the overview, tasks, the audit log, my tokens,
and the live-update stream the pages listen to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from dockvisor.api.event_stream import follow_events
from dockvisor.api.params import Key, NumericId, P, Who
from dockvisor.api.security import SESSION_COOKIE, set_session_cookie
from dockvisor.domain.requirements import AnyUser, Perm, Public
from dockvisor.errors import DockvisorError, InvalidInput
from dockvisor.services.admin import Administration, token_expiry
from dockvisor.services.capacity import host_capacities
from dockvisor.services.events import Event
from dockvisor.services.runtime import ControlPlane
from dockvisor.web.routing import Requirements, WebRoute, render, safe_next

__all__ = ["page_router"]


def _live(event: Event) -> bytes:
    """An event for the pages: named after what changed (`vm-ID`, `task-ID`,
    `containers-VMID`) so that each part of a page listens to its own object only
    (htmx: hx-trigger="sse:vm-ID"); created and deleted objects also name their list."""
    names: list[str] = []
    if event.type == "vm":
        vm_id = event.object.rsplit("/", 1)[-1]
        names.append(f"vm-{vm_id}")
        if event.action in ("created", "deleted"):
            names.append("vms")
    elif event.type == "task":
        names += [f"task-{event.object.rsplit('/', 1)[-1]}", "tasks"]
    elif event.type == "container":
        names.append(f"containers-{event.data.get('vm', '')}")
    return "".join(f"event: {name}\ndata: {event.action}\n\n" for name in names).encode()


VMS_PER_PAGE = 100  # an overview of thousands of VMs is searched and paged, not scrolled


@dataclass(frozen=True)
class VmListing:
    vms: list[dict[str, Any]]
    total: int  # that match the filter
    page: int
    pages: int
    q: str

    @property
    def first(self) -> int:
        return (self.page - 1) * VMS_PER_PAGE + 1

    @property
    def last(self) -> int:
        return min(self.page * VMS_PER_PAGE, self.total)


def page_router(cp: ControlPlane, requirements: Requirements) -> APIRouter:
    web = APIRouter(route_class=WebRoute, include_in_schema=False)
    admin = Administration(cp)

    # -- signing in and out ---------------------------------------------------------------

    @web.get("/login", openapi_extra=Public().openapi())
    def login_page(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002
        return render(request, "login.html", next=safe_next(next))

    @web.post("/login", openapi_extra=Public().openapi())
    def login(
        request: Request,
        name: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        next: Annotated[str, Form(max_length=2048)] = "/",  # noqa: A002
    ) -> Response:
        from dockvisor.services.login import login as open_session

        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            # A page on another site may not sign a browser in to this one.
            return render(request, "login.html", status=403, next="/",
                          error="sign in from this site's own page")  # fmt: skip
        client = request.client.host if request.client else "?"
        try:
            opened = open_session(cp, name, password, client)
        except DockvisorError as exc:
            return render(request, "login.html", status=401 if exc.code != "throttled" else 429,
                          next=safe_next(next), name=name, error=str(exc))  # fmt: skip
        response = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(response, opened.secret)
        return response

    @web.post("/logout", openapi_extra=AnyUser("ends the session the request carries").openapi())
    def logout(who: Who, request: Request) -> Response:
        from dockvisor.services.login import logout as end_session

        end_session(cp, who, request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204, headers={"HX-Redirect": "/login"})
        response.delete_cookie(SESSION_COOKIE)
        return response

    @web.get("/api/v1/docs", openapi_extra=Public().openapi())
    def api_docs() -> HTMLResponse:
        """Swagger UI from this server (the npm package), not from a CDN: it works
        offline and tells no one who reads it."""
        return get_swagger_ui_html(
            openapi_url="/api/v1/openapi.json",
            title="dockvisor API",
            swagger_js_url="/static/vendor/swagger-ui-dist/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui-dist/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    # -- overview ------------------------------------------------------------------------

    @web.get("/", openapi_extra=AnyUser("what they may view").openapi())
    def overview(
        who: Who,
        request: Request,
        q: Annotated[str, Query(max_length=64)] = "",
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    ) -> HTMLResponse:
        return render(
            request,
            "overview.html",
            hosts=host_capacities(cp, admin, who),
            listing=_listing(who, q, page),
            sets=admin.list_resource_sets(who),
            may_create=cp.guard.holds_somewhere(who, frozenset({P.VM_ALLOCATE}))
            or bool(cp.access.resource_sets_of(who)),
        )

    @web.get("/ui/vms/rows", openapi_extra=AnyUser("the VMs they hold VM.View on").openapi())
    def vm_rows(
        who: Who,
        request: Request,
        q: Annotated[str, Query(max_length=64)] = "",
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    ) -> HTMLResponse:
        return render(request, "vm_rows.html", listing=_listing(who, q, page))

    def _listing(who: Any, q: str, page: int) -> VmListing:
        """One page of the VMs `who` may view whose name contains `q`."""
        wanted = q.strip().lower()
        vms = [v for v in cp.ops.list_vms(who) if wanted in v["name"].lower()]
        pages = max(1, -(-len(vms) // VMS_PER_PAGE))
        page = min(page, pages)
        first = (page - 1) * VMS_PER_PAGE
        return VmListing(vms[first : first + VMS_PER_PAGE], len(vms), page, pages, q.strip())

    @web.get("/ui/vms/{vm_id}/row", openapi_extra=Perm("/vms/{vm_id}", P.VM_VIEW).openapi())
    def vm_row(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        from dockvisor.services.inventory import vm_data

        return render(request, "vm_row.html", vm=vm_data(cp.ops.vm_row(who, vm_id)))

    # -- tasks ---------------------------------------------------------------------------

    @web.get(
        "/tasks", openapi_extra=AnyUser("their own tasks and those on VMs they view").openapi()
    )
    def tasks_page(who: Who, request: Request) -> HTMLResponse:
        return render(request, "tasks.html", tasks=cp.ops.visible_tasks(who, 100))

    @web.get("/ui/tasks/rows", openapi_extra=AnyUser().openapi())
    def task_rows(who: Who, request: Request) -> HTMLResponse:
        return render(request, "task_rows.html", tasks=cp.ops.visible_tasks(who, 100))

    @web.get("/ui/tasks/{task_id}", openapi_extra=AnyUser("a task they may view").openapi())
    def task_progress(who: Who, request: Request, task_id: Key) -> HTMLResponse:
        return render(request, "task_progress.html", task=cp.ops.visible_task(who, task_id))

    # -- audit ---------------------------------------------------------------------------

    @web.get("/audit", openapi_extra=requirements.same_as("audit.list"))
    def audit_page(
        who: Who,
        request: Request,
        actor: Annotated[str, Query(max_length=64)] = "",
        action: Annotated[str, Query(max_length=64)] = "",
        result: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        filters = {"actor": actor, "action": action, "result": result}
        entries = admin.audit_entries(who, 300, containing=filters)
        report = admin.verify_audit(who)
        return render(request, "audit.html", entries=entries, report=report, filters=filters)

    # -- my tokens -----------------------------------------------------------------------

    @web.get("/tokens", openapi_extra=AnyUser("their own tokens").openapi())
    def tokens_page(who: Who, request: Request) -> HTMLResponse:
        return render(request, "tokens.html", tokens=admin.list_tokens(who))

    @web.post("/ui/tokens", openapi_extra=requirements.same_as("token.create"))
    def create_token(
        who: Who,
        request: Request,
        name: Annotated[str, Form(max_length=64)] = "",
        days: Annotated[str, Form(max_length=16)] = "30",
    ) -> HTMLResponse:
        errors: dict[str, str] = {}
        expiry: float | None = None
        if not name.strip():
            errors["name"] = "give the token a name (what it is for)"
        if days.strip():
            try:
                expiry = float(days)
                if not 0 < expiry <= 3650:
                    raise ValueError
            except ValueError:
                errors["days"] = "a number of days between 1 and 3650, or empty for no expiry"
        if errors:
            return render(request, "token_form.html", status=422, errors=errors,
                          values={"name": name, "days": days})  # fmt: skip
        try:
            info, secret = admin.create_token(who, name.strip(), token_expiry(expiry))
        except InvalidInput as exc:
            return render(request, "token_form.html", status=422, errors={"name": str(exc)},
                          values={"name": name, "days": days})  # fmt: skip
        return render(request, "token_form.html", created=info, secret=secret, values={},
                      headers={"HX-Trigger": "tokens-changed"})  # fmt: skip

    @web.get("/ui/tokens/rows", openapi_extra=AnyUser("their own tokens").openapi())
    def token_rows(who: Who, request: Request) -> HTMLResponse:
        return render(request, "token_rows.html", tokens=admin.list_tokens(who))

    @web.delete("/ui/tokens/{token_id}", openapi_extra=requirements.same_as("token.revoke"))
    def revoke_token(who: Who, request: Request, token_id: NumericId) -> HTMLResponse:
        admin.revoke_token(who, token_id)
        return render(request, "token_rows.html", tokens=admin.list_tokens(who))

    # -- live updates --------------------------------------------------------------------

    @web.get(
        "/ui/events",
        openapi_extra=AnyUser("events about what they can view, while signed in").openapi(),
    )
    async def events(request: Request, who: Who) -> StreamingResponse:
        return StreamingResponse(
            follow_events(cp, request, who, _live),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    @web.get("/ui/session", openapi_extra=AnyUser().openapi())
    async def session_check(who: Who) -> Response:
        """Asked when the event stream ends: a signed-out page goes to sign-in (the
        refusal of this request does that), a signed-in one stays."""
        return Response(status_code=204)

    return web
