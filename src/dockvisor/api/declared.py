"""API routes that enforce what they declare.

Every route of the API is a `DeclaredRoute`: it must carry a Requirement
(domain/requirements.py) in its OpenAPI operation (`openapi_extra=declare(...)`), or the
app does not start. Before FastAPI reads the request body or runs the handler, the route
authenticates the caller and runs `Guard.check` on the declaration it publishes, so what
OpenAPI says a route needs is exactly what is checked, and a caller who lacks it is
refused without the server reading (or spooling) their body. A refused write is
audited under the route's name (`name="vm.snapshot"`, the action its service audits;
`{param}` in it is filled from the path) and the object it aimed at.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from dockvisor.api.security import SAFE_METHODS, authenticate
from dockvisor.domain.requirements import Requirement, from_openapi
from dockvisor.errors import DockvisorError
from dockvisor.services.runtime import ControlPlane

__all__ = ["DeclaredRoute", "declare"]


def declare(requirement: Requirement) -> dict[str, Any]:
    """The `openapi_extra` of a route that requires `requirement`."""
    return requirement.openapi()


class DeclaredRoute(APIRoute):
    requirement: Requirement

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        try:  # read from what OpenAPI will publish: the two cannot differ
            self.requirement = from_openapi(kwargs.get("openapi_extra") or {})
        except ValueError as exc:
            raise TypeError(f"route {path} declares no requirement: {exc}") from None
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        requirement, dependant = self.requirement, self.dependant
        verbs = "/".join(sorted(self.methods or ()))
        action = self.name if "." in self.name else f"{verbs} {self.path_format}"

        async def guarded(request: Request) -> Response:
            if requirement.signed_in:
                who = await authenticate(request)
                # A malformed id or query is refused as such (422) before anything looks
                # it up; the body is another matter: it is not read before the check.
                _, errors = request_params_to_args(dependant.path_params, request.path_params)
                _, more = request_params_to_args(dependant.query_params, request.query_params)
                if errors or more:
                    raise RequestValidationError([*errors, *more])
                if requirement.check in ("perm", "somewhere"):
                    cp: ControlPlane = request.app.state.cp
                    try:
                        await run_in_threadpool(
                            cp.guard.check, who, requirement, request.path_params
                        )
                    except DockvisorError as exc:
                        if request.method not in SAFE_METHODS:
                            cp.audit.append(
                                who.name,
                                action.format(**request.path_params)[:64],
                                _audited_object(request.path_params, request.url.path),
                                f"refused:{exc.code}",
                                str(exc),
                            )
                        raise
            return await handler(request)

        return guarded


def _audited_object(params: dict[str, Any], path: str) -> str:
    """The object as the services name it in the audit log (`vm:ID`), else the path."""
    if "vm_id" in params:
        return f"vm:{params['vm_id']}"[:128]
    return path[:128]
