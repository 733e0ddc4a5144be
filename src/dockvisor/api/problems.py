"""Errors as application/problem+json: one table from dockvisor's errors to HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dockvisor import errors
from dockvisor.api.schemas import Problem

__all__ = ["ERROR_RESPONSES", "STATUS", "install_handlers", "problem"]

MEDIA_TYPE = "application/problem+json"

STATUS: dict[type[errors.DockvisorError], int] = {
    errors.InvalidInput: 400,
    errors.Unsupported: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.BadPowerState: 409,
    errors.Busy: 409,
    errors.Cancelled: 409,
    errors.OutOfCapacity: 409,
    errors.Throttled: 429,
    errors.ImageBuildError: 500,
    errors.HypervisorError: 502,
    errors.CatalogError: 502,
    errors.HypervisorUnreachable: 503,
    errors.EngineUnavailable: 503,
    errors.GuestTimeout: 504,
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Upstream error",
    503: "Unavailable",
    504: "Guest timeout",
}


def status_of(exc: errors.DockvisorError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(
    status: int,
    detail: str,
    code: str,
    *,
    errors_: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        title=_TITLES.get(status, "Error"), status=status, detail=detail, code=code, errors=errors_
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _described(status: int, what: str) -> dict[str, Any]:
    return {
        "description": what,
        "model": Problem,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described(400, "The request cannot be used"),
    401: _described(401, "No valid credentials"),
    403: _described(403, "Credentials lack the privilege"),
    404: _described(404, "No such object (or one you cannot see)"),
    409: _described(409, "Conflicts with the object's state, a name, a lock or a quota"),
    413: _described(413, "Body too large"),
    422: _described(422, "Malformed JSON or wrong types"),
    429: _described(429, "Too many failed logins"),
    502: _described(502, "The hypervisor or the VM's Docker engine failed"),
    503: _described(503, "The hypervisor cannot be reached, or the VM (or its engine) is off"),
    504: _described(504, "The guest did not answer in time"),
}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.DockvisorError)
    async def _dockvisor(_request: Request, exc: errors.DockvisorError) -> JSONResponse:
        headers = None
        if isinstance(exc, errors.Throttled):
            headers = {"Retry-After": str(max(1, int(exc.retry_after)))}
        if isinstance(exc, errors.Unauthorized):
            headers = {"WWW-Authenticate": 'Bearer realm="dockvisor"'}
        return problem(status_of(exc), str(exc), exc.code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            details.append({"field": where, "message": err.get("msg", "invalid")})
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return problem(
            422, summary or "the request is not valid", "invalid-request", errors_=details
        )

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), f"http-{exc.status_code}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return problem(500, f"internal error: {type(exc).__name__}", "internal-error")
