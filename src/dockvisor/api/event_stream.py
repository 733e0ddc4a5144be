"""One stream of server-sent events for one caller, shared by the API's /events and the
web pages' live updates (which name their events differently: `encode`).

The caller is asked again every second: the stream follows their access as it changes,
and ends (with an `end` event) when their token, session or account does, or when the
server begins to stop. An event reaches only a caller who may view its object as they
are now, not as they were when it was queued.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request

from dockvisor.api.security import StreamCaller
from dockvisor.domain.privileges import Privilege
from dockvisor.errors import Forbidden, Unauthorized
from dockvisor.services.events import Event
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane

__all__ = ["follow_events", "may_see"]

KEEP_ALIVE = 15  # seconds of quiet before a comment keeps proxies from closing the stream


def may_see(cp: ControlPlane, who: Principal, event: Event) -> bool:
    """Their own tasks; containers where they hold Docker.View; the rest by VM.View."""
    if event.type == "task" and event.requester_id == who.user_id:
        return True
    if event.type == "container":
        return cp.access.allows(who, Privilege.DOCKER_VIEW, event.chain)
    return cp.access.allows(who, Privilege.VM_VIEW, event.chain)


async def follow_events(
    cp: ControlPlane, request: Request, who: Principal, encode: Callable[[Event], bytes]
) -> AsyncIterator[bytes]:
    caller = StreamCaller(cp, request, who)
    sub = cp.broker.subscribe(lambda event: may_see(cp, caller.who, event))
    try:
        yield b": connected\n\n"
        quiet = 0.0
        while not await request.is_disconnected():
            try:
                event: Event | None = await asyncio.wait_for(sub.queue.get(), timeout=1)
            except TimeoutError:
                event = None
            if cp.stopping.is_set():
                yield b'event: end\ndata: {"reason": "the server is stopping"}\n\n'
                return
            try:
                current = await caller.current()
            except (Unauthorized, Forbidden) as exc:
                yield f"event: end\ndata: {json.dumps({'reason': str(exc)})}\n\n".encode()
                return
            if event is None:
                quiet += 1
                if quiet >= KEEP_ALIVE:
                    quiet = 0
                    yield b": keep-alive\n\n"
                continue
            if may_see(cp, current, event):
                yield encode(event)
    finally:
        cp.broker.unsubscribe(sub)
