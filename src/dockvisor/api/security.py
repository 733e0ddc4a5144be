"""Who is calling: an API token (Authorization: Bearer) or a login session (cookie).

Requests that change something with a session cookie must repeat the session's CSRF
token in the X-CSRF-Token header: a page on another site can make the browser send the
cookie, not read the token. Token-authenticated requests need no CSRF token. The token
is compared in constant time (hmac.compare_digest), so the time a refusal takes says
nothing about how much of a guess was right.

The client's address (audit records, the login throttle) is the TCP peer unless the
server was told to trust a reverse proxy (`dockvisor serve --trusted-proxy ADDR`,
DOCKVISOR_TRUSTED_PROXIES): only a request from such a proxy may name another address
in X-Forwarded-For. `client_address_options` is what the server passes to uvicorn.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request, Response, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from dockvisor.errors import Forbidden, Unauthorized
from dockvisor.services import identity
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import TokenRow, utc

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "StreamCaller",
    "authenticate",
    "authenticate_token",
    "authenticate_websocket",
    "client_address_options",
    "csrf_matches",
    "reauthenticate",
    "set_session_cookie",
]

SESSION_COOKIE = "dockvisor_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def authenticate(request: Request) -> Principal:
    """The caller; Unauthorized or Forbidden (CSRF) otherwise. A refused attempt to
    change something is audited, with the address it came from. A token seen valid a
    moment ago is taken at once, without a trip to a worker thread and the database.
    Once known, the caller is kept on the request (the route's guard asks first)."""
    if (known := getattr(request.state, "principal", None)) is not None:
        return known  # type: ignore[no-any-return]
    cp: ControlPlane = request.app.state.cp
    scheme, _, secret = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and (recent := cp.recent_tokens.get(secret.strip())):
        who = recent
    else:
        who = await run_in_threadpool(_authenticate_audited, cp, request)
    request.state.principal = who
    return who


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
    if not csrf_matches(ws.query_params.get("csrf"), csrf):
        raise Forbidden("a websocket opened with a session cookie must carry ?csrf=TOKEN")
    return who


def set_session_cookie(response: Response, secret: str) -> None:
    """Give the browser its session: never readable by scripts (HttpOnly), never sent
    by a request another site starts (SameSite=Strict), for the session's lifetime."""
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        httponly=True,
        samesite="strict",
        max_age=int(identity.SESSION_LIFETIME.total_seconds()),
    )


def csrf_matches(given: str | None, expected: str) -> bool:
    """Whether the request repeats its session's CSRF token, compared in constant time
    (as bytes: any text a client sends compares, none raises)."""
    if given is None:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def client_address_options(trusted_proxies: Sequence[str]) -> dict[str, Any]:
    """uvicorn's settings for who the client is: with no trusted proxy, the TCP peer
    whatever X-Forwarded-For says (uvicorn would otherwise believe it from 127.0.0.1,
    which guests can reach); with some, X-Forwarded-* from those addresses only. Both
    `dockvisor serve` and the test servers start uvicorn with these."""
    if not trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": list(trusted_proxies)}


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
    if request.method not in SAFE_METHODS and not csrf_matches(
        request.headers.get(CSRF_HEADER), csrf
    ):
        raise Forbidden("a request with a session cookie must carry its X-CSRF-Token header")
    request.state.csrf = csrf  # the web pages repeat it in every request they make
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


async def reauthenticate(cp: ControlPlane, connection: HTTPConnection) -> Principal:
    """The caller of a long-lived request (an event stream, a followed log, a terminal),
    asked again: Unauthorized once their token, session or user is gone, and with their
    groups as they are now. Cheap when asked often: what was valid a moment ago is
    remembered for the same second the REST API trusts (RecentTokens)."""
    header = connection.headers.get("authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and (known := cp.recent_tokens.get(secret.strip())):
            return known
        return await run_in_threadpool(_by_header, cp, header)
    cookie = connection.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized("the request carries no credential")
    key = f"session:{cookie}"
    if (known := cp.recent_tokens.get(key)) is not None:
        return known

    def load() -> Principal:
        with cp.db.read() as session:
            user, _ = identity.authenticate_session(session, cookie)
            who = identity.principal_for(session, user, "session")
        cp.recent_tokens.remember(key, who)
        return who

    return await run_in_threadpool(load)


class StreamCaller:
    """Who is on the other end of a stream, re-checked at most once a second: a stream
    never outlives its credential, and follows access changes as fast as the REST API
    (`current` raises Unauthorized once the credential has ended)."""

    def __init__(self, cp: ControlPlane, connection: HTTPConnection, who: Principal) -> None:
        self._cp = cp
        self._connection = connection
        self.who = who
        self._checked = time.monotonic()

    async def current(self) -> Principal:
        if time.monotonic() - self._checked >= 1.0:
            self.who = await reauthenticate(self._cp, self._connection)
            self._checked = time.monotonic()
        return self.who

    async def now(self) -> Principal | None:
        """`current`, or None once the credential has ended (services.docker's
        CurrentCaller)."""
        try:
            return await self.current()
        except (Unauthorized, Forbidden):
            return None
