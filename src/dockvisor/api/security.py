"""Who is calling: an API token (Authorization: Bearer) or a login session (cookie).

Requests that change something with a session cookie must repeat the session's CSRF
token in the X-CSRF-Token header: a page on another site can make the browser send the
cookie, not read the token. Token-authenticated requests need no CSRF token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import Request, WebSocket
from starlette.concurrency import run_in_threadpool

from dockvisor.errors import Forbidden, Unauthorized
from dockvisor.services import identity
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import TokenRow, utc

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "authenticate",
    "authenticate_token",
    "authenticate_websocket",
]

SESSION_COOKIE = "dockvisor_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def authenticate(request: Request) -> Principal:
    """The caller; Unauthorized or Forbidden (CSRF) otherwise. A refused attempt to
    change something is audited, with the address it came from. A token seen valid a
    moment ago is taken at once, without a trip to a worker thread and the database."""
    cp: ControlPlane = request.app.state.cp
    scheme, _, secret = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and (known := cp.recent_tokens.get(secret.strip())):
        return known
    return await run_in_threadpool(_authenticate_audited, cp, request)


def _authenticate_audited(cp: ControlPlane, request: Request) -> Principal:
    try:
        return _authenticate(cp, request)
    except (Unauthorized, Forbidden) as exc:
        if request.method not in SAFE_METHODS:
            client = request.client.host if request.client else "?"
            cp.audit.append(
                "anonymous",
                f"{request.method} {request.url.path}"[:64],
                f"from:{client}",
                f"refused:{exc.code}",
                str(exc),
            )
        raise


def authenticate_websocket(cp: ControlPlane, ws: WebSocket) -> Principal:
    """The caller of a websocket: a token as for any request, or a session cookie with
    its CSRF token in the `csrf` query parameter (browsers send cookies on cross-site
    websockets too, and no header can be added to them)."""
    header = ws.headers.get("authorization")
    if header:
        return _by_header(cp, header)
    cookie = ws.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized("send an API token (Authorization: Bearer) or log in first")
    with cp.db.read() as session:
        user, csrf = identity.authenticate_session(session, cookie)
        who = identity.principal_for(session, user, "session")
    if ws.query_params.get("csrf") != csrf:
        raise Forbidden("a websocket opened with a session cookie must carry ?csrf=TOKEN")
    return who


def _by_header(cp: ControlPlane, header: str) -> Principal:
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("the Authorization header must be: Bearer TOKEN")
    return _by_token(cp, secret.strip())


def _authenticate(cp: ControlPlane, request: Request) -> Principal:
    header = request.headers.get("authorization")
    if header:
        return _by_header(cp, header)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized(
            "log in first (POST /api/v1/login) or send an API token (Authorization: Bearer)"
        )
    with cp.db.read() as session:
        user, csrf = identity.authenticate_session(session, cookie)
        who = identity.principal_for(session, user, "session")
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != csrf:
        raise Forbidden("a request with a session cookie must carry its X-CSRF-Token header")
    return who


def authenticate_token(cp: ControlPlane, authorization: str | None) -> Principal:
    """The caller of a request that carries only an Authorization header (the engine
    gateway: the docker CLI sends the token that way)."""
    if not authorization:
        raise Unauthorized(
            "no dockvisor token: set it in the docker CLI's config (dockvisor vm endpoint "
            "NAME --server URL prints how)"
        )
    return _by_header(cp, authorization)


def _by_token(cp: ControlPlane, secret: str) -> Principal:
    if (known := cp.recent_tokens.get(secret)) is not None:
        return known
    with cp.db.read() as session:
        user, row = identity.authenticate_token(session, secret)
        who = identity.principal_for(session, user, "token", row.id)
        expires = row.expires
        stale = row.last_used is None or utc(row.last_used) < datetime.now(UTC) - timedelta(
            minutes=1
        )
    if stale:  # note the use at most once a minute: no write on every request
        with cp.db.session() as session:
            fresh = session.get(TokenRow, row.id)
            if fresh is not None:
                fresh.last_used = datetime.now(UTC)
    cp.recent_tokens.remember(secret, who, expires)
    return who
