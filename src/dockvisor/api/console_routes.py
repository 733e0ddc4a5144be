"""VM consoles: a ticket, then a websocket on the same origin (services/consoles.py).

    POST /api/v1/vms/{vm_id}/console-tickets  {"kind": "serial" | "vnc"}
         -> 201 {"ticket", "expires", "url"}   (VM.Console; the VM must be running)
    WS   /api/v1/vms/{vm_id}/console/{kind}?ticket=T   (+ &csrf=C with a session cookie)

The websocket authenticates its caller as every websocket of the API does (a Bearer
token, or the session cookie with its CSRF token in `csrf`) and also needs the ticket,
issued to that user for that VM and kind less than 30 s ago and never presented before.
Binary frames carry the console's bytes both ways, untouched: the serial port's (for a
terminal such as xterm.js), or RFB (for a VNC client such as noVNC; the subprotocol
"binary" is accepted when offered). A text frame from the client goes to the console as
its UTF-8 bytes. A refusal closes the websocket with 4000 + the HTTP status of the
problem (4401, 4403, 4404, 4409...) and the reason; the end of an open console closes it
with 1000 (the console or the client ended it), 4401 (the credential ended), 4403 (the
privilege was lost) or 1001 (the server is stopping).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.params import Key, P, Who
from dockvisor.api.problems import status_of
from dockvisor.api.security import StreamCaller, authenticate_websocket
from dockvisor.domain.model import ConsoleKind
from dockvisor.domain.requirements import Perm
from dockvisor.errors import DockvisorError
from dockvisor.services.consoles import ConsoleSession
from dockvisor.services.runtime import ControlPlane

__all__ = ["ConsoleTicketOut", "ConsoleTicketRequest", "console_router"]

# How an open console's end closes its websocket (the audit result -> code).
_END_CODES = {"ended:credential": 4401, "ended:privilege": 4403, "ended:server-stop": 1001}


class ConsoleTicketRequest(s.Strict):
    kind: Literal["serial", "vnc"]


class ConsoleTicketOut(BaseModel):
    ticket: str
    expires: datetime
    url: str  # the websocket's path, ticket included (add &csrf= with a session cookie)


def console_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute)
    consoles = cp.consoles

    @api.post(
        "/vms/{vm_id}/console-tickets",
        name="vm.console.ticket",
        status_code=201,
        response_model=ConsoleTicketOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_CONSOLE, note="the VM must be running")),
    )
    def issue_console_ticket(
        who: Who, vm_id: Key, body: ConsoleTicketRequest, response: Response
    ) -> ConsoleTicketOut:
        """A ticket for one console websocket: good for 30 s, once, for this user, this
        VM and this kind of console."""
        issued = consoles.issue_ticket(who, vm_id, ConsoleKind(body.kind))
        url = f"/api/v1/vms/{issued.vm_id}/console/{issued.kind}?ticket={issued.secret}"
        response.headers["Cache-Control"] = "no-store"
        return ConsoleTicketOut(ticket=issued.secret, expires=issued.expires, url=url)

    @api.websocket("/vms/{vm_id}/console/{kind}")
    async def console(
        ws: WebSocket,
        vm_id: Annotated[str, PathParam(max_length=64)],
        kind: ConsoleKind,
        ticket: Annotated[str | None, Query(max_length=128)] = None,
    ) -> None:
        """The console's bytes both ways (see the module's description)."""
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="binary" if "binary" in offered else None)
        try:
            who = await run_in_threadpool(authenticate_websocket, cp, ws)
        except DockvisorError as exc:
            client = ws.client.host if ws.client else "?"
            await run_in_threadpool(consoles.refused, "anonymous", vm_id, exc, client)
            await _close(ws, 4000 + status_of(exc), str(exc))
            return
        try:
            opened = consoles.session(who, vm_id, kind, ticket, StreamCaller(cp, ws, who).now)
            session = await opened.__aenter__()
        except DockvisorError as exc:
            await _close(ws, 4000 + status_of(exc), str(exc))
            return
        try:
            await _bridge(ws, session)
        finally:
            await opened.__aexit__(None, None, None)
        result, message = session.why or ("closed", "")
        await _close(ws, _END_CODES.get(result, 1000), message)

    return api


async def _bridge(ws: WebSocket, session: ConsoleSession) -> None:
    """Move bytes between the websocket and the console until either side ends or the
    console must end (`session.ended`); nothing waits in a thread meanwhile."""

    async def console_to_client() -> None:
        while data := await session.recv():
            await ws.send_bytes(data)

    async def client_to_console() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes"):
                await session.send(message["bytes"])
            elif message.get("text"):
                await session.send(message["text"].encode())

    tasks = {
        asyncio.create_task(console_to_client()),
        asyncio.create_task(client_to_console()),
        asyncio.create_task(session.ended.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with `code` and as much of `reason` as a close frame holds (123 bytes)."""
    text = reason.encode()[:123].decode(errors="ignore")
    with suppress(RuntimeError, WebSocketDisconnect, OSError):
        await ws.close(code=code, reason=text)
