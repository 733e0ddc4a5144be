"""The pool's VMs as XAPI's event stream says they are.

`event.from(classes, token, timeout)` (ocaml/idl/datamodel.ml, class event; the SDK
sends it as `event_from`) answers every object of the classes for an empty token, then
only what changed since the token it returned last, waiting up to `timeout` seconds for
something to change; changes made by any client are included. When the pool can no
longer say what changed since a token, it answers EVENTS_LOST: the cache is then built
again from an empty token, and VMs missing from the new picture count as deleted.

The follower runs on a session of its own (a blocking call would hold the driver's), and
calls `on_vm(vm_uuid, what)` for each VM whose record, metrics, guest metrics or disks
(a VDI resized) changed, so dockvisor's inventory follows the pool within a second. The
driver writes what it changed itself into the cache at once (read your own writes), and
marks VMs it destroyed so that an older event still in flight does not bring them back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dockvisor.drivers.xapi.connection import PoolConnection
from dockvisor.errors import DockvisorError

__all__ = ["PoolEvents"]

log = logging.getLogger(__name__)

CLASSES = ["vm", "vm_metrics", "vm_guest_metrics", "vbd", "vdi"]
WAIT = 5.0  # seconds one event.from call waits for a change
NULL = "OpaqueRef:NULL"

Record = dict[str, Any]


class PoolEvents:
    def __init__(self, conn: PoolConnection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Record]] = {cls: {} for cls in CLASSES}
        self._destroyed: set[str] = set()
        self._listeners: list[Callable[[str, str], None]] = []
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refetches = 0  # full fetches after the first (EVENTS_LOST), for tests
        # Called (on the follower's thread) each time the cache is in step again after
        # a (re)connection: the pool answers again.
        self.on_sync: list[Callable[[], None]] = []

    # -- following -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="xapi-events", daemon=True)
            self._thread.start()

    def listen(self, on_vm: Callable[[str, str], None]) -> None:
        self._listeners.append(on_vm)
        self.start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        conn: PoolConnection | None = None
        token = ""
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._conn.fork(timeout=WAIT + 30)
                reply = conn.call("following the pool's events", "event_from", CLASSES, token, WAIT)
                if self._stop.is_set():
                    break
                full = not token
                self._apply(reply.get("events", []), full=full)
                token = str(reply["token"])
                self.synced.set()
                if full:
                    for hook in self.on_sync:
                        hook()
            except DockvisorError as exc:
                if getattr(exc, "xapi_code", "") == "EVENTS_LOST":
                    log.info("xapi.events-lost", extra={"pool": self._conn.uri})
                    token = ""
                    self.refetches += 1
                    continue
                self.synced.clear()
                if not self._stop.is_set():
                    log.warning("xapi.events-failed", extra={"pool": self._conn.uri,
                                                             "error": str(exc)})  # fmt: skip
                if conn is not None:
                    conn.close()
                conn, token = None, ""
                self._stop.wait(1.0)
        if conn is not None:
            conn.close()

    def _apply(self, events: list[Record], *, full: bool) -> None:
        changed: dict[str, str] = {}  # vm uuid -> what
        with self._lock:
            before = dict(self._records["vm"]) if full else {}
            if full:  # the whole picture: what is not in it is gone
                self._records = {cls: {} for cls in CLASSES}
                self._destroyed.clear()
            for event in events:
                cls, ref, op = str(event["class"]).lower(), str(event["ref"]), event["operation"]
                if cls not in self._records:
                    continue
                if op == "del":
                    gone = self._records[cls].pop(ref, None)
                    self._destroyed.discard(ref)
                    if cls == "vm" and gone is not None:
                        changed[str(gone["uuid"])] = "deleted"
                    continue
                if ref in self._destroyed:
                    continue  # an older event of a VM the driver has destroyed since
                record = event.get("snapshot") or {}
                self._records[cls][ref] = record
                vm = self._vm_of(cls, ref, record)
                if vm is not None:
                    changed.setdefault(str(vm["uuid"]), "created" if op == "add" else "changed")
            for ref, record in before.items():
                if ref not in self._records["vm"]:
                    changed[str(record["uuid"])] = "deleted"
        for vm_uuid, what in changed.items():
            for listener in self._listeners:
                listener(vm_uuid, what)

    def _vm_of(self, cls: str, ref: str, record: Record) -> Record | None:
        """The VM a changed object describes (None: not one dockvisor follows)."""
        if cls == "vm":
            vm: Record | None = record
        elif cls in ("vm_metrics", "vm_guest_metrics"):
            field = "metrics" if cls == "vm_metrics" else "guest_metrics"
            vm = next((v for v in self._records["vm"].values() if v.get(field) == ref), None)
        elif cls == "vdi":  # a disk of a VM (through its VBD) changed: its size
            owners = (b.get("VM") for b in self._records["vbd"].values() if b.get("VDI") == ref)
            vm = next((v for o in owners if (v := self._records["vm"].get(str(o)))), None)
        else:
            return None
        if vm is None or vm.get("is_a_template") or vm.get("is_control_domain"):
            return None
        return vm

    # -- reading ---------------------------------------------------------------------

    def vms(self) -> dict[str, Record] | None:
        """Every VM record by reference; None while the cache is not in step."""
        if not self.synced.is_set():
            return None
        with self._lock:
            return dict(self._records["vm"])

    def record(self, cls: str, ref: str) -> Record | None:
        with self._lock:
            return self._records[cls].get(ref)

    # -- the driver's own writes -----------------------------------------------------

    def remember(self, cls: str, ref: str, record: Record) -> None:
        with self._lock:
            self._records[cls][ref] = record
            self._destroyed.discard(ref)

    def forget(self, cls: str, ref: str) -> None:
        with self._lock:
            self._records[cls].pop(ref, None)
            self._destroyed.add(ref)
