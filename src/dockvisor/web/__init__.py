"""The web interface, served by `dockvisor serve` on the same origin as /api/v1.

Server-rendered pages (Jinja2) enhanced with htmx; live updates come from one event
stream per page (/ui/events, the API's events renamed per object). Pages and actions are
declared and guarded like API routes (web/routing.py) and call the same services with
the same principal; nothing here talks to the API over HTTP.

Front-end libraries come from the npm registry at install time (package.json at the
repository's root, `npm ci` by scripts/setup-host.sh) into node_modules/, served under
/static/vendor/; nothing of them is committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockvisor.api.declared import DeclaredRoute
from dockvisor.services.runtime import ControlPlane
from dockvisor.web.routing import Requirements

__all__ = ["VENDOR_PACKAGES", "install_web", "vendor_dir"]

STATIC = Path(__file__).parent / "static"
# What the pages load from npm packages (package.json pins their versions).
VENDOR_PACKAGES = (
    "htmx.org", "htmx-ext-sse", "@novnc/novnc", "@xterm/xterm", "@xterm/addon-fit",
    "uplot", "swagger-ui-dist", "axe-core",
)  # fmt: skip

# Pages may run only this site's scripts (no inline script, no eval): an injected
# <script> or on* attribute does nothing. Styles may be inline (xterm, uPlot set them).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)


def vendor_dir() -> Path:
    """Where `npm ci` put the front-end libraries (DOCKVISOR_WEB_VENDOR overrides)."""
    if configured := os.environ.get("DOCKVISOR_WEB_VENDOR"):
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "node_modules"


def install_web(app: FastAPI, cp: ControlPlane) -> None:
    """Add the pages, their static files and the API's offline documentation page."""
    from dockvisor.web.access_pages import access_page_router
    from dockvisor.web.docker_pages import docker_page_router
    from dockvisor.web.pages import page_router
    from dockvisor.web.vm_pages import vm_page_router

    requirements = Requirements({r.name: r.requirement for r in _declared(app.routes)})
    vendor = vendor_dir()
    for package in VENDOR_PACKAGES:
        if (vendor / package).is_dir():
            app.mount(
                f"/static/vendor/{package}",
                StaticFiles(directory=vendor / package),
                name=f"vendor:{package}",
            )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.include_router(page_router(cp, requirements))
    app.include_router(vm_page_router(cp, requirements))
    app.include_router(access_page_router(cp, requirements))
    app.include_router(docker_page_router(cp, requirements))
    app.add_middleware(_SecurityHeaders)


def _declared(routes: Iterable[BaseRoute]) -> Iterator[DeclaredRoute]:
    """The API's declared routes, also those of included routers (FastAPI keeps an
    included router whole, as `original_router`)."""
    for route in routes:
        if isinstance(route, DeclaredRoute):
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            yield from _declared(inner.routes)


class _SecurityHeaders:
    """Every answer: not framed by other sites, no MIME sniffing; pages: the CSP above
    (Swagger UI's page starts itself with an inline script: not that one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"] == "/api/v1/docs"

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"same-origin"))
                if not docs:
                    headers.append((b"x-frame-options", b"DENY"))
                    headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, headed)
