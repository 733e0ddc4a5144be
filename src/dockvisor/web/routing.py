"""How a web page or action is declared, guarded, rendered and refused.

A web route is a `DeclaredRoute` like every API route: its requirement is checked
before its handler runs or its form is read. An action that does what an API route does
declares *that route's* requirement (`same_as("vm.snapshot")`), so the page, the API
and the check cannot disagree; the buttons a page shows are those whose declarations
the user meets on that object (`Actions`).

A refusal becomes HTML: a page the user may not see is an error page; an action refused
is a message in the page's alert region, naming the privilege missing and the object;
an ended session leads to sign-in and back (`?next=`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from dockvisor.api.declared import DeclaredRoute
from dockvisor.api.problems import status_of
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.requirements import Requirement
from dockvisor.domain.sizes import format_size
from dockvisor.errors import DockvisorError, InvalidInput, Unauthorized
from dockvisor.services.identity import Principal

__all__ = ["Actions", "Requirements", "WebRoute", "htmx", "render", "safe_next"]

TEMPLATES = Path(__file__).parent / "templates"


class Requirements:
    """The API's declarations by route name: what a web action that does the same
    thing must require."""

    def __init__(self, declared: Mapping[str, Requirement]) -> None:
        self._declared = dict(declared)

    def same_as(self, name: str) -> dict[str, Any]:
        """The `openapi_extra` of a web route that does what API route `name` does."""
        return self[name].openapi()

    def __getitem__(self, name: str) -> Requirement:
        try:
            return self._declared[name]
        except KeyError:
            raise KeyError(f"no API route is named {name!r}") from None


class Actions:
    """Which of the API's actions a user may take on one object, given what they hold
    there: `actions("vm.snapshot")` is True when the route's declaration is met."""

    def __init__(self, requirements: Requirements, held: frozenset[Privilege]) -> None:
        self._requirements = requirements
        self.held = held

    def __call__(self, name: str) -> bool:
        return self._requirements[name].met_by(self.held)

    def holds(self, privilege: str) -> bool:
        return Privilege(privilege) in self.held


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _size(value: int | None) -> str:
    return "—" if value is None else format_size(int(value))


_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["size"] = _size
_env.filters["ago"] = _ago


def render(
    request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:  # fmt: skip
    """The template rendered with the request's user and CSRF token in its context."""
    who: Principal | None = getattr(request.state, "principal", None)
    page = _env.get_template(template).render(
        request=request,
        who=who,
        csrf=getattr(request.state, "csrf", ""),
        **context,
    )
    return HTMLResponse(page, status_code=status, headers=headers)


def htmx(request: Request) -> bool:
    """Whether the request was made by htmx from a page (it wants a fragment)."""
    return request.headers.get("hx-request") == "true"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _login_redirect(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if htmx(request):  # back to the page the user was on, not the fragment
        current = urlsplit(request.headers.get("hx-current-url", "/"))
        here = current.path + (f"?{current.query}" if current.query else "")
    target = f"/login?next={quote(safe_next(here))}"
    if htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def refusal(request: Request, exc: DockvisorError) -> Response:
    """What the page shows for an error: the message, where the user will see it."""
    if isinstance(exc, Unauthorized):
        return _login_redirect(request)
    status = status_of(exc)
    if htmx(request):
        return render(
            request,
            "alert.html",
            status=status,
            headers={"HX-Retarget": "#alerts", "HX-Reswap": "innerHTML"},
            message=str(exc),
            code=exc.code,
        )
    return render(request, "error.html", status=status, message=str(exc), code=exc.code)


class WebRoute(DeclaredRoute):
    """A declared route whose refusals are HTML (see the module's docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except DockvisorError as exc:
                return refusal(request, exc)
            except RequestValidationError as exc:
                fields = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors())
                return refusal(request, InvalidInput(f"this request is malformed ({fields})"))

        return page
