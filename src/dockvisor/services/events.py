"""Events for subscribers (the API's event stream): task progress and object changes.

Each subscriber gives a filter; an event reaches only the subscribers whose filter
accepts it, so a user never hears of an object they cannot see. Publishing is safe from
any thread; subscribers read from an asyncio queue.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Event", "EventBroker", "Subscription"]


@dataclass(frozen=True)
class Event:
    type: str  # "task" or "vm"
    action: str  # "created", "updated", "deleted", "progress", "succeeded", "failed"...
    object: str  # "/vms/ID", "/tasks/ID"
    chain: tuple[str, ...]  # the ACL chain of the object it is about
    requester: str | None  # the requester's name, as shown
    data: dict[str, Any]
    requester_id: int | None = None  # who they are: a name can be given to someone new
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int = 0


@dataclass
class Subscription:
    accepts: Callable[[Event], bool]
    queue: asyncio.Queue[Event]
    loop: asyncio.AbstractEventLoop


class EventBroker:
    def __init__(self, backlog: int = 1000) -> None:
        self._subscriptions: list[Subscription] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._backlog = backlog

    def subscribe(self, accepts: Callable[[Event], bool]) -> Subscription:
        sub = Subscription(accepts, asyncio.Queue(self._backlog), asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def publish(self, event: Event) -> None:
        event = Event(**{**event.__dict__, "id": next(self._ids)})
        with self._lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            try:
                if not sub.accepts(event):
                    continue
            except Exception:  # noqa: BLE001 - a broken filter must not stop the others
                continue
            sub.loop.call_soon_threadsafe(_offer, sub.queue, event)


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    if queue.full():  # a subscriber that does not read loses the oldest events
        queue.get_nowait()
    queue.put_nowait(event)
