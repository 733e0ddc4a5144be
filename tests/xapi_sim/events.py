"""event.from and event.inject.

Source: ocaml/xapi/xapi_event.ml. Tokens are "%020d,%020d" (database generation,
message generation); "" means from the beginning; anything else that does not
parse gives EVENT_FROM_TOKEN_PARSE_FAILURE [token]. Per object changed since the
token: "add" if created since (snapshot = current record), else "mod"; "del" for
rows deleted since that existed before it (collect_events). The call blocks until
something matching changes or `timeout` passes; the token returned is the highest
generation seen among matching changes. Subscriptions: "*", "class", "class/ref".
Classes without events in the datamodel (session) are never reported.
event.inject touches the row and returns a token just before that change; the
class must be the table name exactly (HANDLE_INVALID [class; ref] otherwise).

EVENTS_LOST is a simulator model: real event.from never raises it (only the
deprecated event.next does, datamodel.ml); the simulator raises it for a token
issued before `lose_events()`, standing for the case where xapi has forgotten
history (deleted rows garbage-collected, a restarted master): clients must cope by
re-reading everything.
"""

from __future__ import annotations

import time
from typing import Any

from .engine import Call, Engine
from .errors import XapiError, handle_invalid
from .registry import api
from .schema import CLASSES
from .store import Store
from .wire import Int32, parse_int

SILENT = {"session"}


def format_token(generation: int) -> str:
    return f"{generation:020d},{0:020d}"


def parse_token(token: str) -> int:
    if token == "":
        return 0
    parts = token.split(",")
    try:
        if len(parts) != 2:
            raise XapiError("")
        parse_int(parts[1])
        return parse_int(parts[0])
    except XapiError:
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token) from None


def _subscriptions(classes: list[str]) -> list[tuple[str, str | None]]:
    subs: list[tuple[str, str | None]] = []
    for item in classes:
        if item == "*":
            subs.append(("*", None))
        else:
            cls, _, ref = item.partition("/")
            subs.append((cls.lower(), ref or None))
    return subs


def _matches(subs: list[tuple[str, str | None]], cls: str, ref: str) -> bool:
    name = cls.lower()
    return any(c == "*" or (c == name and (r is None or r == ref)) for c, r in subs)


def collect(store: Store, since: int, subs: list[tuple[str, str | None]]) -> tuple[list, int]:
    found: list[tuple[int, str, str, str]] = []
    last = since
    for ref, stamp in store.stamps.items():
        if stamp.cls in SILENT or stamp.modified <= since or not _matches(subs, stamp.cls, ref):
            continue
        last = max(last, stamp.modified)
        if stamp.created > since:
            found.append((stamp.created, "add", stamp.cls, ref))
        else:
            found.append((stamp.modified, "mod", stamp.cls, ref))
    for tomb in store.tombstones:
        if tomb.cls in SILENT or tomb.deleted <= since or not _matches(subs, tomb.cls, tomb.ref):
            continue
        last = max(last, tomb.deleted)
        if tomb.created <= since:
            found.append((tomb.deleted, "del", tomb.cls, tomb.ref))
    events = []
    for gen, op, cls, ref in sorted(found):
        event: dict[str, Any] = {
            "id": str(gen),
            "timestamp": "0.0",
            "class": cls.lower(),
            "operation": op,
            "ref": ref,
        }
        if op != "del":
            event["snapshot"] = store.render(cls, ref)
        events.append(event)
    return events, last


@api("event.from", "ss", "s", "f", async_ok=False)
def event_from(call: Call, classes: list[str], token: str, timeout: float) -> dict[str, Any]:
    engine: Engine = call.engine
    store = call.store
    since = parse_token(token)
    if token and since <= engine.lost_upto:
        raise XapiError("EVENTS_LOST")
    subs = _subscriptions(classes)
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        events, last = collect(store, since, subs)
        remaining = deadline - time.monotonic()
        if events or remaining <= 0 or engine.stopping:
            break
        seen = store.generation
        while store.generation == seen and not engine.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            store.cond.wait(min(remaining, 0.5))
        since = max(since, last)
    counts = {cls.lower(): Int32(len(store.all(cls))) for cls in CLASSES}
    return {"events": events, "valid_ref_counts": counts, "token": format_token(last)}


@api("event.inject", "s", "s", async_ok=False)
def event_inject(call: Call, cls: str, ref: str) -> str:
    store = call.store
    if cls not in CLASSES or not store.exists(cls, ref):
        raise handle_invalid(cls, ref)
    before = store.generation
    store.touch(cls, ref)
    return format_token(before)
