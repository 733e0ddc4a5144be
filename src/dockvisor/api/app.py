"""The REST API under /api/v1: the app, its sessions, and the routers of each area
(admin_routes, vm_routes, docker_routes, activity_routes), each route calling one
service.

Every route declares what it requires (domain/requirements.py) beside it; the declaration
is published in OpenAPI (`x-dockvisor-privilege`) and enforced before the route runs
(api/declared.py).
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockvisor import __version__
from dockvisor.api import schemas as s
from dockvisor.api.activity_routes import activity_router
from dockvisor.api.admin_routes import admin_router
from dockvisor.api.catalog_routes import catalog_router
from dockvisor.api.console_routes import console_router
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.docker_routes import UPLOAD_PATHS, docker_router
from dockvisor.api.metrics_routes import metrics_router
from dockvisor.api.params import Who
from dockvisor.api.problems import ERROR_RESPONSES, install_handlers, problem
from dockvisor.api.security import SESSION_COOKIE, set_session_cookie
from dockvisor.api.vm_routes import vm_router
from dockvisor.domain.requirements import AnyUser, Public
from dockvisor.services.runtime import ControlPlane

__all__ = ["API_EXTENSIONS", "MAX_BODY", "create_app"]

API_VERSION = "1.0"
# Additions to the API, in order; a client checks for one before it relies on it.
API_EXTENSIONS = [
    "vms",
    "tasks",
    "acl",
    "resource-sets",
    "audit",
    "events",
    "docker",
    "declared-privileges",  # x-dockvisor-privilege is a structured, enforced declaration
    "host-state",  # GET /hosts says whether each host answers
    "keyed-audit",  # /audit/verify reports a condition (keyed chain, head file)
    "consoles",  # /vms/ID/console-tickets, then the websocket /vms/ID/console/serial|vnc
    "metrics",  # /vms/ID/metrics: graphs of the last hour; /docker/.../usage: containers
]
MAX_BODY = 1024 * 1024


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="dockvisor",
        version=__version__,
        description="Docker-ready VMs of an exact size, delegated to the developers who use them.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served by the web interface, from this server (web/__init__.py)
        redoc_url=None,
    )
    app.state.cp = cp
    install_handlers(app)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    api = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, route_class=DeclaredRoute)

    # -- about and sessions -------------------------------------------------------------

    @api.get("", response_model=s.ApiInfo, openapi_extra=declare(Public()))
    @api.get(
        "/", response_model=s.ApiInfo, include_in_schema=False, openapi_extra=declare(Public())
    )
    def api_info() -> s.ApiInfo:
        return s.ApiInfo(
            api_version=API_VERSION, server_version=__version__, extensions=API_EXTENSIONS
        )

    @api.post("/login", response_model=s.LoginResponse, openapi_extra=declare(Public()))
    def login(body: s.LoginRequest, request: Request, response: Response) -> s.LoginResponse:
        from dockvisor.services.login import login as open_session  # the login policy

        client = request.client.host if request.client else "?"
        opened = open_session(cp, body.name, body.password, client)
        set_session_cookie(response, opened.secret)
        return s.LoginResponse(user=opened.user, csrf_token=opened.csrf)

    @api.post(
        "/logout",
        status_code=204,
        openapi_extra=declare(AnyUser("ends the session the request carries")),
    )
    def logout(who: Who, request: Request, response: Response) -> Response:
        from dockvisor.services.login import logout as end_session

        end_session(cp, who, request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @api.get("/whoami", response_model=s.WhoAmI, openapi_extra=declare(AnyUser()))
    def whoami(who: Who) -> s.WhoAmI:
        return s.WhoAmI(id=who.user_id, name=who.name, groups=sorted(who.group_ids), via=who.via)

    api.include_router(admin_router(cp))
    api.include_router(catalog_router(cp))
    api.include_router(vm_router(cp))
    api.include_router(activity_router(cp))
    api.include_router(docker_router(cp))
    api.include_router(console_router(cp))
    api.include_router(metrics_router(cp))
    app.include_router(api)
    from dockvisor.web import install_web  # the pages, on the same origin

    install_web(app, cp)
    return app


class _BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not they say their length.

    A declared Content-Length over the limit is refused before anything is read. A
    body without one (chunked) is counted as the app reads it, never read ahead: the
    route's declared requirement is checked before any of it is read
    (api/declared.py). Past the limit the app's reading fails, its answer is dropped,
    and the client gets the 413."""

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
        size, too_big, started = 0, False, False

        async def counted() -> Message:
            nonlocal size, too_big
            if too_big:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if too_big and not started:
                return  # the app's answer to a body cut short: the 413 goes instead
            started = True
            await send(message)

        with contextlib.suppress(ClientDisconnect):
            await self.app(scope, counted, answer)
        if too_big and not started:
            await _send_413(scope, receive, send, self.limit)


async def _send_413(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = problem(413, f"the request body is larger than {limit} bytes", "body-too-large")
    await response(scope, receive, send)
